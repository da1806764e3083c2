"""A labelled hip phantom (both proximal femurs, both hip bones, sacrum) in a pelvis, from OpenSim's meshes.

Source: the ``pose2sim==0.3.7`` wheel (BSD-3-Clause): ``femur_r.vtp``, ``femur_l.vtp``, ``r_pelvis.vtp``,
``l_pelvis.vtp``, ``sacrum.vtp`` and the joints of ``Model_Pose2Sim_Body25b.osim`` (fetched and checked like the
hand meshes). Each femur hangs from the pelvis by the model's ``hip_r`` / ``hip_l`` joint (centre of rotation at
the femoral head), posed by a random flexion, adduction and internal/external rotation per side; the sacrum is
welded by ``sacrumjnt``. OpenSim frames (X anterior, Y superior, Z right, metres) become RAS mm.

Labels use TotalSegmentator v2's values and names (sacrum = 25, femur_left = 75, femur_right = 76, hip_left = 77,
hip_right = 78), so ``femur_data`` crops the phantom's femurs by the same rule as a TotalSegmentator CT's.

Tissues (HU, before the scanner blur): a cortical shell ``cortical_mm`` thick at the head and neck that thickens to
``shaft_cortex_mm`` down the shaft (900-1,400 HU x bone density); a textured trabecular core (150-330 HU) that turns
into marrow (-40-60 HU) in the shaft; the pelvis bones with their own shell and core; an elliptical body (skin,
subcutaneous fat, muscle) with bowel gas above the hips. Some phantoms get metal screws along the femoral neck,
as in the sample CT's left femur. The CT is blurred by a Gaussian (``blur_mm``) for a scanner's resolution; the
labels stay exact; then noise. Same seed, same phantom.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..volume import Volume
from .lumbar import _abdomen, box_grid, opensim_to_ras, posed_model_meshes

PHANTOM_VERSION = 1
HIP_FILES = {
    "Model_Pose2Sim_Body25b.osim": "72a9baa6a2e7b5e364ca5445155b5a8415060a39bb754fb337b985b32dc8ba95",
    "femur_r.vtp": "ac1a67a9309e7929b769418322ad2e942db7e2eed870548eb6095bad56d01b7b",
    "femur_l.vtp": "1447495dfc28396f162ebe8989f14db7c626f1ddb9a8152eb9d63a3423daa784",
    "r_pelvis.vtp": "d0c0ed912a48cf3b26c0ab60c95331c6a153629dde41e868f8e0c6d9bc67144e",
    "l_pelvis.vtp": "b459443d1dc435ecb17ede29a5684645b231442cfb57d762e90f4374403574ee",
    "sacrum.vtp": "eff7a350f40a5ff22316a3e7494dc7215a912cb8f84d0935f83eaa7007fecb73",
}
NAMES = {25: "sacrum", 75: "femur_left", 76: "femur_right", 77: "hip_left", 78: "hip_right"}
# label name -> (OpenSim body, mesh file)
MESHES = {"femur_right": ("femur_r", "femur_r.vtp"), "femur_left": ("femur_l", "femur_l.vtp"),
          "hip_right": ("pelvis", "r_pelvis.vtp"), "hip_left": ("pelvis", "l_pelvis.vtp"),
          "sacrum": ("sacrum", "sacrum.vtp")}
SIDES = ("right", "left")
# How far the grid reaches (mm, before scaling): below the highest femoral head point and above it.
BELOW_HEAD_MM = 150.0
ABOVE_HEAD_MM = 60.0
# Ranges of the drawn parameters (degrees, factors, mm).
RANGES = {"flexion_deg": (-15.0, 40.0), "adduction_deg": (-20.0, 12.0), "rotation_deg": (-25.0, 25.0),
          "scale": (0.88, 1.12), "bone_density": (0.8, 1.15), "cortical_mm": (1.2, 2.5),
          "shaft_cortex_mm": (3.5, 7.0), "body_width_mm": (330.0, 430.0), "body_depth_mm": (200.0, 290.0),
          "fat_mm": (8.0, 45.0), "blur_mm": (0.5, 1.4), "noise_hu": (8.0, 35.0)}


@dataclass
class HipParams:
    seed: int = 0
    flexion_deg: tuple[float, float] = (0.0, 0.0)  # (right, left); + flexion
    adduction_deg: tuple[float, float] = (0.0, 0.0)  # + adduction, - abduction
    rotation_deg: tuple[float, float] = (0.0, 0.0)  # + internal rotation
    scale: float = 1.0
    bone_density: float = 1.0
    cortical_mm: float = 1.8  # head and neck
    shaft_cortex_mm: float = 5.0
    body_width_mm: float = 380.0
    body_depth_mm: float = 240.0
    fat_mm: float = 20.0
    gas_pockets: int = 4
    screws: tuple[int, int] = (0, 0)  # metal screws along the neck, (right, left)
    blur_mm: float = 0.9  # Gaussian sigma of the scanner blur
    noise_hu: float = 15.0  # standard deviation of the image noise added after the blur
    voxel_mm: float = 1.5


def random_params(seed: int, voxel_mm: float = 1.5) -> HipParams:
    """Every parameter drawn from ``seed`` within ``RANGES``; one phantom in four has neck screws on one side."""
    rng = np.random.default_rng([seed, PHANTOM_VERSION, 11])

    def draw(name: str, n: int = 1):
        low, high = RANGES[name]
        values = rng.uniform(low, high, n)
        return float(values[0]) if n == 1 else tuple(float(v) for v in values)

    screws = [0, 0]
    if rng.random() < 0.25:
        screws[int(rng.integers(2))] = int(rng.integers(1, 4))
    return HipParams(seed=seed, flexion_deg=draw("flexion_deg", 2), adduction_deg=draw("adduction_deg", 2),
                     rotation_deg=draw("rotation_deg", 2), scale=draw("scale"), bone_density=draw("bone_density"),
                     cortical_mm=draw("cortical_mm"), shaft_cortex_mm=draw("shaft_cortex_mm"),
                     body_width_mm=draw("body_width_mm"), body_depth_mm=draw("body_depth_mm"), fat_mm=draw("fat_mm"),
                     gas_pockets=int(rng.integers(0, 6)), screws=(screws[0], screws[1]), blur_mm=draw("blur_mm"),
                     noise_hu=draw("noise_hu"), voxel_mm=voxel_mm)


def _axis_rotation(axis, angle: float) -> np.ndarray:
    """4x4 rotation by ``angle`` (radians) about the unit ``axis`` (Rodrigues)."""
    x, y, z = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    m = np.eye(4)
    m[:3, :3] = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
    return m


def _custom_joint_rotation(joint, values: dict[str, float]) -> np.ndarray:
    """A CustomJoint's rotation for coordinate values (radians): its rotation1..3 axes applied in turn, each about
    the frame the previous ones left (body-fixed), as OpenSim's SpatialTransform does."""
    out = np.eye(4)
    for axis in joint.iter("TransformAxis"):
        if not axis.get("name", "").startswith("rotation"):
            continue
        coordinate = (axis.findtext("coordinates") or "").strip()
        if coordinate:
            out = out @ _axis_rotation([float(v) for v in axis.findtext("axis").split()], values.get(coordinate, 0.0))
    return out


