"""A labelled wrist phantom: CT (HU), bone label map and names, from the posed model skeleton.

Tissues (HU; bone values scaled by ``bone_density``):

* bones: smoothed model meshes voxelised with exact inside tests (:mod:`..mesh_labels`); a cortical shell of
  ``cortical_mm`` (thicker, up to 2.5x, along the shafts of the long bones) at 1,300-1,800 HU; a trabecular core
  with a smooth random texture; fatty marrow in the shafts of radius, ulna, metacarpals and phalanges;
* joints: bone voxels within ``joint_gap_mm`` / 2 of another bone become cartilage, and so do the voxels between
  two bones closer than 2 mm to both, so every joint has a cartilage gap and labels never touch;
* soft tissue: an envelope at a distance from the bones that grows from the fingers (about 4 mm) over the palm
  (7 mm) to the forearm (12-17 mm), scaled by ``soft_tissue_scale`` and smoothed; skin (1.2 mm), fat
  (``fat_mm``) and muscle inside; air (-1000 HU) outside.

Everything random comes from ``numpy.random.default_rng(seed)``: the same seed gives the same phantom.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..volume import Volume
from .wrist_pose import BONE_NAMES, FOREARM, WristPose, posed_polydata

PHANTOM_VERSION = 1
LONG_BONES = tuple(n for n in BONE_NAMES if n in FOREARM or n.startswith(("metacarpal", "phalanx_proximal",
                                                                           "phalanx_middle")))
HU = {"air": -1000.0, "skin": 30.0, "fat": -95.0, "muscle": 45.0, "cartilage": 110.0}

# Ranges of the random draws: name -> (low, high).
RANGES: dict[str, tuple[float, float]] = {
    "flexion_deg": (-30.0, 30.0),
    "deviation_deg": (-20.0, 12.0),
    "finger_spread_deg": (0.0, 12.0),
    "finger_flexion_deg": (0.0, 20.0),
    "scale": (0.86, 1.12),
    "width_scale": (0.92, 1.08),
    "bone_density": (0.8, 1.15),
    "cortical_mm": (0.8, 1.2),
    "soft_tissue_scale": (0.75, 1.35),
    "fat_mm": (1.5, 5.0),
}


@dataclass(frozen=True)
class WristParams:
    """Everything that makes one phantom (see ``RANGES`` for the random ones)."""

    pose: WristPose = field(default_factory=WristPose)
    bone_density: float = 1.0
    cortical_mm: float = 1.0
    soft_tissue_scale: float = 1.0
    fat_mm: float = 3.0
    joint_gap_mm: float = 1.0
    voxel_mm: float = 0.5
    forearm_mm: float = 60.0  # how far the volume reaches proximal of the distal radius
    extent: str = "wrist"  # "wrist": up to the middle of the proximal phalanges; "hand": the fingertips
    seed: int | None = None


def random_params(seed: int, **fixed) -> WristParams:
    """Parameters drawn from ``RANGES`` with ``seed``; keyword arguments override single values."""
    rng = np.random.default_rng(int(seed))
    draws = {name: float(rng.uniform(low, high)) for name, (low, high) in RANGES.items()}
    draws.update({k: v for k, v in fixed.items() if v is not None})
    pose_keys = set(WristPose.__dataclass_fields__)
    pose = WristPose(**{k: draws[k] if k in draws else getattr(WristPose(), k) for k in pose_keys})
    rest = {k: v for k, v in draws.items() if k not in pose_keys and k in WristParams.__dataclass_fields__}
    return WristParams(pose=pose, seed=int(seed), **rest)


def _grid(polys: dict[str, object], params: WristParams) -> Volume:
    """Axis-aligned RAS grid around the bones (cropped along S), padded for the soft tissue."""
    from vtk.util.numpy_support import vtk_to_numpy

    pts = {b: vtk_to_numpy(p.GetPoints().GetData()) for b, p in polys.items()}
    top = float(pts["radius"][:, 2].min()) + params.forearm_mm * params.pose.scale
    if params.extent == "hand":
        bottom = min(float(p[:, 2].min()) for p in pts.values())
    elif params.extent == "wrist":
        bottom = float(np.mean([pts[f"phalanx_proximal_{d}"][:, 2].mean() for d in (2, 3, 4, 5)]))
    else:
        raise InputError(f"extent must be 'wrist' or 'hand', got {params.extent!r}")
    inside = np.concatenate([p[(p[:, 2] <= top) & (p[:, 2] >= bottom)] for p in pts.values()])
    pad = 16.0 * params.soft_tissue_scale + 2.0  # the thickest soft tissue (forearm) and a margin of air
    low = np.array([inside[:, 0].min() - pad, inside[:, 1].min() - pad, bottom - 2.0])
    high = np.array([inside[:, 0].max() + pad, inside[:, 1].max() + pad, top])
    h = params.voxel_mm
    shape_ijk = np.ceil((high - low) / h).astype(int) + 1
    matrix = np.eye(4)
    matrix[:3, :3] = np.eye(3) * h
    matrix[:3, 3] = low
    return Volume(np.zeros(shape_ijk[::-1], np.int16), matrix, "wrist phantom")


def _bbox(mask: np.ndarray, pad: int, shape) -> tuple[slice, ...]:
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != d))) for d in range(3)]
    return tuple(slice(max(int(i[0]) - pad, 0), min(int(i[-1]) + pad + 1, n)) for i, n in zip(idx, shape))


def _ball(radius_voxels: float) -> np.ndarray:
    r = int(np.ceil(radius_voxels))
    k, j, i = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    return (i * i + j * j + k * k) <= radius_voxels ** 2


def _mesh_box(poly, grid: Volume, pad: int) -> tuple[slice, ...]:
    """Grid box (k, j, i slices) of a mesh's bounding box, padded by ``pad`` voxels."""
    bounds = np.array(poly.GetBounds()).reshape(3, 2).T  # rows: low, high (R, A, S)
    ijk = (bounds - grid.ijk_to_ras[:3, 3]) / np.diag(grid.ijk_to_ras)[:3]
    low = np.floor(ijk.min(0)).astype(int) - pad
    high = np.ceil(ijk.max(0)).astype(int) + pad + 1
    shape = grid.array.shape[::-1]
    return tuple(slice(max(int(low[d]), 0), min(int(high[d]), shape[d])) for d in (2, 1, 0))


