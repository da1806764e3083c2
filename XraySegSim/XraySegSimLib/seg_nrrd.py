"""Read a Slicer segmentation file (``.seg.nrrd``) as a label map plus a {label value: segment name} table.

Slicer writes one 3D array (one layer) or a 4D array (``list`` axis first in NRRD order = several layers, so
segments may overlap). Each segment has ``SegmentN_Name``, ``SegmentN_Layer`` and ``SegmentN_LabelValue``. The
array may cover only part of the reference image (the file's own ``space origin`` then marks its corner).

We give segment ``N`` (0-based, file order) the label value ``N + 1`` in the returned label map. Where segments of
different layers overlap, the later segment wins (a label map holds one value per voxel); the number of such
voxels is reported in ``SegNrrd.overlap_voxels``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .volume import LPS_TO_RAS, Volume


@dataclass
class SegNrrd:
    labels: Volume  # label map [k, j, i], value N + 1 for segment N
    names: dict[int, str]  # label value -> segment name
    colors: dict[int, tuple[float, float, float]]
    overlap_voxels: int = 0


def _ijk_to_ras(header: dict, spatial_axes: list[int]) -> np.ndarray:
    directions = np.asarray(header["space directions"], dtype=float)
    space = str(header.get("space", "left-posterior-superior")).lower()
    rows = [directions[a] for a in spatial_axes]  # one row per image axis i, j, k
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(rows).T
    matrix[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    if space in ("left-posterior-superior", "lps"):
        return LPS_TO_RAS @ matrix
    if space in ("right-anterior-superior", "ras"):
        return matrix
    raise InputError(f"segmentation file: unsupported NRRD space '{space}' (expected LPS or RAS)")


def read_seg_nrrd(path) -> SegNrrd:
    """Read ``path`` (a Slicer ``.seg.nrrd``) into a single label map on the file's own grid."""
    import nrrd

    try:
        array, header = nrrd.read(str(path), index_order="F")  # axes as in the file: fastest first
    except Exception as error:  # pynrrd raises several types for broken files
        raise InputError(f"segmentation {path}: cannot read it as NRRD ({error})") from None
    kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * array.ndim)]
    spatial = [a for a, kind in enumerate(kinds) if kind in ("domain", "space")]
    if len(spatial) != 3 or array.ndim not in (3, 4):
        raise InputError(f"segmentation {path}: expected a 3D or 4D (layers) NRRD, got axes kinds {kinds}")
    layer_axis = next((a for a in range(array.ndim) if a not in spatial), None)
    if layer_axis is None:
        layers = array[None]
    else:
        layers = np.moveaxis(array, layer_axis, 0)
    layers = layers.transpose(0, 3, 2, 1)  # (layer, i, j, k) -> (layer, k, j, i)
    segments = []
    index = 0
    while f"Segment{index}_ID" in header or f"Segment{index}_Name" in header:
        prefix = f"Segment{index}_"
        name = header.get(prefix + "Name") or header.get(prefix + "ID")
        layer = int(header.get(prefix + "Layer", 0))
        value = int(header.get(prefix + "LabelValue", 1))
        color = tuple(float(c) for c in str(header.get(prefix + "Color", "0.5 0.5 0.5")).split()[:3])
        segments.append((str(name), layer, value, color))
        index += 1
    if not segments:
        raise InputError(f"segmentation {path}: the file has no segments (no Segment0_Name in its header)")
    out = np.zeros(layers.shape[1:], np.uint16 if len(segments) > 254 else np.uint8)
    covered = np.zeros(layers.shape[1:], bool)
    overlap = 0
    names: dict[int, str] = {}
    colors: dict[int, tuple[float, float, float]] = {}
    for n, (name, layer, value, color) in enumerate(segments):
        if layer >= layers.shape[0]:
            raise InputError(f"segmentation {path}: segment '{name}' is on layer {layer}, the file has "
                             f"{layers.shape[0]}")
        mask = layers[layer] == value
        overlap += int(np.count_nonzero(mask & covered))
        covered |= mask
        out[mask] = n + 1
        names[n + 1] = name
        colors[n + 1] = color  # type: ignore[assignment]
    volume = Volume(np.ascontiguousarray(out), _ijk_to_ras(header, spatial), f"segmentation {path}")
    return SegNrrd(volume, names, colors, overlap)


def embed_on_grid(labels: Volume, reference: Volume, tolerance_mm: float = 1e-3) -> Volume | None:
    """``labels`` placed on ``reference``'s grid when it is a sub-block of it (same axes and spacing, whole-voxel
    offset, inside): Slicer crops segmentations to their extent. None if the grids are not compatible."""
    if labels.same_grid_as(reference, tolerance_mm):
        return labels
    if not np.allclose(labels.ijk_to_ras[:3, :3], reference.ijk_to_ras[:3, :3], atol=tolerance_mm):
        return None
    offset = reference.ras_to_ijk[:3, :3] @ labels.ijk_to_ras[:3, 3] + reference.ras_to_ijk[:3, 3]
    shift = np.round(offset)
    spacing = reference.spacing
    if np.any(np.abs(offset - shift) * spacing > tolerance_mm):
        return None
    i0, j0, k0 = (int(v) for v in shift)
    nk, nj, ni = labels.array.shape
    rk, rj, ri = reference.array.shape
    if min(i0, j0, k0) < 0 or i0 + ni > ri or j0 + nj > rj or k0 + nk > rk:
        return None
    out = np.zeros(reference.array.shape, labels.array.dtype)
    out[k0:k0 + nk, j0:j0 + nj, i0:i0 + ni] = labels.array
    return Volume(out, reference.ijk_to_ras.copy(), labels.name)
