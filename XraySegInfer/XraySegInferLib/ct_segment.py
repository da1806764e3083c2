"""Segment a CT with a 3D model package, and score a model on a 3D dataset's held-out cases.

The CT is resampled to the model's spacing, predicted with a Gaussian-weighted sliding window, and the probability
is resampled back onto the CT's own grid (linear) before the 0.5 threshold, so the labels lie exactly on the input
grid. Only the largest connected component is kept (a proximal femur is one piece; stray bone fragments of the
pelvis are the typical false positives); per side of the body for a one-sided model (``ct_sides``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .ct_data import load_case, normalise_hu, read_ct_dataset, read_image, resample
from .ct_package import CtModel
from .metrics import largest_component
from .volume_metrics import score_case, summarise


def probability_on_grid(model: CtModel, ct_image, mirrored: bool = False) -> np.ndarray:
    """Foreground probability ``[k, j, i]`` on the grid of the SimpleITK image ``ct_image`` (HU); ``mirrored``:
    predicted on the CT flipped left-right (array axis i) and flipped back."""
    import SimpleITK as sitk

    metal = model.metal_suppression
    working = resample(metal.apply_to_image(ct_image) if metal else ct_image, model.spacing_mm, False)
    array = normalise_hu(sitk.GetArrayFromImage(working).astype(np.float32))
    if mirrored:
        probability = model.probability(np.ascontiguousarray(array[:, :, ::-1]))[:, :, ::-1]
    else:
        probability = model.probability(array)
    prob_image = sitk.GetImageFromArray(np.ascontiguousarray(probability, dtype=np.float32))
    prob_image.CopyInformation(working)
    back = sitk.Resample(prob_image, ct_image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(back)


def predict_on_grid(model: CtModel, ct_image) -> np.ndarray:
    """Binary mask ``[k, j, i]`` on the grid of the SimpleITK image ``ct_image`` (HU), cleaned up as
    ``ct_sides.predict_sides`` says (per side for a one-sided model, else the largest component)."""
    from .ct_sides import predict_sides

    return predict_sides(model, ct_image)[0]


def segment_ct(ct_path: str | Path, model: CtModel, out_dir: str | Path) -> dict[str, Any]:
    """Write ``labels.nii.gz`` (on the CT grid) and ``segmentation.json`` into ``out_dir`` atomically."""
    import shutil
    import tempfile

    import SimpleITK as sitk
    from XraySegSimLib.io import write_json

    from .ct_sides import implausible, predict_sides

    ct_image = read_image(ct_path)
    mask, info = predict_sides(model, ct_image)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        label = sitk.GetImageFromArray(mask.astype(np.uint8))
        label.CopyInformation(ct_image)
        sitk.WriteImage(label, str(staging / "labels.nii.gz"), True)
        voxel_ml = float(np.prod(ct_image.GetSpacing())) / 1000
        summary = {"ct": str(ct_path), "model": model.card.get("name"), "structure": model.card.get("structure"),
                   "voxels": int(mask.sum()), "volume_ml": round(float(mask.sum()) * voxel_ml, 3),
                   "labels": {"0": "background", "1": model.card.get("structure")}, **info,
                   "warning": implausible(info) if model.card.get("structure") == "proximal_femur" else None,
                   "metal_suppression": _metal_report(model, ct_image)}
        write_json(staging / "segmentation.json", summary)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return summary


def _metal_report(model: CtModel, ct_image) -> dict[str, Any] | None:
    """The card's metal suppression and how many voxels of this CT it replaced (None: the model does not)."""
    import SimpleITK as sitk

    metal = model.metal_suppression
    if metal is None:
        return None
    return dict(metal.to_card(), voxels_above=int((sitk.GetArrayViewFromImage(ct_image) > metal.above_hu).sum()))


def evaluate_ct_dataset(dataset_dir: str | Path, model: CtModel, split: str = "test",
                        hd95: bool = True) -> dict[str, Any]:
    """Scores per case and their summary (Dice, sensitivity, specificity, HD95, volume R^2) at the model spacing."""
    dataset = read_ct_dataset(dataset_dir)
    cases = dataset.test if split == "test" else dataset.train
    per_case = {}
    for case in cases:
        if case.label is None:
            continue
        image, label = load_case(case, model.spacing_mm, model.metal_suppression)
        pred = largest_component(model.probability(image) >= 0.5)
        # Arrays are [k, j, i]; spacing is (x, y, z).
        per_case[case.case_id] = score_case(pred, label > 0, tuple(reversed(model.spacing_mm)), hd95=hd95)
    return {"split": split, "summary": summarise(per_case),
            "cases": {k: v.as_dict() for k, v in per_case.items()}}