def _texture(rng: np.random.Generator, shape, sigma_voxels: float) -> np.ndarray:
    """Smooth random field with unit standard deviation (the trabecular texture)."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_voxels)
    return field / max(float(field.std()), 1e-6)


def build_wrist_phantom(params: WristParams) -> tuple[Volume, Volume, dict[int, str], dict]:
    """(CT in HU as int16, labels uint8, {value: name}, report) for ``params``."""
    from scipy import ndimage

    from ..mesh_labels import voxelize_meshes

    rng = np.random.default_rng([int(params.seed or 0), PHANTOM_VERSION])
    polys = posed_polydata(params.pose)
    grid = _grid(polys, params)
    h = params.voxel_mm
    voxelised = voxelize_meshes(polys, grid)
    labels = voxelised.labels.array
    names = voxelised.names
    shape = labels.shape
    ct = np.full(shape, HU["air"], np.float32)
    cartilage = np.zeros(shape, bool)
    near_bones = np.zeros(shape, np.uint8)
    bone_value = {name: value for value, name in names.items()}
    boxes = {}
    pad = int(np.ceil(2.5 / h)) + 1
    trim_steps = max(1, int(round(params.joint_gap_mm / 2 / h)))
    near_ball = _ball(2.0 / h)
    # Joint gaps: trim each bone where another bone is closer than half the gap (a dilation of the others).
    original = labels.copy()
    for name, value in bone_value.items():
        if voxelised.voxels.get(name, 0) == 0:
            continue
        box = _bbox(original == value, pad, shape) if name in FOREARM else _mesh_box(polys[name], grid, pad)
        boxes[name] = box
        local = original[box]
        mine = local == value
        others = (local != 0) & ~mine
        if others.any():
            trim = mine & ndimage.binary_dilation(others, iterations=trim_steps)
            labels[box][trim] = 0
            cartilage[box] |= trim
        near_bones[box] += ndimage.binary_dilation(mine, near_ball).astype(np.uint8)
    cartilage |= (near_bones >= 2) & (original == 0)
    density = params.bone_density
    cortical_hu = float(np.clip(1550.0 * density * rng.uniform(0.95, 1.05), 1300.0, 1800.0))
    trabecular_hu = 320.0 * density
    marrow_hu = float(rng.uniform(-60.0, 20.0))
    for name, box in boxes.items():
        value = bone_value[name]
        local = labels[box] == value
        texture = _texture(rng, local.shape, 0.8 / h)
        depth = ndimage.distance_transform_edt(local, sampling=h)
        shaft = np.zeros(local.shape, np.float32)
        if name in LONG_BONES:
            ijk = np.argwhere(local).astype(float)
            centred = ijk - ijk.mean(0)
            axis = np.linalg.svd(centred[:: max(1, len(centred) // 4000)], full_matrices=False)[2][0]
            t = centred @ axis
            position = (t - t.min()) / max(t.max() - t.min(), 1e-6)  # 0..1 along the bone
            shaft[local] = np.clip(1.0 - np.abs(position - 0.5) / 0.3, 0.0, 1.0)  # 1 mid-shaft, 0 at the ends
        thickness = params.cortical_mm * (1.0 + 1.5 * shaft)
        tissue = np.where(depth <= thickness, cortical_hu + 60.0 * texture,
                          trabecular_hu + 110.0 * density * texture)
        marrow = (shaft > 0.35) & (depth > thickness + 0.5)
        tissue = np.where(marrow, marrow_hu + 15.0 * texture, tissue)
        ct[box][local] = tissue[local]
    # Soft tissue: an envelope at a distance from the bones that depends on the level along the forearm;
    # the distance is computed on a 2x coarser grid (the envelope is smoothed at 1.5 mm anyway).
    bone_or_cartilage = (labels != 0) | cartilage
    coarse = bone_or_cartilage[: shape[0] // 2 * 2, : shape[1] // 2 * 2, : shape[2] // 2 * 2]
    coarse = coarse.reshape(shape[0] // 2, 2, shape[1] // 2, 2, shape[2] // 2, 2).any(axis=(1, 3, 5))
    distance = ndimage.gaussian_filter(ndimage.distance_transform_edt(~coarse, sampling=2 * h), 0.75 / h)
    distance = distance.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    distance = np.pad(distance, [(0, n - c) for n, c in zip(shape, distance.shape)], mode="edge")
    s = grid.ijk_to_ras[2, 3] + h * np.arange(shape[0])  # S of each slice
    radius_tip = float(np.argwhere(original == bone_value["radius"])[:, 0].min()) * h + grid.ijk_to_ras[2, 3]
    mcp = radius_tip - 70.0 * params.pose.scale
    level = np.interp(s, [mcp - 30.0, mcp, mcp + 20.0, radius_tip, radius_tip + 50.0], [4.0, 6.0, 7.0, 11.0, 16.0])
    depth_in_body = (level * params.soft_tissue_scale)[:, None, None] - distance  # > 0 inside the envelope
    soft = (depth_in_body > 0) & ~bone_or_cartilage
    ct[soft] = HU["muscle"]
    ct[soft & (depth_in_body <= 1.2 + params.fat_mm)] = HU["fat"]
    ct[soft & (depth_in_body <= 1.2)] = HU["skin"]
    ct[cartilage & (labels == 0)] = HU["cartilage"]
    ct[soft] += rng.normal(0.0, 6.0, int(np.count_nonzero(soft))).astype(np.float32)
    ct_volume = Volume(np.round(ct).astype(np.int16), grid.ijk_to_ras.copy(), "wrist phantom CT")
    label_volume = Volume(labels, grid.ijk_to_ras.copy(), "wrist phantom labels")
    counts = np.bincount(labels.ravel(), minlength=len(names) + 1)
    report = {"shape_ijk": list(grid.shape_ijk), "voxel_mm": h, "cortical_hu": round(cortical_hu, 1),
              "trabecular_hu": round(trabecular_hu, 1), "marrow_hu": round(marrow_hu, 1),
              "bone_voxels": {names[v]: int(counts[v]) for v in names},
              "mesh_overlap_voxels": voxelised.overlap_voxels, "notes": voxelised.notes}
    return ct_volume, label_volume, names, report


def write_wrist_phantom(out: str | Path, params: WristParams) -> dict[str, Path]:
    """Build the phantom and write ``ct.nii.gz``, ``labels.nii.gz``, ``names.csv`` and ``phantom.json`` into
    ``out`` (all files are written into a temporary folder next to it, then moved in)."""
    from .output import write_phantom_files

    ct, labels, names, report = build_wrist_phantom(params)
    record = {"format": "xrayseg-wrist-phantom", "version": PHANTOM_VERSION, "params": asdict(params),
              "hu": HU, "source": "pose2sim==0.3.7 (BSD-3-Clause) OpenSim hand and forearm meshes", **report}
    return write_phantom_files(out, ct, labels, names, record)
