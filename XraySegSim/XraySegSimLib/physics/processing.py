"""Clinical processing: unsharp masking, the VOI window and THE shared normalisation of radiographs
(``normalize_radiograph``, for simulated and real images alike)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import PhysicsError, _check_range, _check_photometric
from .filters import smooth_at_low_resolution


@dataclass(frozen=True)
class ProcessingParams:
    """Clinical processing: unsharp masking (amount, sigma mm; amount 0 = off), VOI window (percentiles of the
    log image, or centre/width in log units), gamma of the display curve, photometric interpretation."""

    unsharp_amount: float = 0.0
    unsharp_sigma_mm: float = 10.0
    window_percentiles: tuple[float, float] = (0.5, 99.5)
    window_center_width: tuple[float, float] | None = None
    gamma: float = 1.0
    photometric: str = "MONOCHROME2"

    def __post_init__(self) -> None:
        _check_range("unsharp amount", self.unsharp_amount, 0.0, 10.0)
        _check_range("unsharp sigma", self.unsharp_sigma_mm, 0.5, 200.0, " mm")
        low, high = self.window_percentiles
        if not 0.0 <= low < high <= 100.0:
            raise PhysicsError(f"window percentiles {self.window_percentiles} must satisfy 0 <= low < high <= 100")
        if self.window_center_width is not None and not self.window_center_width[1] > 0:
            raise PhysicsError(f"window width {self.window_center_width[1]} must be > 0")
        _check_range("gamma", self.gamma, 0.1, 10.0)
        _check_photometric(self.photometric)


def normalize_radiograph(image: np.ndarray, photometric: str = "MONOCHROME2",
                         window_percentiles: tuple[float, float] = (0.5, 99.5),
                         window_center_width: tuple[float, float] | None = None, gamma: float = 1.0,
                         output_photometric: str = "MONOCHROME2", mask: np.ndarray | None = None) -> np.ndarray:
    """THE normalisation of a radiograph, used for simulated training images and real radiographs alike.

    ``image``: log-domain or processed pixel values (``photometric`` says whether dense is bright, MONOCHROME2,
    or dark, MONOCHROME1, as in DICOM tag (0028,0004)). It is flipped to MONOCHROME2, windowed (centre/width in
    the image's units, or the given percentiles of ``mask`` pixels, default all; percentiles make it robust to
    dose, detector gain and vendor processing), raised to ``gamma`` and returned as float32 in [0, 1], in
    ``output_photometric``."""
    _check_photometric(photometric)
    _check_photometric(output_photometric)
    data = np.asarray(image, np.float32)
    if photometric == "MONOCHROME1":
        data = -data
    if window_center_width is not None:
        center, width = window_center_width
        if photometric == "MONOCHROME1":
            center = -center
        low, high = center - width / 2.0, center + width / 2.0
    else:
        low, high = percentile_window(data, window_percentiles, mask)
    out = np.clip((data - low) / max(float(high - low), 1e-12), 0.0, 1.0)
    if gamma != 1.0:
        out = out ** gamma
    if output_photometric == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)


def percentile_window(image: np.ndarray, percentiles: tuple[float, float],
                      mask: np.ndarray | None = None) -> tuple[float, float]:
    """(low, high) percentiles of the ``mask`` pixels (all if None), from a regular subsample of <= 65536."""
    values = image[mask] if mask is not None else np.asarray(image).ravel()
    step = max(1, values.size // 65536)
    low, high = np.percentile(values[::step], percentiles)
    return float(low), float(high)


def unsharp_mask(image: np.ndarray, amount: float, sigma_mm: float, spacing_mm: tuple[float, float]) -> np.ndarray:
    """``image + amount * (image - blur(image))``: edge enhancement and latitude compression as in CR/DX
    processing (e.g. Prokop et al. 2003, Eur. Radiol. 13:2345, multiscale processing)."""
    if amount <= 0:
        return image
    return image + amount * (image - smooth_at_low_resolution(image, sigma_mm, spacing_mm))


ANATOMY_MIN_G_CM2 = 0.5  # pixels behind more than this are anatomy; the rest is direct exposure (air)


def _process(log_image: np.ndarray, processing: ProcessingParams, spacing: tuple[float, float],
             anatomy: np.ndarray | None = None) -> np.ndarray:
    """Unsharp masking, then the shared VOI normalisation, in the requested photometric interpretation.

    Percentile windows come from the histogram of the log image over the anatomy only, as clinical
    exposure-field recognition does (direct exposure is left out, so it clips to black), and are then applied
    to the enhanced image (so unsharp-masking overshoots do not move the window)."""
    window = processing.window_center_width
    if window is None:
        low, high = percentile_window(log_image, processing.window_percentiles, anatomy)
        window = ((low + high) / 2.0, max(high - low, 1e-6))
    enhanced = unsharp_mask(log_image, processing.unsharp_amount, processing.unsharp_sigma_mm, spacing)
    return normalize_radiograph(enhanced, "MONOCHROME2", window_center_width=window, gamma=processing.gamma,
                                output_photometric=processing.photometric)
