"""The README figure of the label transfer: chest-full-ct-labelled (the bone labels of chest-ct moved onto
chest-full-ct), a sagittal slice through the spine, a coronal and an axial slice, with the sdist's T12 mask
outlined in red. Usage: ``python tools/label-transfer/figure.py OUT.png`` (builds the sample on first use)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def overlay(ct: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """CT in a bone window, labels half-transparent in fixed colours, reference outline in red; superior up."""
    colours = np.random.default_rng(0).integers(60, 255, (256, 3))
    gray = np.clip((ct + 300.0) / 1500.0, 0, 1)[..., None] * 255
    rgb = np.where(labels[..., None] > 0, 0.5 * gray + 0.5 * colours[labels], gray)
    edge = (reference ^ np.roll(reference, 1, 0)) | (reference ^ np.roll(reference, 1, 1))
    rgb[edge] = (255, 0, 0)
    return rgb.astype(np.uint8)


def main(out: Path) -> None:
    import SimpleITK as sitk
    from PIL import Image

    from XraySegSimLib.sample_data import fetch_sample

    paths = fetch_sample("chest-full-ct-labelled", progress=print)
    image = sitk.ReadImage(str(paths["ct"]))
    ct = sitk.GetArrayFromImage(image).astype(np.float32)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["labels"])))
    reference = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(paths["t12_reference"])), image,
                                                     sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    k, j, i = (int(round(c.mean())) for c in np.nonzero(reference))
    views = [overlay(ct[:, :, i], labels[:, :, i], reference[:, :, i])[::-1],  # sagittal, superior up
             overlay(ct[:, j, :], labels[:, j, :], reference[:, j, :])[::-1],  # coronal
             overlay(ct[100], labels[100], reference[100])]  # axial at the heart
    height = max(v.shape[0] for v in views)
    canvas = np.zeros((height, sum(v.shape[1] for v in views) + 10 * (len(views) - 1), 3), np.uint8)
    x = 0
    for view in views:
        canvas[:view.shape[0], x:x + view.shape[1]] = view
        x += view.shape[1] + 10
    Image.fromarray(canvas).save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
