"""X-ray tube spectrum (spekpy), the point-source fluence on the detector and the anode heel effect."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .base import KVP_RANGE, ANODE_ANGLE_RANGE, REFERENCE_DISTANCE_CM, _check_range
from .detector import DetectorParams, detector_response


@dataclass(frozen=True)
class SpectrumParams:
    """X-ray tube: tungsten anode (spekpy), peak voltage, anode angle and added filtration.

    ``monoenergetic_kev`` replaces the tube by a single energy line (for tests and calibration)."""

    kvp: float = 80.0
    anode_angle_deg: float = 12.0
    filtration_mm_al: float = 2.5
    filtration_mm_cu: float = 0.0
    energy_bin_kev: float = 1.0
    monoenergetic_kev: float | None = None

    def __post_init__(self) -> None:
        _check_range("kVp", self.kvp, *KVP_RANGE, " kV")
        _check_range("anode angle", self.anode_angle_deg, *ANODE_ANGLE_RANGE, " deg")
        _check_range("Al filtration", self.filtration_mm_al, 0.0, 20.0, " mm")
        _check_range("Cu filtration", self.filtration_mm_cu, 0.0, 2.0, " mm")
        _check_range("energy bin", self.energy_bin_kev, 0.1, 5.0, " keV")
        if self.monoenergetic_kev is not None:
            _check_range("monoenergetic energy", self.monoenergetic_kev, 5.0, 500.0, " keV")


@dataclass(frozen=True)
class Spectrum:
    """Energy bin centres (keV) and photons per bin per cm^2 per mAs at 100 cm."""

    energies_kev: np.ndarray
    fluence: np.ndarray


@lru_cache(maxsize=64)
def _spek_model(params: SpectrumParams):
    """The spekpy model (expensive, ~0.2 s): kept so off-axis spectra (heel effect) are cheap."""
    import spekpy

    model = spekpy.Spek(kvp=params.kvp, th=params.anode_angle_deg, dk=params.energy_bin_kev)
    if params.filtration_mm_al > 0:
        model.filter("Al", params.filtration_mm_al)
    if params.filtration_mm_cu > 0:
        model.filter("Cu", params.filtration_mm_cu)
    return model


@lru_cache(maxsize=256)
def tube_spectrum(params: SpectrumParams, offset_cm: float = 0.0) -> Spectrum:
    """spekpy spectrum at 100 cm, ``offset_cm`` off-axis towards the cathode (negative: towards the anode)."""
    if params.monoenergetic_kev is not None:
        return Spectrum(np.array([params.monoenergetic_kev]), np.array([1e8]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # spekpy warns "zero emission" beyond the anode's heel: that is physics
        energies, per_kev = _spek_model(params).get_spectrum(x=offset_cm, z=REFERENCE_DISTANCE_CM)
    fluence = np.asarray(per_kev, np.float64) * params.energy_bin_kev
    keep = energies >= 5.0  # below 5 keV nothing leaves the tube housing and patient; xraydb edges get noisy
    return Spectrum(np.asarray(energies[keep], np.float64), fluence[keep])


def _ray_terms(geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source-to-pixel ray d(i, j) = d0 + a_i u + b_j v, as 1D terms: (a_i, b_j, d0)."""
    cols, rows = geometry.size
    a = np.arange(cols, dtype=np.float64) * geometry.spacing[0]
    b = np.arange(rows, dtype=np.float64) * geometry.spacing[1]
    return a, b, np.asarray(geometry.origin, np.float64) - np.asarray(geometry.source, np.float64)


def _ray_lengths(geometry) -> np.ndarray:
    """|d(i, j)| in mm for every pixel, from separable terms (no per-pixel 3-vectors)."""
    a, b, d0 = _ray_terms(geometry)
    u, v = np.asarray(geometry.column_axis), np.asarray(geometry.row_axis)
    along_u = a * a + 2.0 * a * float(d0 @ u)
    along_v = b * b + 2.0 * b * float(d0 @ v)
    r2 = float(d0 @ d0) + along_u[None, :] + along_v[:, None] + 2.0 * float(u @ v) * np.outer(b, a)
    return np.sqrt(r2)


def fluence_factor(geometry, inverse_square: bool = True, obliquity: bool = True) -> np.ndarray:
    """Per-pixel (reference distance / r)^2 * cos(theta): point-source fluence on a tilted pixel
    (cos theta = SDD / r for a flat detector, the obliquity of incidence)."""
    r_mm = _ray_lengths(geometry)
    reference_mm = REFERENCE_DISTANCE_CM * 10.0
    if inverse_square:
        factor = (reference_mm / r_mm) ** 2
    else:
        factor = np.full_like(r_mm, (reference_mm / geometry.source_to_detector_distance) ** 2)
    if obliquity:
        factor *= geometry.source_to_detector_distance / r_mm
    return factor


def _anode_offsets_mm(geometry, anode_side: str) -> np.ndarray:
    """Per-pixel offset (mm, detector plane) from the principal point towards the cathode."""
    a, b, d0 = _ray_terms(geometry)
    u, v = np.asarray(geometry.column_axis), np.asarray(geometry.row_axis)
    axis = v if anode_side in ("top", "bottom") else u
    towards_cathode = 1.0 if anode_side in ("top", "left") else -1.0  # anode at top: cathode along +row
    offset = float(d0 @ axis) + (a * float(u @ axis))[None, :] + (b * float(v @ axis))[:, None]
    return towards_cathode * offset


@lru_cache(maxsize=64)
def _heel_profile(spectrum: SpectrumParams, detector: DetectorParams) -> tuple[np.ndarray, np.ndarray]:
    """Detected signal off-axis / on-axis, from spekpy's off-axis model (Poludniowski 2021), on tan(angle)."""
    tangents = np.linspace(-0.4, 0.4, 33)
    ref = tube_spectrum(spectrum, 0.0)
    eta = detector_response(detector, ref.energies_kev)
    on_axis = float((ref.fluence * eta * ref.energies_kev).sum())
    heel_cutoff = -math.tan(math.radians(spectrum.anode_angle_deg))  # rays grazing the anode face: no emission
    values = []
    for t in tangents:
        if t <= heel_cutoff:
            values.append(0.0)
            continue
        spec = tube_spectrum(spectrum, float(round(t * REFERENCE_DISTANCE_CM, 6)))
        values.append(float((spec.fluence * eta * spec.energies_kev).sum()) / on_axis)
    return tangents, np.array(values)


def heel_factor(geometry, spectrum: SpectrumParams, detector: DetectorParams, anode_side: str | None) -> np.ndarray:
    """Relative detected intensity per pixel from the anode heel effect (1 on the principal ray)."""
    cols, rows = geometry.size
    if anode_side is None or spectrum.monoenergetic_kev is not None:
        return np.ones((rows, cols))
    tangents, values = _heel_profile(spectrum, detector)
    offset = _anode_offsets_mm(geometry, anode_side) / geometry.source_to_detector_distance
    return np.interp(offset, tangents, values)
