"""Bone labels after registration: refine them by the target's HU, and measure how good they are.

Registration moves the atlas's labels to about the right place; the target's own HU then decides the edges.
A label is kept only on bone (HU above ``keep_hu``, plus the marrow that cortical bone encloses), and bone
voxels that no label reached get the nearest label within ``grow_mm``. Quality figures: the fraction of bone
voxels (HU > 200) that carry a label, and the Dice of a label with a reference mask where one exists.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np


def _small_holes(mask: np.ndarray, spacing_mm: list[float], max_size: float, per_slice: bool) -> np.ndarray:
    """Enclosed background of ``mask`` in components up to ``max_size`` (ml in 3D, mm^2 per axial slice)."""
    import SimpleITK as sitk

    def holes_of(array: np.ndarray, spacing: list[float], unit: float) -> np.ndarray:
        image = sitk.GetImageFromArray(array.astype(np.uint8))
        image.SetSpacing(spacing)
        holes = sitk.GetArrayFromImage(sitk.BinaryFillhole(image, fullyConnected=False)).astype(bool) & ~array
        if not holes.any():
            return holes
        components = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(holes.astype(np.uint8))))
        small = np.bincount(components.ravel()) * float(np.prod(spacing)) / unit <= max_size
        small[0] = False
        return small[components]

    if not per_slice:
        return holes_of(mask, spacing_mm, 1000.0)
    return np.stack([holes_of(plane, spacing_mm[:2], 1.0) if plane.any() else np.zeros_like(plane)
                     for plane in mask])


def bone_mask(ct_hu: np.ndarray, spacing_mm: Iterable[float], keep_hu: float = 150.0,
              max_marrow_ml: float = 60.0, max_marrow_mm2: float = 2500.0) -> np.ndarray:
    """Voxels that are bone: HU > ``keep_hu``, plus the marrow that cortex encloses (vertebral bodies' marrow is
    often below the threshold): cavities closed in 3D up to ``max_marrow_ml``, and holes closed in an axial
    slice up to ``max_marrow_mm2`` (a vertebral body is ~1,000-2,000 mm^2, a lung ~20,000). ``ct_hu`` is
    ``[k, j, i]``; ``spacing_mm`` is (i, j, k)."""
    spacing = [float(s) for s in spacing_mm]
    dense = ct_hu > keep_hu
    return (dense | _small_holes(dense, spacing, max_marrow_ml, per_slice=False)
            | _small_holes(dense, spacing, max_marrow_mm2, per_slice=True))


def refine_labels(labels: np.ndarray, ct_hu: np.ndarray, spacing_mm: Iterable[float], keep_hu: float = 150.0,
                  grow_mm: float = 3.0, allowed: np.ndarray | None = None, marrow_hu: float | None = None,
                  interior_mm: float = 3.0) -> np.ndarray:
    """Keep ``labels`` only on bone, then give unlabelled bone within ``grow_mm`` the nearest label.

    ``marrow_hu``: also keep a label deeper than ``interior_mm`` inside its own registered region where HU >
    ``marrow_hu`` (marrow that thin cortex does not enclose); the edges still need bone HU.
    ``allowed`` (bool, same shape) limits the growth, e.g. to the atlas's field of view mapped onto the target.
    """
    import SimpleITK as sitk

    spacing = [float(s) for s in spacing_mm]
    bone = bone_mask(ct_hu, spacing, keep_hu)
    keep = bone
    if marrow_hu is not None and labels.any():
        registered = sitk.GetImageFromArray(labels.astype(np.uint16))
        radius = [max(1, int(round(interior_mm / s))) for s in spacing]
        interior = sitk.GetArrayFromImage(sitk.LabelSetErode(registered, radius, useImageSpacing=False)) > 0
        keep = bone | (interior & (ct_hu > marrow_hu))
    kept = np.where(keep, labels, 0).astype(labels.dtype)
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