def body_transforms(osim: Path, params: HipParams) -> dict[str, np.ndarray]:
    """4x4 (metres) of the femurs and the sacrum in the pelvis frame."""
    import xml.etree.ElementTree as ET

    from .hand_meshes import _joint, placed_by_joint

    root = ET.parse(str(osim)).getroot()
    out = {"pelvis": np.eye(4), "sacrum": placed_by_joint(root, "sacrumjnt", np.eye(4))}
    for index, side in enumerate(SIDES):
        s = side[0]
        joint = _joint(root, f"hip_{s}")
        values = {f"hip_flexion_{s}": np.radians(params.flexion_deg[index]),
                  f"hip_adduction_{s}": np.radians(params.adduction_deg[index]),
                  f"hip_rotation_{s}": np.radians(params.rotation_deg[index])}
        out[f"femur_{s}"] = placed_by_joint(root, f"hip_{s}", _custom_joint_rotation(joint, values))
    return out


def posed_meshes(params: HipParams, folder: Path | None = None) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """({label name: vtkPolyData in RAS mm}, {side: femoral head centre in RAS mm})."""
    from .hand_meshes import fetch_hand_meshes

    folder = folder or fetch_hand_meshes(files=HIP_FILES, folder_name="pose2sim-hip")
    transforms = body_transforms(folder / "Model_Pose2Sim_Body25b.osim", params)
    meshes = posed_model_meshes(folder, MESHES, transforms, params.scale)
    to_ras = opensim_to_ras(params.scale)
    heads = {side: (to_ras @ transforms[f"femur_{side[0]}"])[:3, 3] for side in SIDES}
    return meshes, heads


