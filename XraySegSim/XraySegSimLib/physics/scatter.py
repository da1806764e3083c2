"""Scatter: a scatter-to-primary ratio growing with the water-equivalent thickness, spread by a broad kernel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import _check_range
from .detector import GridParams
from .filters import smooth_at_low_resolution


# Published scatter-to-primary ratio for ~20 cm of water, 30 x 30 cm field, no grid, no air gap, 60-120 kVp:
# about 2 to 5 (scatter fraction 0.67-0.83): Chan & Doi 1985 (Med. Phys. 12:152), Boone & Seibert 1988
# (Med. Phys. 15:721), Sandborg et al. 1993. The default model is fitted to the middle of that range.
PUBLISHED_SPR_20CM_WATER = (2.0, 5.0)


@dataclass(frozen=True)
class ScatterParams:
    """Kernel scatter model: SPR(t) = (1 + spr_at_20cm)^(t / 20 cm) - 1 of the water-equivalent thickness t
    (exponential build-up, fitted to the published SPR at 20 cm), spread by a normalised Gaussian kernel."""

    enabled: bool = True
    spr_at_20cm: float = 3.5
    kernel_sigma_mm: float = 40.0
    grid: GridParams | None = None

    def __post_init__(self) -> None:
        _check_range("SPR at 20 cm water", self.spr_at_20cm, 0.0, 20.0)
        _check_range("scatter kernel sigma", self.kernel_sigma_mm, 1.0, 500.0, " mm")


def scatter_to_primary_ratio(water_equivalent_cm: np.ndarray, spr_at_20cm: float = 3.5) -> np.ndarray:
    """SPR without grid for a water-equivalent thickness t (cm): ``(1 + SPR20)^(t/20) - 1``.

    Exponential build-up (0 at t = 0), anchored to the published ~20 cm water value (``PUBLISHED_SPR_20CM_WATER``:
    SPR 2-5; the default 3.5 gives scatter fraction 0.78, 10 cm -> 1.1, 30 cm -> 8.5, in line with the scatter
    fractions ~0.5 at 10 cm and ~0.9 at 30 cm of Chan & Doi 1985)."""
    return np.power(1.0 + spr_at_20cm, np.asarray(water_equivalent_cm, np.float32) / 20.0) - 1.0


def scatter_image(primary: np.ndarray, water_equivalent_cm: np.ndarray, params: ScatterParams,
                  spacing_mm: tuple[float, float]) -> np.ndarray:
    """Scatter signal (same units as ``primary``, before the grid): ``G * (SPR(t) * primary)``."""
    source = primary * scatter_to_primary_ratio(water_equivalent_cm, params.spr_at_20cm)
    return smooth_at_low_resolution(source, params.kernel_sigma_mm, spacing_mm)
