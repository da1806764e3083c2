"""A one-sided bone model (e.g. the bundled femur, trained on the right side) on a whole CT: per-side prediction,
per-side clean-up, a plausibility check, and whole-CT scores per side.

The body is cut at a sagittal midline (LPS x). The side the model was trained on (card ``trained_side``) is predicted
on the CT as it is; the other side on the CT mirrored left-right (the array flipped along i, as the held-out crops
are mirrored in ``femur_data``), flipped back. Each side keeps only its largest connected component, so a femur
cannot grow into the pelvis of the other side or into the other femur. A card without ``trained_side`` keeps the
old behaviour: one prediction, the largest component of the whole volume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .metrics import largest_component

SIDES = ("left", "right")
# Plausible volume of ONE proximal femur as a pelvis CT holds it (ml); the sample CT's are 118 and 121 ml.
PLAUSIBLE_FEMUR_ML = (20.0, 400.0)
BODY_HU = -300.0  # voxels at or above this are "body" for the unlabelled midline


def x_of_voxels(image) -> np.ndarray:
    """LPS x (mm) of every voxel centre, float32 ``[k, j, i]`` (a sum of three broadcast axes; no index grid)."""
    size_i, size_j, size_k = image.GetSize()
    row = np.array(image.GetDirection()).reshape(3, 3)[0] * np.array(image.GetSpacing())
    return (np.float32(image.GetOrigin()[0]) + (row[0] * np.arange(size_i, dtype=np.float32))[None, None, :]
            + (row[1] * np.arange(size_j, dtype=np.float32))[None, :, None]
            + (row[2] * np.arange(size_k, dtype=np.float32))[:, None, None]).astype(np.float32)


def body_midline_x(ct_image) -> float:
    """LPS x (mm) of the centroid of the body (voxels >= BODY_HU): the midline of an unlabelled CT."""
    import SimpleITK as sitk

    body = sitk.GetArrayFromImage(ct_image) >= BODY_HU
    if not body.any():
        return float(np.mean(x_of_voxels(ct_image)))
    return float(x_of_voxels(ct_image)[body].mean())


def side_of_voxels(x: np.ndarray, midline_x: float) -> dict[str, np.ndarray]:
    """Boolean masks of the patient's left (LPS +x) and right half."""
    return {"left": x >= midline_x, "right": x < midline_x}


def trained_side(card: dict[str, Any]) -> str | None:
    side = card.get("trained_side")
    return side if side in SIDES else None


def predict_sides(model, ct_image, midline_x: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Binary mask on the CT grid and what was done (midline, per-side volumes in ml)."""
    from .ct_segment import probability_on_grid

    side = trained_side(model.card)
    voxel_ml = float(np.prod(ct_image.GetSpacing())) / 1000
    if side is None:
        mask = largest_component(probability_on_grid(model, ct_image) >= 0.5)
        return mask, {"postprocess": "largest component of the whole volume",
                      "volume_ml": round(float(mask.sum()) * voxel_ml, 3)}
    midline = body_midline_x(ct_image) if midline_x is None else float(midline_x)
    halves = side_of_voxels(x_of_voxels(ct_image), midline)
    as_is = probability_on_grid(model, ct_image) >= 0.5
    mirrored = probability_on_grid(model, ct_image, mirrored=True) >= 0.5
    mask = np.zeros(as_is.shape, bool)
    volumes = {}
    for name in SIDES:
        piece = largest_component((as_is if name == side else mirrored) & halves[name])
        volumes[name] = round(float(piece.sum()) * voxel_ml, 3)
        mask |= piece
    return mask, {"postprocess": f"per side (midline x {midline:.1f} mm LPS): the {side} side as it is, the other "
                                 "mirrored; largest component per side",
                  "midline_x_mm": round(midline, 2), "volume_ml_per_side": volumes,
                  "volume_ml": round(float(mask.sum()) * voxel_ml, 3)}


def implausible(info: dict[str, Any]) -> str | None:
    """One line saying why the output volume is not that of a proximal femur (per side, or two in all), or None."""
    low, high = PLAUSIBLE_FEMUR_ML
    per_side = info.get("volume_ml_per_side")
    if per_side:
        bad = {s: v for s, v in per_side.items() if not low <= v <= high}
        if bad:
            return ("implausible femur volume " + ", ".join(f"{s} {v:.0f} ml" for s, v in bad.items())
                    + f" (a proximal femur is {low:g}-{high:g} ml); check the labels before using them")
        return None
    if not low <= info["volume_ml"] <= 2 * high:
        return (f"implausible femur volume {info['volume_ml']:.0f} ml (one or two proximal femurs are {low:g}-"
                f"{2 * high:g} ml); this model was trained on femur crops, not whole CTs: check the labels")
    return None


def score_whole_ct(model, ct_path: str | Path, labels_path: str | Path, names: dict[int, str],
                   hd95: bool = True) -> dict[str, Any]:
    """Per side: the prediction in that half against the reference femur of that side, on the CT grid (scores as
    ``volume_metrics.score_case``), with the midline of the labels (midpoint of the two femur centroids)."""
    import SimpleITK as sitk

    from .ct_data import read_image
    from .femur_data import FEMUR_NAMES
    from .volume_metrics import score_case

    ct_image, labels = read_image(ct_path), sitk.GetArrayFromImage(read_image(labels_path))
    value_of = {n: v for v, n in names.items()}
    x = x_of_voxels(ct_image)
    femurs = {side: labels == value_of[name] for side, name in FEMUR_NAMES.items()}
    midline = float(np.mean([x[f].mean() for f in femurs.values()]))
    mask, info = predict_sides(model, ct_image, midline)
    halves = side_of_voxels(x, midline)
    spacing = tuple(reversed(ct_image.GetSpacing()))
    sides = {side: score_case(mask & halves[side], femurs[side], spacing, hd95=hd95).as_dict() for side in SIDES}
    return {"ct": Path(ct_path).name, "midline_x_mm": round(midline, 2), "postprocess": info["postprocess"],
            "volume_pred_ml_total": info["volume_ml"], "sides": sides}