def _points(poly) -> np.ndarray:
    from vtk.util.numpy_support import vtk_to_numpy

    return vtk_to_numpy(poly.GetPoints().GetData()).astype(float)


def _grid(meshes: dict[str, object], params: HipParams) -> Volume:
    """Axis-aligned RAS grid: the body around the pelvis, from BELOW_HEAD_MM below the femoral heads' top to
    ABOVE_HEAD_MM above it."""
    femurs = np.concatenate([_points(meshes[n]) for n in ("femur_right", "femur_left")])
    pelvis = np.concatenate([_points(meshes[n]) for n in ("hip_right", "hip_left", "sacrum")])
    head_top = max(float(_points(meshes[n])[:, 2].max()) for n in ("femur_right", "femur_left"))
    centre_r = 0.5 * (float(femurs[:, 0].min()) + float(femurs[:, 0].max()))
    back = float(pelvis[:, 1].min()) - 40.0 * params.scale  # skin behind the sacrum
    low = np.array([centre_r - params.body_width_mm / 2 - 8, back - 8, head_top - BELOW_HEAD_MM * params.scale])
    high = np.array([centre_r + params.body_width_mm / 2 + 8, back + params.body_depth_mm + 8,
                     head_top + ABOVE_HEAD_MM * params.scale])
    return box_grid(low, high, params.voxel_mm, "hip phantom")


