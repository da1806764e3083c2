"""Contrast suppression: a virtual non-contrast CT for simulating plain radiographs (issue 10).

Most CTs that come with bone labels (TotalSegmentator's, both chest samples here) are contrast-enhanced: the heart,
the aorta and the great veins hold iodinated blood at 250-450 HU (the sample CT's superior vena cava 1,260 HU), and
the kidneys and spleen enhance too. A plain radiograph has no contrast, so in a DRR of such a CT the mediastinum is as dense
as bone (the sample CT's heart: median 331 HU against ~40 HU for blood without contrast). Suppression sets the
enhanced blood and organ voxels to ``blood_hu``.

What is suppressed: voxels above ``enhanced_hu`` reached from a voxel of a blood-pool or enhancing-organ label
(``ENHANCING`` names: heart, vessels, kidneys, spleen, liver...) by a path of such voxels (26-neighbourhood) no
longer than ``follow_mm``, and not within ``protect_mm`` of any other label (bones keep every voxel). The path
follows what the labels miss: a registered organ label a few mm off, and veins that no label names (the sample
CT's injected arm vein holds 2,300 HU). A CT whose label map names no such structure is left as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

# TotalSegmentator names of blood pools and of organs that enhance with iodine (v1 and v2 tables).
ENHANCING = re.compile(r"heart|aorta|arter|vein|vena_cava|atrial_appendage|brachiocephalic|myocardium|ventricle|"
                       r"atrium|kidney|spleen|liver|pancrea|adrenal")
NOT_ENHANCING = re.compile(r"cyst")  # kidney cysts do not enhance; they are water


@dataclass(frozen=True)
class ContrastSettings:
    """Thresholds of the suppression (see the module docstring)."""

    enhanced_hu: float = 120.0
    blood_hu: float = 40.0
    follow_mm: float = 100.0
    protect_mm: float = 1.5


def enhancing_values(names: Mapping[int, str]) -> list[int]:
    """Label values whose names are blood pools or enhancing organs."""
    return sorted(int(v) for v, n in names.items()
                  if ENHANCING.search(n.lower()) and not NOT_ENHANCING.search(n.lower()))


def _within_mm(mask: np.ndarray, spacing_ijk: Iterable[float], distance_mm: float) -> np.ndarray:
    """Voxels no farther than ``distance_mm`` from ``mask`` (Euclidean, in mm)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing([float(s) for s in spacing_ijk])
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)
    return sitk.GetArrayViewFromImage(distance) <= distance_mm


def contrast_mask(hu: np.ndarray, labels: np.ndarray, names: Mapping[int, str], spacing_ijk: Iterable[float],
                  settings: ContrastSettings = ContrastSettings()) -> np.ndarray:
    """Boolean ``[k, j, i]`` mask of the contrast-enhanced voxels to suppress (all False when none is named)."""
    from scipy import ndimage

    spacing = [float(s) for s in spacing_ijk]
    values = enhancing_values(names)
    enhancing = np.isin(labels, values) if values else np.zeros(labels.shape, bool)
    if not enhancing.any():
        return np.zeros(hu.shape, bool)
    other = (labels > 0) & ~enhancing
    candidate = hu > settings.enhanced_hu
    if other.any():
        candidate &= ~_within_mm(other, spacing, settings.protect_mm)
    seeds = candidate & enhancing
    if not seeds.any():
        return np.zeros(hu.shape, bool)
    # geodesic dilation: each step moves at most one voxel per axis, so the steps count the finest spacing
    steps = max(1, int(np.ceil(settings.follow_mm / min(spacing))))
    return ndimage.binary_dilation(seeds, np.ones((3, 3, 3), bool), iterations=steps, mask=candidate)


def suppress_contrast(hu: np.ndarray, labels: np.ndarray, names: Mapping[int, str], spacing_ijk: Iterable[float],
                      settings: ContrastSettings = ContrastSettings()) -> tuple[np.ndarray, dict]:
    """(HU with the enhanced voxels set to ``blood_hu``, report). The input array is not changed.

    The report: ``suppressed_ml`` (volume set to blood), ``median_hu_before`` of those voxels, and
    ``enhancing_labels`` (how many label values were used as seeds)."""
    mask = contrast_mask(hu, labels, names, spacing_ijk, settings)
    voxel_ml = float(np.prod([float(s) for s in spacing_ijk])) / 1000.0
    present = set(int(v) for v in np.unique(labels))
    report = {"suppressed_ml": round(float(mask.sum()) * voxel_ml, 1),
              "median_hu_before": round(float(np.median(hu[mask])), 1) if mask.any() else None,
              "enhancing_labels": len(set(enhancing_values(names)) & present),
              "blood_hu": settings.blood_hu}
    if not mask.any():
        return hu, report
    out = hu.copy()
    out[mask] = np.asarray(settings.blood_hu, dtype=out.dtype)
    return out, report
