"""Shoulder pose of a virtual patient (issue 10): each shoulder girdle turned about its sternoclavicular joint.

Chest CTs are scanned with the arms raised; PA chest radiographs are taken with the arms down. Raising the arm
elevates the clavicle (by up to ~30-35 degrees at full abduction) and turns the scapula upward, so both
training bodies show their clavicles sloping up laterally by a median 29-35 degrees in the PA views, and a
model trained on them looks for steep clavicles and for scapulae along the lateral chest wall. A virtual patient
can turn each side's girdle (the labelled clavicle, scapula and humerus, and the tissue around them) in the
coronal plane about the medial end of its clavicle, by an angle drawn per side (negative: depressed, towards the
arms-down pose).

The turn is a smooth backward displacement field on a coarse grid (cells of about ``CELL_MM``): inside the
girdle, where it is before and after the turn, the field is the rotation times a weight: the region smoothed by a
Gaussian of ``BLEND_MM`` (doubled, clipped to 1), so the ribs and the trunk farther away stay put (a scapula
slides over the ribs; the smooth field has to shear the tissue between them instead). The weight is below 1 in
thin parts of the region, which then turn by less than the angle drawn; a sharper fade (the distance to the
region, smoothstep over 40 mm) folded tissue (Jacobian < 0) at 15 degrees, since the humerus, 150-200 mm from the
pivot, moves by 40-70 mm against the chest wall beside it. The field is added to the B-spline deformation in
the warp kernel (``virtual_patient._warp_packed``), which cuts the turn short where it would sample beyond a
face of the CT (nothing is known there; sampled at the face, the sample CT's clavicles, which reach its top
face, grew by 60 % with copies of the top slice). That cut short still samples at the face: a girdle cut by a
face is smeared from its section there (a phantom's clavicles cut by the top face grow by 31 % when lowered by
20 degrees, against 11 % of stretch when they lie inside), so the sidecar says per side whether the girdle
reaches a face (``shoulder_girdle_at_face``); the sample chest CT's does (its top face cuts the clavicles).
The voxels whose turn was cut short at body are recorded, and the pixels whose rays cross them are ignored
(:mod:`unknown_region`): the smeared section is seen but not learnt from.
The smallest Jacobian determinant of the field goes into the sidecar (below 0 the blend folds tissue: use a
smaller angle).
"""

from __future__ import annotations

import numpy as np

from .virtual_patient import jacobian_determinants

GIRDLE_WORDS = ("clavic", "scapul", "humer")  # class names of the shoulder girdle (TotalSegmentator's and ours)
CLAVICLE_WORD = "clavic"
CELL_MM = 6.0
BLEND_MM = 30.0
MEDIAL_SHARE = 0.15  # the most medial share of a clavicle's cells is its sternoclavicular end (the pivot)


