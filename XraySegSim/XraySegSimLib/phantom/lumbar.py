"""A labelled lumbar-spine phantom (T11-L5, S1, sacrum, hip bones, femoral heads and the lower ribs in an
abdomen), from OpenSim's meshes.

Source: the ``pose2sim==0.3.7`` wheel (BSD-3-Clause): ``lumbar1..5.vtp``, ``sacrum.vtp``, ``r_pelvis.vtp``,
``l_pelvis.vtp``, ``thoracic11_s.vtp``, ``thoracic12_s.vtp``, ``hat_ribs_scap.vtp``, ``femur_r.vtp``,
``femur_l.vtp`` and the joints of ``Model_Pose2Sim_Body25b.osim`` (fetched and checked like the hand meshes).
The chain pelvis -> sacrum (weld) -> L5 -> ... -> L1 -> torso follows the model's intervertebral joints; each
joint gets a random flexion/extension and lateral bending within a few degrees, so lordosis varies. The torso
carries T11, T12 and the rib cage (one mesh, with the scapulae: only its part inside the grid counts), placed by
their geometry frames; the femurs hang from the hip joints with a small random flexion. OpenSim frames (X
anterior, Y superior, Z right, metres) become RAS mm. Version 2 added T11-T12, the ribs and the femoral heads:
on lateral radiographs they are what overlaps L1 and S1 (version 1 had the lumbar spine and pelvis only).

Labels use TotalSegmentator v2's values and names (vertebrae_T11 = 33, vertebrae_T12 = 32, vertebrae_L1 = 31 ...
vertebrae_L5 = 27, vertebrae_S1 = 26, sacrum = 25, femur_left = 75, femur_right = 76, hip_left = 77,
hip_right = 78), so one ``--names``/``--classes`` serves this phantom and the TotalSegmentator CTs. The rib cage
is one mesh, so it cannot take TotalSegmentator's per-rib labels: it is ``ribs_and_scapulae`` = 200. S1 is the
top ``S1_HEIGHT_MM`` (scaled) of the sacrum mesh: an approximation of the S1 segment, stated here because the
mesh is one piece.

Tissues (HU): a trabecular core (``trabecular_hu``, 120-250 HU x bone density, with a smooth texture) in a cortical
shell ``cortical_mm`` (1.5-2.5 mm) thick, an elliptical abdomen (skin, subcutaneous fat of random thickness,
muscle/organs at 35-50 HU), random bowel-gas pockets in front of the spine, air outside. Same seed, same phantom.

The shell is thicker than a real cortex (0.5-1.2 mm; a 1.5 mm grid cannot hold it), so its HU is what gives it the
*areal density* of the real one: ``trabecular + (cortex_hu_true - trabecular) x cortex_mm_true / cortical_mm``
(``cortex_hu_true`` 1,400-1,800 HU). Version 3 made this change: version 2's shell (900-1,300 HU over 1.5-2.5 mm)
and core (200-340 HU) gave an L3 a mean of 500-650 HU, two to three times the bone mass per vertebra of the
sample abdomen CT (mean 220 HU over a label 1.5 times the volume), so a model trained on the phantoms looked for
a much brighter spine than a CT shows.

Version 4: each vertebra (T11-L5) also gets its own scale about its centre, 0.88-1.12 in depth and 0.9-1.1 in
height and width, so the vertebrae of one phantom differ in shape as a person's do, and not only all together.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..volume import Volume

PHANTOM_VERSION = 4
SPINE_FILES = {
    "Model_Pose2Sim_Body25b.osim": "72a9baa6a2e7b5e364ca5445155b5a8415060a39bb754fb337b985b32dc8ba95",
    "lumbar1.vtp": "e5accaeba10f253693f894e66accecc6b61abccc950da6982359a9193ad3e7a8",
    "lumbar2.vtp": "2ccb3a27dcbe9ff23808940246ba631d6926f7e4e41d0d615a3cf2515cb5c358",
    "lumbar3.vtp": "f483d7e97211b75a80cb08240f4c8e84f47977649cf7e6e2e62b69c6022f6bac",
    "lumbar4.vtp": "232d70bcfecb98f5dd9dbbdedb14896148ee5d8951a875b5aee2e64f75bc0e92",
    "lumbar5.vtp": "fc37cd35ef7d56d4ebf86b4948b2e7cf3d4c7ff2d5382144c6bf0311da9f8fc6",
    "sacrum.vtp": "eff7a350f40a5ff22316a3e7494dc7215a912cb8f84d0935f83eaa7007fecb73",
    "r_pelvis.vtp": "d0c0ed912a48cf3b26c0ab60c95331c6a153629dde41e868f8e0c6d9bc67144e",
    "l_pelvis.vtp": "b459443d1dc435ecb17ede29a5684645b231442cfb57d762e90f4374403574ee",
    "thoracic11_s.vtp": "dc4e3ec249f7279968cd257db06d88a7e5768f5fef4465a9e17485dbfc01e8e2",
    "thoracic12_s.vtp": "b5ccd8df5620f30f4a0c294d5aa33f02034cf511f58ba7d3321e280532334267",
    "hat_ribs_scap.vtp": "75e3979f5468550db8cd21adb70cbca880d93d2c74244a3a9524c8b233e41e0f",
    "femur_r.vtp": "ac1a67a9309e7929b769418322ad2e942db7e2eed870548eb6095bad56d01b7b",
    "femur_l.vtp": "1447495dfc28396f162ebe8989f14db7c626f1ddb9a8152eb9d63a3423daa784",
}
# Meshes of the torso body, each in its own geometry frame: (label name, mesh file).
TORSO_MESHES = (("vertebrae_T11", "thoracic11_s.vtp"), ("vertebrae_T12", "thoracic12_s.vtp"),
                ("ribs_and_scapulae", "hat_ribs_scap.vtp"))
# (body, joint placing it in its parent, label value, label name); parents come first.
CHAIN = (("lumbar5", "L5_S1_IVDjnt", 27, "vertebrae_L5"), ("lumbar4", "L4_L5_IVDjnt", 28, "vertebrae_L4"),
         ("lumbar3", "L3_L4_IVDjnt", 29, "vertebrae_L3"), ("lumbar2", "L2_L3_IVD_jnt", 30, "vertebrae_L2"),
         ("lumbar1", "L1_L2_IVD_jnt", 31, "vertebrae_L1"))
NAMES = {25: "sacrum", 26: "vertebrae_S1", 27: "vertebrae_L5", 28: "vertebrae_L4", 29: "vertebrae_L3",
         30: "vertebrae_L2", 31: "vertebrae_L1", 32: "vertebrae_T12", 33: "vertebrae_T11", 75: "femur_left",
         76: "femur_right", 77: "hip_left", 78: "hip_right", 200: "ribs_and_scapulae"}
VERTEBRAE = ("vertebrae_T11", "vertebrae_T12", "vertebrae_L1", "vertebrae_L2", "vertebrae_L3", "vertebrae_L4",
             "vertebrae_L5")
# Bones that are not the spine: they neither set the grid's extent nor its centre.
NOT_SPINE = ("sacrum", "hip_left", "hip_right", "femur_left", "femur_right", "ribs_and_scapulae")
S1_HEIGHT_MM = 28.0
# OpenSim (X anterior, Y superior, Z right) -> RAS (R = Z, A = X, S = Y), metres -> mm.
OPENSIM_TO_RAS = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) * 1000.0


@dataclass
class LumbarParams:
    seed: int = 0
    scale: float = 1.0  # overall size
    flexion_deg: tuple[float, ...] = (0.0,) * 5  # per joint, L5/S1 first; + flexion, - extension
    bending_deg: tuple[float, ...] = (0.0,) * 5
    thoracic_flexion_deg: float = 0.0  # the L1/T12 joint
    hip_flexion_deg: tuple[float, float] = (0.0, 0.0)  # right, left
    bone_density: float = 1.0
    cortical_mm: float = 2.0  # thicker than anatomy: the 1.5 mm grid blurs the thin shell and endplates
    trabecular_hu: float = 170.0
    cortex_mm_true: float = 0.75  # the real cortex the shell stands for (module docstring)
    cortex_hu_true: float = 1600.0
    abdomen_width_mm: float = 320.0  # left-right
    abdomen_depth_mm: float = 240.0  # anterior-posterior
    fat_mm: float = 20.0
    gas_pockets: int = 8
    voxel_mm: float = 1.5
    # per vertebra (T11, T12, L1 ... L5): its own scale along depth, height and width about its centre
    vertebra_scale: tuple[tuple[float, float, float], ...] = ((1.0, 1.0, 1.0),) * 7


def random_params(seed: int) -> LumbarParams:
    rng = np.random.default_rng([seed, PHANTOM_VERSION, 7])
    return LumbarParams(
        seed=seed, scale=float(rng.uniform(0.9, 1.1)),
        flexion_deg=tuple(float(v) for v in rng.uniform(-4.0, 3.0, 5)),
        bending_deg=tuple(float(v) for v in rng.uniform(-2.0, 2.0, 5)),
        bone_density=float(rng.uniform(0.85, 1.15)), cortical_mm=float(rng.uniform(1.5, 2.5)),
        trabecular_hu=float(rng.uniform(120.0, 250.0)), cortex_mm_true=float(rng.uniform(0.5, 1.2)),
        cortex_hu_true=float(rng.uniform(1400.0, 1800.0)),
        abdomen_width_mm=float(rng.uniform(280.0, 370.0)), abdomen_depth_mm=float(rng.uniform(200.0, 290.0)),
        fat_mm=float(rng.uniform(8.0, 40.0)), gas_pockets=int(rng.integers(2, 9)),
        thoracic_flexion_deg=float(rng.uniform(-4.0, 3.0)),
        hip_flexion_deg=(float(rng.uniform(-10.0, 15.0)), float(rng.uniform(-10.0, 15.0))),
        vertebra_scale=tuple((float(d), float(h), float(w)) for d, h, w in
                             zip(rng.uniform(0.88, 1.12, 7), rng.uniform(0.9, 1.1, 7), rng.uniform(0.9, 1.1, 7))))


def _joint_rotation(flexion_deg: float, bending_deg: float) -> np.ndarray:
    """The intervertebral joint: flexion about the joint frame's Z, then lateral bending about X."""
    a, b = np.radians(flexion_deg), np.radians(bending_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0, 0], [np.sin(a), np.cos(a), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    rx = np.array([[1, 0, 0, 0], [0, np.cos(b), -np.sin(b), 0], [0, np.sin(b), np.cos(b), 0], [0, 0, 0, 1]])
    return rz @ rx


def body_transforms(osim: Path, params: LumbarParams) -> dict[str, np.ndarray]:
    """4x4 (metres) of each body in the pelvis frame."""
    import xml.etree.ElementTree as ET

    from .hand_meshes import _joint, placed_by_joint

    from .hip import _custom_joint_rotation

    root = ET.parse(str(osim)).getroot()
    out = {"pelvis": np.eye(4), "sacrum": placed_by_joint(root, "sacrumjnt", np.eye(4))}
    parent = "sacrum"
    for index, (body, joint, _, _) in enumerate(CHAIN):
        rotation = _joint_rotation(params.flexion_deg[index], params.bending_deg[index])
        out[body] = out[parent] @ placed_by_joint(root, joint, rotation)
        parent = body
    out["torso"] = out["lumbar1"] @ placed_by_joint(root, "L1_T12_IVD_jnt",
                                                    _joint_rotation(params.thoracic_flexion_deg, 0.0))
    frames = geometry_frames(root, "torso")
    for name, file in TORSO_MESHES:  # each torso mesh sits in its own frame of the torso body
        out[name] = out["torso"] @ frames[file]
    for side, flexion in zip("rl", params.hip_flexion_deg):
        joint = _joint(root, f"hip_{side}")
        rotation = _custom_joint_rotation(joint, {f"hip_flexion_{side}": np.radians(flexion)})
        out[f"femur_{side}"] = placed_by_joint(root, f"hip_{side}", rotation)
    return out


def geometry_frames(root, body: str) -> dict[str, np.ndarray]:
    """{mesh file: 4x4 (metres)} of the PhysicalOffsetFrame that holds each mesh of ``body``, times the mesh's
    scale divided by its first factor (``posed_model_meshes`` applies that one: the rib cage is 1 x 1.1 x 1)."""
    from .hand_meshes import _rotation_xyz

    element = next(e for e in root.iter("Body") if e.get("name") == body)
    out = {}
    for frame in element.iter("PhysicalOffsetFrame"):
        placement = np.eye(4)
        placement[:3, :3] = _rotation_xyz(frame.findtext("orientation").split())
        placement[:3, 3] = [float(v) for v in frame.findtext("translation").split()]
        for mesh in frame.iter("Mesh"):
            scale = [float(v) for v in mesh.findtext("scale_factors").split()]
            out[mesh.findtext("mesh_file")] = placement @ np.diag([v / scale[0] for v in scale] + [1.0])
    return out


def _smoothed(poly):
    """Holes filled, consistently oriented, Loop-subdivided once (the model meshes have ~200 vertices)."""
    import vtk

    from ..mesh_labels import edge_count, oriented_closed

    normals = oriented_closed(poly, hole_size=1e6)
    if edge_count(normals.GetOutput(), boundary=False):  # the hip meshes: Loop subdivision needs a manifold
        return normals.GetOutput()
    loop = vtk.vtkLoopSubdivisionFilter()
    loop.SetNumberOfSubdivisions(1)
    loop.SetInputConnection(normals.GetOutputPort())
    loop.Update()
    return loop.GetOutput()


def posed_meshes(params: LumbarParams, folder: Path | None = None) -> dict[str, object]:
    """{label name: vtkPolyData in RAS mm}, S1 still part of 'sacrum'."""
    from .hand_meshes import fetch_hand_meshes

    folder = folder or fetch_hand_meshes(files=SPINE_FILES, folder_name="pose2sim-spine")
    osim = folder / "Model_Pose2Sim_Body25b.osim"
    files = {"sacrum": ("sacrum", "sacrum.vtp"), "hip_right": ("pelvis", "r_pelvis.vtp"),
             "hip_left": ("pelvis", "l_pelvis.vtp"), "femur_right": ("femur_r", "femur_r.vtp"),
             "femur_left": ("femur_l", "femur_l.vtp"),
             **{name: (body, f"{body}.vtp") for body, _, _, name in CHAIN},
             **{name: (name, file) for name, file in TORSO_MESHES}}
    own_scale = dict(zip(VERTEBRAE, params.vertebra_scale))
    return posed_model_meshes(folder, files, body_transforms(osim, params), params.scale, own_scale)


def opensim_to_ras(scale: float) -> np.ndarray:
    """4x4 from the OpenSim model frame (metres) to RAS mm, times the phantom's overall ``scale``."""
    to_ras = np.eye(4)
    to_ras[:3, :3] = OPENSIM_TO_RAS * scale
    return to_ras


def posed_model_meshes(folder: Path, files: dict[str, tuple[str, str]], transforms: dict[str, np.ndarray],
                       scale: float, own_scale: dict[str, tuple[float, float, float]] | None = None
                       ) -> dict[str, object]:
    """{label name: vtkPolyData in RAS mm} of the model meshes ``files`` ({name: (body, mesh file)}), each scaled
    as the .osim scales it, then by ``own_scale[name]`` (OpenSim X, Y, Z: depth, height, width) about its own
    centre, placed by its body's transform (``body_transforms``) and ``_smoothed``."""
    from ..mesh_labels import read_mesh, transform_polydata
    from .hand_meshes import hand_mesh_scales

    scales = hand_mesh_scales(folder / "Model_Pose2Sim_Body25b.osim")
    to_ras = opensim_to_ras(scale)
    meshes = {}
    for name, (body, file) in files.items():
        poly = read_mesh(folder / file, scale=1.0, lps=False)
        file_scale = np.diag([scales.get(file, 1.0)] * 3 + [1.0])
        if own_scale and name in own_scale:
            file_scale = _about_centre(poly, own_scale[name], scales.get(file, 1.0)) @ file_scale
        meshes[name] = _smoothed(transform_polydata(poly, to_ras @ transforms[body] @ file_scale))
    return meshes


def _about_centre(poly, factors, file_scale: float) -> np.ndarray:
    """4x4 scaling by ``factors`` about the centre of the mesh's points once scaled by ``file_scale``."""
    from vtk.util.numpy_support import vtk_to_numpy

    centre = vtk_to_numpy(poly.GetPoints().GetData()).astype(float).mean(axis=0) * file_scale
    out = np.diag([*map(float, factors), 1.0])
    out[:3, 3] = centre - np.asarray(factors, float) * centre
    return out


def box_grid(low: np.ndarray, high: np.ndarray, voxel_mm: float, name: str) -> Volume:
    """An empty axis-aligned RAS grid (int16) of ``voxel_mm`` voxels from ``low`` to at least ``high`` (mm)."""
    shape_ijk = np.ceil((high - low) / voxel_mm).astype(int) + 1
    matrix = np.eye(4)
    matrix[:3, :3] = np.eye(3) * voxel_mm
    matrix[:3, 3] = low
    return Volume(np.zeros(shape_ijk[::-1], np.int16), matrix, name)


def _grid(meshes: dict[str, object], params: LumbarParams) -> Volume:
    """Axis-aligned RAS grid: the abdomen around the spine, from 50 mm above T11 to 30 mm below the sacrum."""
    from vtk.util.numpy_support import vtk_to_numpy

    spine = np.concatenate([vtk_to_numpy(meshes[n].GetPoints().GetData()) for n in meshes if n not in NOT_SPINE])
    sacrum = vtk_to_numpy(meshes["sacrum"].GetPoints().GetData())
    centre_r = float(np.median(spine[:, 0]))
    back = float(spine[:, 1].min()) - 45.0 * params.scale  # posterior skin ~45 mm behind the spinous processes
    low = np.array([centre_r - params.abdomen_width_mm / 2 - 8, back - 8, float(sacrum[:, 2].min()) - 30.0])
    high = np.array([centre_r + params.abdomen_width_mm / 2 + 8, back + params.abdomen_depth_mm + 8,
                     float(spine[:, 2].max()) + 50.0])
    return box_grid(low, high, params.voxel_mm, "lumbar phantom")


def _abdomen(grid: Volume, params: LumbarParams, rng: np.random.Generator) -> np.ndarray:
    """HU of the soft tissue: an elliptical abdomen (skin, fat, muscle/organs) with bowel-gas pockets."""
    from scipy import ndimage

    nk, nj, ni = grid.array.shape
    h = params.voxel_mm
    r = grid.ijk_to_ras[0, 3] + h * np.arange(ni)
    a = grid.ijk_to_ras[1, 3] + h * np.arange(nj)
    centre_r, centre_a = r.mean(), a[0] + 8 + params.abdomen_depth_mm / 2
    half_w, half_d = params.abdomen_width_mm / 2, params.abdomen_depth_mm / 2
    # Distance inside the ellipse (mm, approximate: radial scaling), the same for every slice.
    rho = np.sqrt(((r[None, :] - centre_r) / half_w) ** 2 + ((a[:, None] - centre_a) / half_d) ** 2)
    depth = (1.0 - rho) * min(half_w, half_d)
    section = np.where(depth > 0, 42.0, -1000.0)
    section[(depth > 0) & (depth <= 2.0 + params.fat_mm)] = -100.0
    section[(depth > 0) & (depth <= 2.0)] = 30.0
    hu = np.repeat(section[None].astype(np.float32), nk, axis=0)
    hu += np.where(hu > -500, rng.normal(0.0, 8.0, hu.shape), 0.0).astype(np.float32)
    gas = np.zeros(hu.shape, bool)
    for _ in range(params.gas_pockets):  # bowel gas in front of the spine
        centre = np.array([rng.uniform(0.15, 0.85) * nk, rng.uniform(0.55, 0.85) * nj, rng.uniform(0.3, 0.7) * ni])
        radii = rng.uniform(5.0, 16.0, 3) / h
        lo, hi = np.maximum((centre - radii).astype(int), 0), np.minimum((centre + radii).astype(int) + 1, hu.shape)
        k, j, i = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        inside = ((k - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2 + ((i - centre[2]) / radii[2]) ** 2 <= 1
        gas[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= inside
    hu[gas & (hu > -500)] = -600.0  # gas mixed with bowel content
    return hu


def shell_hu(trabecular_hu: float, cortex_hu: float, cortex_mm: float, shell_mm: float) -> float:
    """HU of a ``shell_mm`` shell with the areal density (HU x mm above the core) of a ``cortex_mm`` cortex."""
    return float(trabecular_hu + (cortex_hu - trabecular_hu) * min(cortex_mm / shell_mm, 1.0))


def build_lumbar_phantom(params: LumbarParams) -> tuple[Volume, Volume, dict[int, str], dict]:
    """(CT in HU int16, labels uint8, {value: name}, report)."""
    from scipy import ndimage

    from ..mesh_labels import voxelize_meshes

    rng = np.random.default_rng([int(params.seed), PHANTOM_VERSION])
    meshes = posed_meshes(params)
    grid = _grid(meshes, params)
    values = {name: value for value, name in NAMES.items() if name != "vertebrae_S1"}
    voxelised = voxelize_meshes(meshes, grid, values)
    labels = voxelised.labels.array
    h = params.voxel_mm
    # S1: the top slab of the sacrum mesh (see the module docstring).
    sacrum = labels == 25
    top_k = int(np.argwhere(sacrum.any(axis=(1, 2)))[-1, 0])
    s1_slices = int(round(S1_HEIGHT_MM * params.scale / h))
    s1 = sacrum.copy()
    s1[: max(0, top_k - s1_slices)] = False
    labels[s1] = 26
    ct = _abdomen(grid, params, rng)
    trabecular_hu = params.trabecular_hu * params.bone_density
    cortical_hu = shell_hu(trabecular_hu, params.cortex_hu_true * params.bone_density, params.cortex_mm_true,
                           params.cortical_mm)
    bone = labels > 0
    depth = ndimage.distance_transform_edt(bone, sampling=h)
    texture = ndimage.gaussian_filter(rng.standard_normal(bone.shape).astype(np.float32), 1.0 / h)
    texture /= max(float(texture.std()), 1e-6)
    ct[bone] = np.where(depth[bone] <= params.cortical_mm, cortical_hu + 60.0 * texture[bone],
                        trabecular_hu + 45.0 * texture[bone])
    ct_volume = Volume(np.round(ct).astype(np.int16), grid.ijk_to_ras.copy(), "lumbar phantom CT")
    label_volume = Volume(labels.astype(np.uint8), grid.ijk_to_ras.copy(), "lumbar phantom labels")
    counts = np.bincount(labels.ravel(), minlength=max(NAMES) + 1)
    report = {"shape_ijk": list(grid.shape_ijk), "voxel_mm": h, "cortical_hu": round(cortical_hu, 1),
              "trabecular_hu": round(trabecular_hu, 1),
              "bone_voxels": {name: int(counts[value]) for value, name in NAMES.items()},
              "notes": voxelised.notes}
    return ct_volume, label_volume, dict(NAMES), report


def write_lumbar_phantom(out: str | Path, params: LumbarParams) -> dict[str, Path]:
    """Build and write ``ct.nii.gz``, ``labels.nii.gz``, ``names.csv`` and ``phantom.json`` (staged, then moved)."""
    from .output import write_phantom_files

    ct, labels, names, report = build_lumbar_phantom(params)
    record = {"format": "xrayseg-lumbar-phantom", "version": PHANTOM_VERSION, "params": asdict(params),
              "source": "pose2sim==0.3.7 (BSD-3-Clause) OpenSim lumbar, sacrum and pelvis meshes", **report}
    return write_phantom_files(out, ct, labels, names, record)