def _voxel_ras(grid: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RAS coordinates (mm) of the voxel centres along i, j and k (the grid is axis-aligned)."""
    nk, nj, ni = grid.array.shape
    h = grid.spacing
    origin = grid.ijk_to_ras[:3, 3]
    return origin[0] + h[0] * np.arange(ni), origin[1] + h[1] * np.arange(nj), origin[2] + h[2] * np.arange(nk)


def _screw_mask(grid: Volume, head: np.ndarray, side: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` parallel screws (6.5 mm) from the femoral head centre out through the lateral cortex, along a neck
    axis 130 degrees from the shaft (40 degrees below horizontal), with a random anteversion."""
    r, a, s = _voxel_ras(grid)
    outward = 1.0 if side == "right" else -1.0
    tilt, anteversion = np.radians(rng.uniform(35.0, 45.0)), np.radians(rng.uniform(5.0, 20.0))
    direction = np.array([outward * np.cos(tilt) * np.cos(anteversion), -np.cos(tilt) * np.sin(anteversion),
                          -np.sin(tilt)])
    mask = np.zeros(grid.array.shape, bool)
    # Only the box the screws can reach (105 mm from the head centre) is tested.
    lo = [int(np.searchsorted(axis, c - 115.0)) for axis, c in zip((s, a, r), head[::-1])]
    hi = [int(np.searchsorted(axis, c + 115.0)) for axis, c in zip((s, a, r), head[::-1])]
    ss, aa, rr = np.meshgrid(s[lo[0]:hi[0]], a[lo[1]:hi[1]], r[lo[2]:hi[2]], indexing="ij")
    points = np.stack([rr, aa, ss], -1)
    block = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    for index in range(count):
        start = head + rng.normal(0.0, 5.0, 3) * np.array([0.3, 1.0, 1.0]) + np.array([0, 0, 8.0 * (index - 1)])
        rel = points - start
        along = rel @ direction
        radial = np.linalg.norm(rel - along[..., None] * direction, axis=-1)
        block |= (radial <= 3.25) & (along >= 0) & (along <= 105.0)
    return mask


def build_hip_phantom(params: HipParams) -> tuple[Volume, Volume, dict[int, str], dict]:
    """(CT in HU int16, labels uint8, {value: name}, report)."""
    from scipy import ndimage

    from ..mesh_labels import voxelize_meshes

    rng = np.random.default_rng([int(params.seed), PHANTOM_VERSION])
    meshes, heads = posed_meshes(params)
    grid = _grid(meshes, params)
    values = {name: value for value, name in NAMES.items()}
    voxelised = voxelize_meshes(meshes, grid, values)
    labels = voxelised.labels.array
    h = params.voxel_mm
    abdomen = SimpleNamespace(voxel_mm=h, abdomen_width_mm=params.body_width_mm,
                              abdomen_depth_mm=params.body_depth_mm, fat_mm=params.fat_mm, gas_pockets=0)
    ct = _abdomen(grid, abdomen, rng)
    _, _, s = _voxel_ras(grid)
    head_top = max(float(_points(meshes[n])[:, 2].max()) for n in ("femur_right", "femur_left"))
    _add_gas(ct, grid, params, s > head_top - 10.0, rng)
    bone = labels > 0
    depth = ndimage.distance_transform_edt(bone, sampling=h)
    texture = ndimage.gaussian_filter(rng.standard_normal(bone.shape).astype(np.float32), 1.0 / h)
    texture /= max(float(texture.std()), 1e-6)
    density = params.bone_density
    cortical_hu = float(np.clip(1150.0 * density * rng.uniform(0.9, 1.1), 900.0, 1400.0))
    trabecular_hu = float(np.clip(250.0 * density, 150.0, 330.0))
    marrow_hu = float(rng.uniform(-40.0, 60.0))
    # Down the femoral shaft (from 60 mm below the head top, scaled) the cortex thickens and the core turns to marrow.
    below = np.clip((head_top - s - 60.0 * params.scale) / (40.0 * params.scale), 0.0, 1.0)[:, None, None]
    femur = (labels == 75) | (labels == 76)
    shell = np.where(femur, params.cortical_mm + (params.shaft_cortex_mm - params.cortical_mm) * below,
                     params.cortical_mm)
    core = np.where(femur, trabecular_hu + (marrow_hu - trabecular_hu) * below, trabecular_hu)
    ct[bone] = np.where(depth[bone] <= shell[bone], cortical_hu + 60.0 * texture[bone],
                        core[bone] + 45.0 * texture[bone])
    for index, side in enumerate(SIDES):
        if params.screws[index]:
            ct[_screw_mask(grid, heads[side], side, params.screws[index], rng)] = float(rng.uniform(2500.0, 3500.0))
    if params.blur_mm > 0:
        ct = ndimage.gaussian_filter(ct, params.blur_mm / h)
    ct += rng.normal(0.0, params.noise_hu, ct.shape).astype(np.float32)
    ct_volume = Volume(np.round(np.clip(ct, -1024, 4000)).astype(np.int16), grid.ijk_to_ras.copy(), "hip phantom CT")
    label_volume = Volume(labels.astype(np.uint8), grid.ijk_to_ras.copy(), "hip phantom labels")
    counts = np.bincount(labels.ravel(), minlength=max(NAMES) + 1)
    report = {"shape_ijk": list(grid.shape_ijk), "voxel_mm": h, "cortical_hu": round(cortical_hu, 1),
              "trabecular_hu": round(trabecular_hu, 1), "marrow_hu": round(marrow_hu, 1),
              "femoral_head_centres_ras_mm": {side: [round(float(v), 2) for v in heads[side]] for side in SIDES},
              "bone_voxels": {name: int(counts[value]) for value, name in NAMES.items()},
              "notes": voxelised.notes}
    return ct_volume, label_volume, dict(NAMES), report


def _add_gas(ct: np.ndarray, grid: Volume, params: HipParams, above: np.ndarray, rng: np.random.Generator) -> None:
    """Bowel-gas pockets (-600 HU) in front of the sacrum, only in the slices ``above`` the hips."""
    slices = np.flatnonzero(above)
    if not len(slices) or not params.gas_pockets:
        return
    nk, nj, ni = ct.shape
    h = params.voxel_mm
    k, j, i = np.ogrid[:nk, :nj, :ni]
    for _ in range(params.gas_pockets):
        centre = np.array([rng.uniform(slices[0], slices[-1]), rng.uniform(0.55, 0.8) * nj, rng.uniform(0.35, 0.65) * ni])
        radii = rng.uniform(6.0, 18.0, 3) / h
        inside = ((k - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2 + ((i - centre[2]) / radii[2]) ** 2 <= 1
        ct[inside & above[:, None, None] & (ct > -500)] = -600.0


def write_hip_phantom(out: str | Path, params: HipParams) -> dict[str, Path]:
    """Build and write ``ct.nii.gz``, ``labels.nii.gz``, ``names.csv`` and ``phantom.json`` (staged, then moved)."""
    from .output import write_phantom_files

    ct, labels, names, report = build_hip_phantom(params)
    record = {"format": "xrayseg-hip-phantom", "version": PHANTOM_VERSION, "params": asdict(params),
              "source": "pose2sim==0.3.7 (BSD-3-Clause) OpenSim femur, pelvis and sacrum meshes", **report}
    return write_phantom_files(out, ct, labels, names, record)
