"""Pictures of a DRR and its projected labels (8-bit display, colour overlay with outlines)."""

from __future__ import annotations

import numpy as np

from .labels import LabelClasses


def display_range(line_integral: np.ndarray, low_percentile: float = 0.5,
                  high_percentile: float = 99.5) -> tuple[float, float] | None:
    """Radiograph window of a line-integral image: the given percentiles of the rays that cross the body
    (None if no ray does)."""
    body = line_integral[line_integral > 1e-3]
    if body.size == 0:
        return None
    low, high = np.percentile(body, [low_percentile, high_percentile])
    return float(low), float(max(high, low + 1e-6))


def drr_to_uint8(line_integral: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5) -> np.ndarray:
    """Radiograph-style display (MONOCHROME2: dense = bright) of a line-integral image.

    The window spans the given percentiles of the pixels whose rays cross the body, so air around the
    patient is black and bone is bright, as on a processed clinical radiograph.
    """
    window = display_range(line_integral, low_percentile, high_percentile)
    if window is None:
        return np.zeros(line_integral.shape, np.uint8)
    low, high = window
    scaled = (line_integral - low) / (high - low)
    return (np.clip(scaled, 0, 1) * 255).round().astype(np.uint8)


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` that touch a non-mask pixel (4-neighbourhood)."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def overlay_rgb(
    gray: np.ndarray, masks: np.ndarray, label_image: np.ndarray, classes: LabelClasses, fill_alpha: float = 0.35
) -> np.ndarray:
    """RGB picture: the gray DRR, each pixel tinted by its single-label class, and every class's own outline
    drawn on top, so overlapping bones (each keeps its mask) stay visible."""
    rgb = np.repeat(gray[..., None].astype(np.float32), 3, axis=-1)
    colors = np.array([c.color for c in classes.classes] or [(0, 0, 0)], np.float32) * 255
    labelled = label_image > 0
    tint = colors[np.maximum(label_image.astype(np.int64) - 1, 0)]
    rgb[labelled] = (1 - fill_alpha) * rgb[labelled] + fill_alpha * tint[labelled]
    for index in range(masks.shape[0]):
        rgb[mask_outline(masks[index])] = colors[index]
    return rgb.clip(0, 255).astype(np.uint8)


def labels_rgb(label_image: np.ndarray, classes: LabelClasses) -> np.ndarray:
    """Colour picture of the single-label image on black."""
    colors = np.vstack([[0, 0, 0], np.array([c.color for c in classes.classes] or np.zeros((0, 3))) * 255])
    return colors[label_image.astype(np.int64)].astype(np.uint8)
