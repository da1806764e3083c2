"""Landmarks of a PA chest radiograph found from the image alone, for the plausibility rules (plausibility.py).

The two lung fields are the two largest dark regions inside the body (Otsu threshold of the smoothed, normalised
MONOCHROME2 image, after removing the air outside the body); the thorax width is the distance between their
lateral borders, the midline lies half-way, and the heart region is the mediastinal gap between their medial
borders over the lower half of the lung height. On a PA view the patient's right is on the image LEFT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ChestLandmarks:
    """Image landmarks of a PA chest (pixel coordinates, row/column of the image as given)."""

    lung_image_left: np.ndarray  # bool (H, W): the lung field on the image's left (patient's right on a PA)
    lung_image_right: np.ndarray
    heart: np.ndarray  # bool (H, W): mediastinal gap between the lungs over the lower half of the lung height
    midline_col: float
    thorax_width_px: float
    lung_top_row: float
    lung_bottom_row: float

    @property
    def lung_height_px(self) -> float:
        return self.lung_bottom_row - self.lung_top_row


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, 256)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(float)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    return float(centers[np.argmax(w0 * w1 * (mu0 - mu1) ** 2)])


# Landmarks are found on an image of at most this many pixels on its longer side (a 2k CR in seconds, not minutes);
# the lung fields are tens of centimetres wide, so ~1 mm pixels lose nothing the rules use.
LANDMARK_SIZE = 512


def chest_landmarks(normalized: np.ndarray) -> ChestLandmarks | None:
    """Lung fields, midline, thorax width and heart region of a normalised [0, 1] MONOCHROME2 PA chest
    (dense = bright); None when two lung fields cannot be found. Coordinates are those of ``normalized``."""
    image = np.asarray(normalized, np.float32)
    factor = int(np.ceil(max(image.shape) / LANDMARK_SIZE))
    if factor <= 1:
        return _landmarks(image)
    rows, cols = image.shape
    padded = np.pad(image, ((0, (-rows) % factor), (0, (-cols) % factor)), mode="edge")
    small = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).mean((1, 3))
    found = _landmarks(small)
    if found is None:
        return None

    def up(mask: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(mask, factor, 0), factor, 1)[:rows, :cols]

    def scale(value: float) -> float:  # centre of a block of pixels in the full image
        return value * factor + (factor - 1) / 2

    return ChestLandmarks(up(found.lung_image_left), up(found.lung_image_right), up(found.heart),
                          scale(found.midline_col), found.thorax_width_px * factor, scale(found.lung_top_row),
                          scale(found.lung_bottom_row))


def _landmarks(image: np.ndarray) -> ChestLandmarks | None:
    from scipy import ndimage

    rows, cols = image.shape
    size = max(rows, cols)
    smooth = ndimage.gaussian_filter(image, 0.01 * size)
    radius = max(1, int(round(0.015 * size)))
    disk = np.ones((2 * radius + 1, 2 * radius + 1), bool)
    centre = smooth[int(0.1 * rows): int(0.9 * rows), int(0.1 * cols): int(0.9 * cols)]
    # Air outside the body (and black collimation or the end of a CT): very dark and touching the border.
    very_dark, _ = ndimage.label(smooth < 0.5 * _otsu(centre.ravel()))
    border = np.unique(np.r_[very_dark[0], very_dark[-1], very_dark[:, 0], very_dark[:, -1]])
    outside = ndimage.binary_dilation(np.isin(very_dark, border[border > 0]), disk, iterations=2)
    body = ~outside
    if body.sum() < 0.1 * image.size:
        return None
    lungs = _lung_pair(smooth, body, disk)
    if lungs is None:
        return None
    left, right = lungs
    lcols, rcols = np.nonzero(left)[1], np.nonzero(right)[1]
    outer_left, outer_right = float(lcols.min()), float(rcols.max())
    lung_rows = np.nonzero(left | right)[0]
    top, bottom = float(lung_rows.min()), float(lung_rows.max())
    heart = np.zeros_like(body)
    medial_left = [np.nonzero(left[r])[0].max() for r in range(rows) if left[r].any()]
    medial_right = [np.nonzero(right[r])[0].min() for r in range(rows) if right[r].any()]
    last_l, last_r = np.median(medial_left), np.median(medial_right)
    # The heart's rows: the lower half of the lung height without the costophrenic recesses, which reach below
    # the diaphragm's dome on the sides.
    for r in range(int(top + 0.5 * (bottom - top)), int(top + 0.85 * (bottom - top)) + 1):
        # Where a lung has ended (its base is higher than the other's), keep its last medial border.
        last_l = np.nonzero(left[r])[0].max() if left[r].any() else last_l
        last_r = np.nonzero(right[r])[0].min() if right[r].any() else last_r
        if last_r > last_l + 1:
            heart[r, int(last_l) + 1: int(last_r)] = True
    return ChestLandmarks(left, right, heart & body, 0.5 * (outer_left + outer_right), outer_right - outer_left,
                          top, bottom)


def _lung_pair(smooth: np.ndarray, body: np.ndarray, disk: np.ndarray) -> list[np.ndarray] | None:
    """The two lung fields: over a sweep of thresholds (quantiles of the body's intensities), the dark regions
    that lie wholly on either side of the body's centre column; the pair with the largest smaller lung wins.
    A sweep, because one threshold either merges the lungs through a dark mediastinum or loses a dense lung."""
    from scipy import ndimage

    rows, cols = smooth.shape
    body_cols = np.nonzero(body[int(0.3 * rows): int(0.7 * rows)].any(0))[0]
    if body_cols.size == 0:
        return None
    centre = 0.5 * (body_cols.min() + body_cols.max())
    # Regions touching the air outside the body (its thin lateral edges) are not lungs.
    rim = ndimage.binary_dilation(~body, disk)
    best, best_size = None, 0.0
    values = smooth[body]
    for quantile in np.linspace(0.1, 0.6, 11):
        dark = ndimage.binary_opening((smooth < np.quantile(values, quantile)) & body, disk)
        labels, count = ndimage.label(dark)
        if count < 2:
            continue
        index = np.arange(1, count + 1)
        sizes = ndimage.sum(dark, labels, index)
        on_rim = ndimage.sum(rim, labels, index)
        sides = {}
        for size, i, touch in zip(sizes, index, on_rim):
            if size < 0.01 * smooth.size or touch > 0.05 * size:
                continue
            c = np.nonzero((labels == i).any(0))[0]
            side = "left" if c.max() < centre else ("right" if c.min() > centre else None)
            if side and size > sides.get(side, (0, 0))[0]:
                sides[side] = (size, i)
        if len(sides) == 2 and min(sides["left"][0], sides["right"][0]) > best_size:
            best_size = min(sides["left"][0], sides["right"][0])
            best = [labels == sides["left"][1], labels == sides["right"][1]]
    return best
