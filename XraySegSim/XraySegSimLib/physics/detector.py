"""Detector: energy-integrating scintillator response and the anti-scatter grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .attenuation import mass_attenuation
from .base import PhysicsError, _check_range, _check_non_negative


SCINTILLATORS = {"CsI": ("CsI", 4.51), "Gd2O2S": ("Gd2O2S", 7.34)}  # formula, bulk density g/cm^3


# Anti-scatter grid scatter transmission by grid ratio: approximate values from Monte Carlo grid studies
# (Sandborg, Dance, Carlsson & Persliden 1993, Br. J. Radiol. 66:1164; Chan & Doi 1985, Med. Phys. 12:152;
# summarised in Bushberg et al., The Essential Physics of Medical Imaging, 3rd ed., ch. 7): Tp ~ 0.6-0.75.
GRID_SCATTER_TRANSMISSION = ((5.0, 0.25), (6.0, 0.21), (8.0, 0.15), (10.0, 0.11), (12.0, 0.09), (16.0, 0.06))


@dataclass(frozen=True)
class DetectorParams:
    """Energy-integrating indirect flat panel: scintillator, thickness, packing fraction (CsI needles ~0.8,
    Gd2O2S powder screens ~0.5), PSF (Gaussian sigma, mm), Swank factor, electronic noise (std in mean air
    quanta)."""

    scintillator: str = "CsI"
    thickness_mm: float = 0.6
    packing_fraction: float = 0.8
    psf_sigma_mm: float = 0.15
    swank_factor: float = 1.0
    electronic_noise_quanta: float = 3.0

    def __post_init__(self) -> None:
        if self.scintillator not in SCINTILLATORS:
            raise PhysicsError(f"scintillator {self.scintillator!r} is unknown; use one of {sorted(SCINTILLATORS)}")
        _check_range("scintillator thickness", self.thickness_mm, 0.01, 5.0, " mm")
        _check_range("packing fraction", self.packing_fraction, 0.05, 1.0)
        _check_range("detector PSF sigma", self.psf_sigma_mm, 0.0, 10.0, " mm")
        _check_range("Swank factor", self.swank_factor, 0.05, 1.0)
        _check_non_negative("electronic noise", self.electronic_noise_quanta, " quanta")


@dataclass(frozen=True)
class GridParams:
    """Focused anti-scatter grid: primary transmission Tp and scatter transmission Ts (from the ratio if None)."""

    ratio: float = 10.0
    primary_transmission: float = 0.7
    scatter_transmission: float | None = None

    def __post_init__(self) -> None:
        _check_range("grid ratio", self.ratio, 4.0, 20.0)
        _check_range("grid primary transmission", self.primary_transmission, 0.3, 1.0)
        if self.scatter_transmission is not None:
            _check_range("grid scatter transmission", self.scatter_transmission, 0.0, 1.0)

    @property
    def scatter_fraction_transmitted(self) -> float:
        """Ts: given, or interpolated in ``GRID_SCATTER_TRANSMISSION`` by grid ratio."""
        if self.scatter_transmission is not None:
            return self.scatter_transmission
        ratios, values = np.array(GRID_SCATTER_TRANSMISSION).T
        return float(np.interp(self.ratio, ratios, values))


def detector_response(detector: DetectorParams, energies_kev: np.ndarray) -> np.ndarray:
    """Interacting fraction ``1 - exp(-mu t)`` of the scintillator (effective density = bulk x packing)."""
    formula, density = SCINTILLATORS[detector.scintillator]
    mu_per_cm = mass_attenuation(formula, energies_kev) * density * detector.packing_fraction
    return 1.0 - np.exp(-mu_per_cm * detector.thickness_mm * 0.1)
