"""Scores of a 3D CT segmentation against a reference, as the femur paper reports them.

Per case: Dice, sensitivity (recall), specificity, HD95 (mm, symmetric, surface voxels) and the two volumes (ml);
over cases: the coefficient of determination R^2 of the predicted volumes against the reference volumes.
Masks are boolean arrays on one grid; ``spacing_mm`` is the voxel size along each array axis.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass
class VolumeScores:
    """Scores of one case (one mask pair)."""

    dice: float
    sensitivity: float
    specificity: float
    hd95_mm: float
    volume_pred_ml: float
    volume_ref_ml: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 6) if math.isfinite(v) else v for k, v in asdict(self).items()}


def _counts(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int, int]:
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} are not on one grid")
    tp = int(np.count_nonzero(pred & ref))
    fp = int(np.count_nonzero(pred & ~ref))
    fn = int(np.count_nonzero(~pred & ref))
    tn = pred.size - tp - fp - fn
    return tp, fp, fn, tn


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a 6-neighbour in the background (the grid border counts as background)."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95_mm(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """95th percentile of the symmetric surface distances (mm); inf if one mask is empty, 0 if both are."""
    from scipy import ndimage

    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if not pred.any() and not ref.any():
        return 0.0
    if not pred.any() or not ref.any():
        return math.inf
    pred_surface, ref_surface = _surface(pred), _surface(ref)
    # Distance of every voxel to the nearest surface voxel of the other mask, in mm.
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing_mm)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing_mm)
    distances = np.concatenate([to_ref[pred_surface], to_pred[ref_surface]])
    return float(np.percentile(distances, 95))


def score_case(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float], hd95: bool = True) -> VolumeScores:
    """Dice, sensitivity, specificity, HD95 and volumes of one case."""
    tp, fp, fn, tn = _counts(pred, ref)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    dice = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    sensitivity = tp / (tp + fn) if (tp + fn) else math.nan
    specificity = tn / (tn + fp) if (tn + fp) else math.nan
    return VolumeScores(
        dice=dice, sensitivity=sensitivity, specificity=specificity,
        hd95_mm=hd95_mm(pred, ref, spacing_mm) if hd95 else math.nan,
        volume_pred_ml=(tp + fp) * voxel_ml, volume_ref_ml=(tp + fn) * voxel_ml,
    )


def volume_r2(predicted_ml: Sequence[float], reference_ml: Sequence[float]) -> float:
    """Coefficient of determination of predicted against reference volumes: 1 - SS_res / SS_tot.

    This is the R^2 of the identity line (prediction = reference), not of a fitted regression, so a constant bias
    lowers it. Needs at least two cases with different reference volumes; NaN otherwise.
    """
    predicted, reference = np.asarray(predicted_ml, float), np.asarray(reference_ml, float)
    if predicted.shape != reference.shape or predicted.size < 2:
        return math.nan
    total = float(np.sum((reference - reference.mean()) ** 2))
    if total == 0.0:
        return math.nan
    return 1.0 - float(np.sum((reference - predicted) ** 2)) / total


def summarise(cases: dict[str, VolumeScores]) -> dict[str, float]:
    """Means over cases of Dice, sensitivity, specificity and HD95, plus the volume R^2 over cases."""
    scores = list(cases.values())

    def mean(field: str) -> float:
        values = [getattr(s, field) for s in scores if math.isfinite(getattr(s, field))]
        return round(float(np.mean(values)), 6) if values else math.nan

    return {
        "cases": len(scores), "dice": mean("dice"), "sensitivity": mean("sensitivity"),
        "specificity": mean("specificity"), "hd95_mm": mean("hd95_mm"),
        "volume_r2": volume_r2([s.volume_pred_ml for s in scores], [s.volume_ref_ml for s in scores]),
    }
