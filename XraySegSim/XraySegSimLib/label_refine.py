"""Bone labels after registration: refine them by the target's HU, and measure how good they are.

Registration moves the atlas's labels to about the right place; the target's own HU then decides the edges.
A label is kept only on bone (HU above ``keep_hu``, plus the marrow that cortical bone encloses), and bone
voxels that no label reached get the nearest label within ``grow_mm``. Quality figures: the fraction of bone
voxels (HU > 200) that carry a label, and the Dice of a label with a reference mask where one exists.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np


def bone_mask(ct_hu: np.ndarray, spacing_mm: Iterable[float], keep_hu: float = 150.0,
              max_marrow_ml: float = 60.0) -> np.ndarray:
    """Voxels that are bone: HU > ``keep_hu``, plus enclosed cavities up to ``max_marrow_ml`` (vertebral
    bodies' marrow is often below the threshold but lies inside the cortex). ``ct_hu`` is ``[k, j, i]``;
    ``spacing_mm`` is (i, j, k)."""
    import SimpleITK as sitk

    dense = ct_hu > keep_hu
    image = sitk.GetImageFromArray(dense.astype(np.uint8))
    image.SetSpacing([float(s) for s in spacing_mm])
    filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(image, fullyConnected=False)).astype(bool)
    holes = filled & ~dense
    if not holes.any():
        return dense
    hole_image = sitk.GetImageFromArray(holes.astype(np.uint8))
    components = sitk.GetArrayFromImage(sitk.ConnectedComponent(hole_image))
    voxel_ml = float(np.prod(list(spacing_mm))) / 1000.0
    sizes = np.bincount(components.ravel())
    small = sizes * voxel_ml <= max_marrow_ml
    small[0] = False
    return dense | small[components]


def refine_labels(labels: np.ndarray, ct_hu: np.ndarray, spacing_mm: Iterable[float], keep_hu: float = 150.0,
                  grow_mm: float = 3.0, allowed: np.ndarray | None = None) -> np.ndarray:
    """Keep ``labels`` only on bone, then give unlabelled bone within ``grow_mm`` the nearest label.

    ``allowed`` (bool, same shape) limits the growth, e.g. to the atlas's field of view mapped onto the target.
    """
    import SimpleITK as sitk

    spacing = [float(s) for s in spacing_mm]
    bone = bone_mask(ct_hu, spacing, keep_hu)
    kept = np.where(bone, labels, 0).astype(labels.dtype)
    if grow_mm <= 0 or not kept.any():
        return kept
    image = sitk.GetImageFromArray(kept.astype(np.uint16))
    image.SetSpacing(spacing)
    radius = [max(1, int(round(grow_mm / s))) for s in spacing]
    # LabelSetDilate works in voxels here, so the radius is per axis; each voxel takes the nearest label
    grown = sitk.GetArrayFromImage(sitk.LabelSetDilate(image, radius, useImageSpacing=False))
    target = bone & (kept == 0) & (grown > 0)
    if allowed is not None:
        target &= allowed
    return np.where(target, grown, kept).astype(labels.dtype)


def bone_coverage(labels: np.ndarray, ct_hu: np.ndarray, bone_hu: float = 200.0,
                  within: np.ndarray | None = None) -> float:
    """Fraction of bone voxels (HU > ``bone_hu``, optionally only ``within`` a mask) that carry a label > 0."""
    bone = ct_hu > bone_hu
    if within is not None:
        bone &= within
    total = int(bone.sum())
    return float(((labels > 0) & bone).sum() / total) if total else float("nan")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (nan when both are empty)."""
    a, b = a.astype(bool), b.astype(bool)
    total = int(a.sum() + b.sum())
    return float(2.0 * (a & b).sum() / total) if total else float("nan")


def per_label_dice(result: np.ndarray, reference: np.ndarray, values: Iterable[int]) -> dict[int, float]:
    """Dice of each label value between two label maps on the same grid."""
    return {int(v): dice(result == v, reference == v) for v in values}


def label_volumes_ml(labels: np.ndarray, spacing_mm: Iterable[float],
                     names: Mapping[int, str] | None = None) -> dict[str, float]:
    """Volume in ml of each non-zero label value, keyed by name (or the value as text)."""
    voxel_ml = float(np.prod(list(spacing_mm))) / 1000.0
    counts = np.bincount(labels.ravel().astype(np.int64))
    return {(names or {}).get(v, str(v)): round(float(c) * voxel_ml, 2)
            for v, c in enumerate(counts) if v > 0 and c > 0}