def _coarse_classes(packed: np.ndarray, steps: tuple[int, int, int], groups: list[list[int]]) -> list[np.ndarray]:
    """Per group of class indices, a (Kd, Jd, Id) bool of the cells (steps k, j, i voxels) holding a voxel of
    one of its classes; one pass over the voxels for all groups (a bit per group)."""
    k, j, i = packed.shape
    sk, sj, si = steps
    out = np.zeros((-(-k // sk), -(-j // sj), -(-i // si)), np.uint8)
    lookup = np.zeros(65536, np.uint8)
    for bit, wanted in enumerate(groups):
        lookup[wanted] |= np.uint8(1 << bit)
    for z in range(0, k, sk):  # a slab at a time: no full-size temporary
        slab = np.bitwise_or.reduce(lookup[(packed[z:z + sk] >> 16).astype(np.int64)], axis=0)
        slab = np.pad(slab, ((0, -j % sj), (0, -i % si)))
        out[z // sk] = np.bitwise_or.reduce(slab.reshape(out.shape[1], sj, out.shape[2], si), axis=(1, 3))
    return [(out & np.uint8(1 << bit)) != 0 for bit in range(len(groups))]


def _rotation(theta_deg: float, lateral_sign: float) -> np.ndarray:
    """3x3 RAS rotation in the coronal plane that lifts the lateral end (R for the right side) by theta."""
    t = np.radians(theta_deg) * lateral_sign
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])


def shoulder_field(packed: np.ndarray, ijk_to_ras: np.ndarray, class_names: list[str],
                   angles_deg: tuple[float, float], cell_mm: float = CELL_MM, blend_mm: float = BLEND_MM
                   ) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """(field (3, Kd, Jd, Id) float32: backward displacement in voxels along i, j, k at the cell centres;
    steps (3,) float32: voxels per cell along i, j, k; info for the sidecar), or None when the CT has no
    labelled clavicle. ``angles_deg``: (right, left) elevation of each girdle, degrees."""
    from scipy import ndimage

    girdle = [n + 1 for n, name in enumerate(class_names) if any(w in name.lower() for w in GIRDLE_WORDS)]
    clavicle = [n + 1 for n, name in enumerate(class_names) if CLAVICLE_WORD in name.lower()]
    if not clavicle:
        return None
    m = np.asarray(ijk_to_ras, float)
    spacing = np.linalg.norm(m[:3, :3], axis=0)  # i, j, k
    steps_ijk = np.maximum(1, np.round(cell_mm / spacing)).astype(int)
    steps_kji = tuple(int(s) for s in steps_ijk[::-1])
    # the midline: the centroid of every labelled cell (spine, sternum, both sides' ribs), not of the clavicles,
    # which may be labelled on one side only
    girdle_cells, clavicle_cells, labelled_cells = _coarse_classes(
        packed, steps_kji, [girdle, clavicle, list(range(1, len(class_names) + 1))])
    if not clavicle_cells.any():
        return None
    shape = girdle_cells.shape
    kk, jj, ii = np.indices(shape, dtype=np.float64)
    centres_ijk = np.stack([(ii + 0.5) * steps_ijk[0] - 0.5, (jj + 0.5) * steps_ijk[1] - 0.5,
                            (kk + 0.5) * steps_ijk[2] - 0.5], -1)
    centres = centres_ijk @ m[:3, :3].T + m[:3, 3]  # (Kd, Jd, Id, 3) RAS
    midline = float(centres[labelled_cells][:, 0].mean())
    ras_to_ijk = np.linalg.inv(m)[:3, :3]
    field_ras = np.zeros(shape + (3,))
    info = {"shoulder_pivots_ras": {}, "shoulder_deg_applied": {}}
    for side, sign, angle in (("right", 1.0, angles_deg[0]), ("left", -1.0, angles_deg[1])):
        on_side = (centres[..., 0] - midline) * sign > 0
        side_clavicle = centres[clavicle_cells & on_side]
        if len(side_clavicle) == 0 or angle == 0.0:
            info["shoulder_deg_applied"][side] = 0.0
            continue
        lateral = (side_clavicle[:, 0] - midline) * sign
        pivot = side_clavicle[lateral <= np.quantile(lateral, MEDIAL_SHARE)].mean(0)
        forward = _rotation(angle, sign)
        region = girdle_cells & on_side
        info.setdefault("shoulder_girdle_at_face", {})[side] = bool(
            region[[0, -1]].any() or region[:, [0, -1]].any() or region[:, :, [0, -1]].any())
        moved = (centres[region] - pivot) @ forward.T + pivot  # where the girdle's cells go
        cells = np.round(((moved - m[:3, 3]) @ ras_to_ijk.T + 0.5) / steps_ijk - 0.5).astype(int)[:, ::-1]
        inside = np.all((cells >= 0) & (cells < np.array(shape)), 1)
        target = np.zeros(shape, bool)
        target[tuple(cells[inside].T)] = True
        region = ndimage.binary_dilation(region | target)  # before and after the turn, holes of rounding closed
        sigma_kji = blend_mm / (steps_ijk * spacing)[::-1]  # cells are anisotropic on thick slices
        weight = np.clip(2.0 * ndimage.gaussian_filter(region.astype(np.float64), sigma_kji), 0.0, 1.0)
        backward = (centres - pivot) @ forward + pivot - centres  # x_in = R^-1 (y - c) + c; R^-1 = R^T
        field_ras += weight[..., None] * backward
        info["shoulder_pivots_ras"][side] = [round(float(v), 2) for v in pivot]
        info["shoulder_deg_applied"][side] = float(angle)
    field = np.moveaxis(field_ras @ ras_to_ijk.T, -1, 0).astype(np.float32)
    info["shoulder_jacobian_min"] = round(float(jacobian_determinants(field, steps_ijk).min()), 4)
    return np.ascontiguousarray(field), steps_ijk.astype(np.float32), info
