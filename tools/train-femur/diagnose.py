"""What limits the femur folds' held-out Dice: cheap diagnostics on the crops `make train-femur` writes (README,
"Proximal femur in CT"). Run after `make train-femur` (it reads OUT/data-ct-left and OUT/data-ct-right):

    .venv/bin/python tools/train-femur/diagnose.py [--out out/train-femur]

Per fold, on the 3 mm grid of the crops:
- shape ceiling: the training femur's label moved onto the held-out one, by the best integer translation (brute
  force) and then rigidly (SimpleITK, mean squares of the labels smoothed by 3 mm, started from that translation);
- a plain HU threshold (150-400 HU) with holes filled and the largest component;
- resampling: the held-out label taken to 2 / 1.5 mm (nearest neighbour; linear and >= 0.5) and back;
- label resolution: the held-out label against itself shifted by one voxel and eroded / dilated by one voxel.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FOLDS = {"right": ("Dataset712_ProximalFemur", "body0_right", "body0_left_mirrored"),
         "left": ("Dataset711_ProximalFemur", "body0_left", "body0_right_mirrored")}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(2 * (a & b).sum() / (a.sum() + b.sum())), 4)


def _index_image(path: Path):
    """The label's array on an identity 3 mm grid (index space), so that both crops share one frame."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    image.SetSpacing((3.0, 3.0, 3.0))
    return image


def shape_ceiling(train_label: Path, test_label: Path) -> dict:
    import SimpleITK as sitk

    from XraySegInferLib.volume_metrics import score_case

    moving, fixed = _index_image(train_label), _index_image(test_label)
    a, b = sitk.GetArrayFromImage(moving) > 0, sitk.GetArrayFromImage(fixed) > 0
    points = np.argwhere(a)
    base = np.round(np.argwhere(b).mean(0) - points.mean(0)).astype(int)
    best = (-1.0, base)
    for delta in itertools.product(range(-4, 5), range(-8, 9), range(-8, 9)):
        moved = points + base + delta
        inside = (moved >= 0).all(1) & (moved < b.shape).all(1)
        warped = np.zeros(b.shape, bool)
        warped[tuple(moved[inside].T)] = True
        best = max(best, (_dice(warped, b), base + delta), key=lambda x: x[0])
    start = sitk.Euler3DTransform()
    start.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in np.argwhere(b).mean(0)[::-1])))
    start.SetTranslation(tuple(float(-3 * v) for v in best[1][::-1]))  # fixed point -> moving point, mm
    smooth = [sitk.SmoothingRecursiveGaussian(sitk.Cast(x, sitk.sitkFloat32), 3.0) for x in (fixed, moving)]
    registration = sitk.ImageRegistrationMethod()
    registration.SetMetricAsMeanSquares()
    registration.SetInterpolator(sitk.sitkLinear)
    registration.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-4, 500)
    registration.SetOptimizerScalesFromPhysicalShift()
    registration.SetInitialTransform(start, inPlace=False)
    transform = registration.Execute(*smooth)
    rigid = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(moving, sitk.sitkFloat32), fixed, transform,
                                                 sitk.sitkLinear, 0.0)) >= 0.5
    return {"translation_dice": best[0],
            "rigid": {k: round(v, 4) for k, v in score_case(rigid, b, (3.0, 3.0, 3.0)).as_dict().items()}}


def threshold_baseline(ct: Path, label: Path) -> dict:
    import SimpleITK as sitk
    from scipy import ndimage

    from XraySegInferLib.metrics import largest_component

    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(ct)))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(label))) > 0
    return {f"{t}_hu": _dice(largest_component(ndimage.binary_fill_holes(hu > t)), ref) for t in (150, 200, 250, 300, 400)}


def resampling_and_resolution(label: Path) -> dict:
    import SimpleITK as sitk
    from scipy import ndimage

    image = sitk.ReadImage(str(label))
    ref = sitk.GetArrayFromImage(image) > 0
    out = {}
    for spacing in (2.0, 1.5):
        size = [int(round(n * image.GetSpacing()[0] / spacing)) for n in image.GetSize()]
        there = sitk.Resample(image, size, sitk.Transform(), sitk.sitkNearestNeighbor, image.GetOrigin(),
                              (spacing,) * 3, image.GetDirection(), 0, image.GetPixelID())
        back = sitk.GetArrayFromImage(sitk.Resample(there, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
        smooth = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), there, sitk.Transform(), sitk.sitkLinear, 0.0)
        smooth_back = sitk.GetArrayFromImage(sitk.Resample(smooth, image, sitk.Transform(), sitk.sitkLinear, 0.0)) >= 0.5
        out[f"{spacing:g}mm_and_back"] = {"nearest": _dice(back, ref), "linear": _dice(smooth_back, ref)}
    eroded = ndimage.binary_erosion(ref)
    out["surface_voxel_share"] = round(float(1 - eroded.sum() / ref.sum()), 3)
    out["shifted_one_voxel"] = _dice(np.roll(ref, 1, axis=2), ref)
    out["eroded_one_voxel"] = _dice(eroded, ref)
    out["dilated_one_voxel"] = _dice(ndimage.binary_dilation(ref), ref)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "train-femur")
    args = parser.parse_args()
    report = {}
    for fold, (dataset, train, test) in FOLDS.items():
        root = args.out / f"data-ct-{fold}" / dataset
        if not (root / "dataset.json").exists():
            print(f"{root} is missing; run make train-femur first", file=sys.stderr)
            return 2
        test_label = root / "labelsTs" / f"{test}.nii.gz"
        report[fold] = {"shape_ceiling": shape_ceiling(root / "labelsTr" / f"{train}.nii.gz", test_label),
                        "threshold_largest_component": threshold_baseline(root / "imagesTs" / f"{test}_0000.nii.gz",
                                                                          test_label),
                        "held_out_label": resampling_and_resolution(test_label)}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(REPO / "XraySegInfer"), str(REPO / "XraySegSim")]
    sys.exit(main())
