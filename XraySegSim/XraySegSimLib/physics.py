"""Realistic radiograph physics on top of a single-pass DRR: spectrum, materials, detector, noise, scatter, blur,
heel effect and clinical image processing. Qt-free; numpy + numba + spekpy + xraydb.

Chain (``simulate_radiograph``), per detector pixel, from the material line integrals ``A_m`` (g/cm^2) that the
projector integrates in the same ray pass as the DRR and the labels (see ``materials``):

1. **Spectrum** ``N(E)``: tube output from spekpy (Poludniowski et al. 2021, Med. Phys. 48:3630), photons per
   keV per cm^2 per mAs at 100 cm, for kVp, anode angle and added Al/Cu filtration.
2. **Attenuation**: ``(mu/rho)_m(E)`` from xraydb (Elam, Ravel & Sieber tables, via ``xraydb.material_mu``) for
   ICRU-44 soft tissue and cortical bone (ICRU Report 44, 1989, compositions by mass) and titanium.
3. **Detector**: energy-integrating scintillator (CsI:Tl or Gd2O2S:Tb) whose signal per photon is the interacting
   fraction ``eta(E) = 1 - exp(-mu(E) t)`` times ``E`` (energy-integrating response; K-escape neglected).
4. **Primary** ``S = K(pixel) * sum_E N(E) eta(E) E exp(-sum_m (mu/rho)_m(E) A_m)``: no per-energy ray tracing. A
   log-domain look-up table over (soft tissue, bone) with bilinear interpolation (numba) gives the sum; pixels with
   metal are summed directly. ``K`` holds mAs, inverse square, obliquity, pixel area and the heel effect (spekpy's
   own off-axis model). Beam hardening follows from the spectrum sum.
5. **Scatter**: ``S_s = G * (SPR(t) * S_p)`` with a normalised broad Gaussian kernel ``G`` (FFT at reduced
   resolution) and a scatter-to-primary ratio growing with the water-equivalent mass thickness ``t``; optional
   anti-scatter grid.
6. **Focal-spot blur** (Gaussian, FWHM ``f (M - 1)`` at the detector) on the primary; **quantum noise**: compound
   Poisson of the energy-integrating signal (mean and variance exact: Poisson in the equivalent number of quanta
   ``S^2 / M2`` scaled by ``M2 / S``, ``M2 = sum N eta E^2 T``; Swank factor optional), then the **detector PSF**
   (blurs signal and noise, as light spread does) and additive **electronic noise**.
7. **Processing**: log transform against the unattenuated signal, optional unsharp masking (CR/DX-like), VOI window
   through ``normalize_radiograph`` (the single normalisation shared by training and real radiographs), output
   MONOCHROME2 (dense = bright, default) or MONOCHROME1.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

import numba
import numpy as np

from .errors import XraySegError

# ----------------------------------------------------------------------------------------------------------------
# Errors and constants


class PhysicsError(XraySegError):
    """A physics parameter is out of its valid range; the message says the range."""


KVP_RANGE = (20.0, 150.0)
"""Diagnostic radiography range accepted here. spekpy itself models W targets from 10 to 500 kV (spekpy docs);
the scatter and grid data used below are for 50-150 kVp, and below 20 kV nothing crosses a patient."""
ANODE_ANGLE_RANGE = (5.0, 25.0)
REFERENCE_DISTANCE_CM = 100.0  # spekpy's fluence is given at this focus distance (z = 100 cm)

# ICRU Report 44 (1989) compositions, mass fractions; densities g/cm^3 (as tabulated by NIST, "Tissue, Soft
# (ICRU-44)" and "Bone, Cortical (ICRU-44)").
ICRU44_SOFT_TISSUE = {"H": 0.102, "C": 0.143, "N": 0.034, "O": 0.708, "Na": 0.002, "P": 0.003, "S": 0.003,
                      "Cl": 0.002, "K": 0.003}
ICRU44_CORTICAL_BONE = {"H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001, "Mg": 0.002, "P": 0.103,
                        "S": 0.003, "Ca": 0.225}
MATERIAL_COMPOSITIONS: dict[str, Mapping[str, float] | str] = {
    "soft_tissue": ICRU44_SOFT_TISSUE,
    "bone": ICRU44_CORTICAL_BONE,
    "metal": "Ti",
    "water": "H2O",
}
SCINTILLATORS = {"CsI": ("CsI", 4.51), "Gd2O2S": ("Gd2O2S", 7.34)}  # formula, bulk density g/cm^3

# Anti-scatter grid scatter transmission by grid ratio: approximate values from Monte Carlo grid studies
# (Sandborg, Dance, Carlsson & Persliden 1993, Br. J. Radiol. 66:1164; Chan & Doi 1985, Med. Phys. 12:152;
# summarised in Bushberg et al., The Essential Physics of Medical Imaging, 3rd ed., ch. 7): Tp ~ 0.6-0.75.
GRID_SCATTER_TRANSMISSION = ((5.0, 0.25), (6.0, 0.21), (8.0, 0.15), (10.0, 0.11), (12.0, 0.09), (16.0, 0.06))

# Published scatter-to-primary ratio for ~20 cm of water, 30 x 30 cm field, no grid, no air gap, 60-120 kVp:
# about 2 to 5 (scatter fraction 0.67-0.83): Chan & Doi 1985 (Med. Phys. 12:152), Boone & Seibert 1988
# (Med. Phys. 15:721), Sandborg et al. 1993. The default model is fitted to the middle of that range.
PUBLISHED_SPR_20CM_WATER = (2.0, 5.0)

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _check_range(name: str, value: float, low: float, high: float, unit: str = "") -> None:
    if not (np.isfinite(value) and low <= value <= high):
        raise PhysicsError(f"{name} = {value}{unit} is outside the valid range [{low:g}, {high:g}]{unit}")


def _check_non_negative(name: str, value: float, unit: str = "") -> None:
    if not (np.isfinite(value) and value >= 0):
        raise PhysicsError(f"{name} = {value}{unit} must be finite and >= 0{unit}")


# ----------------------------------------------------------------------------------------------------------------
# Parameters (frozen dataclasses: hashable, so spectra and tables are cached by value)


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


@dataclass(frozen=True)
class PhysicsParams:
    """Everything ``simulate_radiograph`` needs besides the DRR. Dose: ``mas`` (tube current-time product; the
    fluence follows spekpy's output per mAs at 100 cm and the inverse square law), or ``photons_per_pixel``
    (unattenuated incident quanta at the principal point, before the grid), which then overrides ``mas``.

    ``anode_side``: where the anode lies on the image ("top", "bottom", "left", "right": top = -row axis, left =
    -column axis) for the heel effect, or None for no heel effect. ``material_formulas`` overrides the composition
    of a projector channel (e.g. ``(("soft_tissue", "H2O"),)``)."""

    spectrum: SpectrumParams = field(default_factory=SpectrumParams)
    mas: float = 2.0
    photons_per_pixel: float | None = None
    detector: DetectorParams = field(default_factory=DetectorParams)
    scatter: ScatterParams = field(default_factory=ScatterParams)
    focal_spot_mm: float = 1.0
    anode_side: str | None = "top"
    inverse_square: bool = True
    obliquity: bool = True
    noise: bool = True
    processing: ProcessingParams = field(default_factory=ProcessingParams)
    material_formulas: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        _check_range("mAs", self.mas, 1e-4, 2000.0, " mAs")
        if self.photons_per_pixel is not None:
            _check_range("photons per pixel", self.photons_per_pixel, 1e-3, 1e12)
        _check_range("focal spot", self.focal_spot_mm, 0.0, 3.0, " mm")
        if self.anode_side not in (None, "top", "bottom", "left", "right"):
            raise PhysicsError(f"anode_side {self.anode_side!r} must be None, 'top', 'bottom', 'left' or 'right'")

    def replace(self, **changes: Any) -> "PhysicsParams":
        """Copy with fields changed; dotted names reach nested parameters, e.g. ``{"spectrum.kvp": 90}``."""
        return _replace_dotted(self, changes)


def _replace_dotted(obj: Any, changes: Mapping[str, Any]) -> Any:
    direct = {k: v for k, v in changes.items() if "." not in k}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        if "." in key:
            head, rest = key.split(".", 1)
            nested.setdefault(head, {})[rest] = value
    for head, sub in nested.items():
        current = getattr(obj, head)
        if current is None:
            raise PhysicsError(f"cannot set {head}.{next(iter(sub))}: {head} is None")
        direct[head] = _replace_dotted(current, sub)
    try:
        return dataclasses.replace(obj, **direct)
    except TypeError as error:
        raise PhysicsError(f"unknown physics parameter: {error}") from None


def _check_photometric(value: str) -> None:
    if value not in ("MONOCHROME1", "MONOCHROME2"):
        raise PhysicsError(f"photometric interpretation {value!r} must be 'MONOCHROME1' or 'MONOCHROME2'")


# ----------------------------------------------------------------------------------------------------------------
# Spectrum, attenuation, detector response


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


def formula_from_mass_fractions(fractions: Mapping[str, float]) -> str:
    """Chemical formula with the atom ratios of a composition given by mass (w_i / A_i), for xraydb."""
    import xraydb

    total = sum(fractions.values())
    return "".join(f"{el}{w / total / xraydb.atomic_mass(el):.6f}" for el, w in fractions.items())


def mass_attenuation(material: str | Mapping[str, float], energies_kev: np.ndarray) -> np.ndarray:
    """Total mass attenuation coefficient (cm^2/g, coherent included, narrow beam) from xraydb.

    ``material``: a name in ``MATERIAL_COMPOSITIONS``, a chemical formula (``"H2O"``, ``"Ti"``) or a mapping of
    element -> mass fraction. ``xraydb.material_mu(formula, E_eV, density=1)`` returns mu/rho in these units."""
    import xraydb

    spec = MATERIAL_COMPOSITIONS.get(material, material) if isinstance(material, str) else material
    formula = spec if isinstance(spec, str) else formula_from_mass_fractions(spec)
    try:
        mu = xraydb.material_mu(formula, np.asarray(energies_kev, float) * 1000.0, density=1.0, kind="total")
    except Exception as error:  # xraydb raises plain errors for unknown elements
        raise PhysicsError(f"material {material!r}: xraydb cannot compute its attenuation ({error})") from None
    return np.atleast_1d(np.asarray(mu, np.float64))


def detector_response(detector: DetectorParams, energies_kev: np.ndarray) -> np.ndarray:
    """Interacting fraction ``1 - exp(-mu t)`` of the scintillator (effective density = bulk x packing)."""
    formula, density = SCINTILLATORS[detector.scintillator]
    mu_per_cm = mass_attenuation(formula, energies_kev) * density * detector.packing_fraction
    return 1.0 - np.exp(-mu_per_cm * detector.thickness_mm * 0.1)


def channel_attenuation(names: tuple[str, ...], energies_kev: np.ndarray,
                        overrides: tuple[tuple[str, str], ...] = ()) -> np.ndarray:
    """(n_materials, n_energies) mu/rho for the projector's material channels."""
    table = dict(overrides)
    for name in names:
        if name not in table and name not in MATERIAL_COMPOSITIONS:
            raise PhysicsError(f"material channel {name!r} has no composition; known: {sorted(MATERIAL_COMPOSITIONS)}")
    return np.stack([mass_attenuation(table.get(n, n), energies_kev) for n in names])


@dataclass(frozen=True)
class BeamModel:
    """Spectrum, attenuation and detector combined: detected-energy weights per mAs per cm^2 at 100 cm.

    ``w1 = N eta E`` (keV) gives the mean signal, ``w2 = N eta E^2`` its variance (compound Poisson)."""

    energies_kev: np.ndarray
    mu_rho: np.ndarray  # (n_materials, n_energies) cm^2/g
    w1: np.ndarray
    w2: np.ndarray
    quanta: np.ndarray  # N eta: detected quanta

    def moments(self, line_integrals: np.ndarray) -> np.ndarray:
        """Direct spectral sum: (2, ...) relative signal and second moment, 1 at zero thickness."""
        a = np.asarray(line_integrals, np.float64)
        transmission = np.exp(-np.tensordot(self.mu_rho.T, a, axes=(1, 0)))  # (n_energies, ...)
        s1 = np.tensordot(self.w1, transmission, axes=(0, 0)) / self.w1.sum()
        s2 = np.tensordot(self.w2, transmission, axes=(0, 0)) / self.w2.sum()
        return np.stack([s1, s2])


@lru_cache(maxsize=64)
def beam_model(spectrum: SpectrumParams, detector: DetectorParams, names: tuple[str, ...],
               overrides: tuple[tuple[str, str], ...] = ()) -> BeamModel:
    """Cached ``BeamModel`` for the given tube, detector and material channels."""
    spec = tube_spectrum(spectrum)
    eta = detector_response(detector, spec.energies_kev)
    quanta = spec.fluence * eta
    mu = channel_attenuation(names, spec.energies_kev, overrides)
    return BeamModel(spec.energies_kev, mu, quanta * spec.energies_kev, quanta * spec.energies_kev ** 2, quanta)


# ----------------------------------------------------------------------------------------------------------------
# Look-up table over (soft tissue, bone) line integrals


LUT_STEPS_G_CM2 = (0.25, 0.05)  # grid steps (soft tissue, bone); accuracy verified in the tests (< 0.1 %)
LUT_EXTENT_QUANTUM = 10.0  # tables are built up to a multiple of this (g/cm^2), so few sizes get cached


@dataclass(frozen=True)
class MomentTable:
    """log of the relative signal and second moment on a regular (soft, bone) grid at zero metal."""

    log_moments: np.ndarray  # (2, n_soft, n_bone) float64
    steps: tuple[float, float]


@lru_cache(maxsize=32)
def moment_table(beam_key: tuple, soft_max: float, bone_max: float) -> MomentTable:
    """Build the table by direct spectral summation at every node (vectorised over bone for each soft row)."""
    beam = beam_model(*beam_key)
    ds, db = LUT_STEPS_G_CM2
    soft = np.arange(int(round(soft_max / ds)) + 2) * ds
    bone = np.arange(int(round(bone_max / db)) + 2) * db
    table = np.empty((2, soft.size, bone.size))
    bone_part = np.exp(-np.outer(beam.mu_rho[1], bone))  # (E, n_bone)
    for k, s in enumerate(soft):
        weights = np.exp(-beam.mu_rho[0] * s)
        table[0, k] = (beam.w1 * weights) @ bone_part / beam.w1.sum()
        table[1, k] = (beam.w2 * weights) @ bone_part / beam.w2.sum()
    with np.errstate(divide="ignore"):
        return MomentTable(np.log(np.maximum(table, 1e-300)), (ds, db))


@numba.njit(fastmath=True, cache=True)
def _lookup_moments(soft, bone, log_table, step_soft, step_bone, out):  # pragma: no cover - compiled
    """Bilinear interpolation of log moments, exponentiated: out (2, rows, cols)."""
    rows, cols = soft.shape
    n_soft, n_bone = log_table.shape[1], log_table.shape[2]
    for r in numba.prange(rows):
        for c in range(cols):
            x = min(max(soft[r, c] / step_soft, 0.0), n_soft - 1.000001)
            y = min(max(bone[r, c] / step_bone, 0.0), n_bone - 1.000001)
            i = int(x)
            j = int(y)
            fx = x - i
            fy = y - j
            for k in range(2):
                low = (1.0 - fy) * log_table[k, i, j] + fy * log_table[k, i, j + 1]
                high = (1.0 - fy) * log_table[k, i + 1, j] + fy * log_table[k, i + 1, j + 1]
                out[k, r, c] = math.exp((1.0 - fx) * low + fx * high)


def relative_moments(material_g_cm2: np.ndarray, beam_key: tuple) -> np.ndarray:
    """(2, rows, cols) float32 relative detected signal and second moment for the material line integrals.

    Table look-up for (soft, bone); pixels with metal (third channel > 0) get the exact direct sum."""
    a = np.asarray(material_g_cm2, np.float32)
    soft, bone = a[0], (a[1] if a.shape[0] > 1 else np.zeros_like(a[0]))
    soft_max = LUT_EXTENT_QUANTUM * math.ceil(max(float(soft.max()), 1e-6) / LUT_EXTENT_QUANTUM)
    bone_max = LUT_EXTENT_QUANTUM * math.ceil(max(float(bone.max()), 1e-6) / LUT_EXTENT_QUANTUM)
    table = moment_table(beam_key, soft_max, bone_max)
    out = np.empty((2,) + soft.shape, np.float32)
    _lookup_moments(soft, bone, table.log_moments, table.steps[0], table.steps[1], out)
    if a.shape[0] > 2:
        metal = np.flatnonzero(a[2] > 0)
        if metal.size:
            beam = beam_model(*beam_key)
            flat_a = a.reshape(a.shape[0], -1)
            _direct_moments(flat_a, metal, beam.mu_rho, beam.w1 / beam.w1.sum(), beam.w2 / beam.w2.sum(),
                            out.reshape(2, -1))
    return out


@numba.njit(fastmath=True, cache=True)
def _direct_moments(a, pixels, mu_rho, w1, w2, out):  # pragma: no cover - compiled
    """Exact spectral sum for the listed (flat) pixels: out[k, p] = sum_E w_k(E) exp(-sum_m mu_m(E) a_m[p])."""
    n_materials, n_energies = mu_rho.shape
    for p in pixels:
        s1 = 0.0
        s2 = 0.0
        for e in range(n_energies):
            exponent = 0.0
            for m in range(n_materials):
                exponent += mu_rho[m, e] * a[m, p]
            t = math.exp(-exponent)
            s1 += w1[e] * t
            s2 += w2[e] * t
        out[0, p] = s1
        out[1, p] = s2


# ----------------------------------------------------------------------------------------------------------------
# Geometry: inverse square, obliquity, heel effect


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


# ----------------------------------------------------------------------------------------------------------------
# Filters: separable Gaussian (numba), FFT convolution at reduced resolution, bilinear resize


def gaussian_kernel(sigma_px: float) -> np.ndarray:
    """Normalised 1D Gaussian sampled at integer offsets, radius ceil(4 sigma)."""
    sigma_px = max(float(sigma_px), 1e-3)
    radius = max(1, int(math.ceil(4.0 * sigma_px)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma_px) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


@numba.njit(fastmath=True, cache=True)
def _convolve_rows(image, kernel, out):  # pragma: no cover - compiled
    rows, cols = image.shape
    radius = kernel.size // 2
    for r in numba.prange(rows):
        padded = np.empty(cols + 2 * radius, np.float32)  # edge clamp, then a straight (vectorised) loop
        for c in range(cols + 2 * radius):
            padded[c] = image[r, min(max(c - radius, 0), cols - 1)]
        for c in range(cols):
            out[r, c] = 0.0
        for k in range(kernel.size):
            w = kernel[k]
            for c in range(cols):
                out[r, c] += w * padded[c + k]


@numba.njit(fastmath=True, cache=True)
def _convolve_cols(image, kernel, out):  # pragma: no cover - compiled
    rows, cols = image.shape
    radius = kernel.size // 2
    for r in numba.prange(rows):
        for k in range(kernel.size):
            rr = min(max(r + k - radius, 0), rows - 1)
            w = kernel[k]
            for c in range(cols):
                out[r, c] += w * image[rr, c]


def gaussian_blur(image: np.ndarray, sigma_px: tuple[float, float]) -> np.ndarray:
    """Separable Gaussian blur, sigma (columns, rows) in pixels, edges clamped; sigma < 0.05 px is identity."""
    out = np.ascontiguousarray(image, np.float32)
    if sigma_px[0] > 0 and not _is_identity(kernel := gaussian_kernel(sigma_px[0])):
        tmp = np.empty_like(out)
        _convolve_rows(out, kernel, tmp)
        out = tmp
    if sigma_px[1] > 0 and not _is_identity(kernel := gaussian_kernel(sigma_px[1])):
        tmp = np.zeros_like(out)
        _convolve_cols(out, kernel, tmp)
        out = tmp
    return out


def _is_identity(kernel: np.ndarray) -> bool:
    """A sampled Gaussian far below a pixel (sigma < ~0.25 px) leaves every pixel within 1e-4 of itself."""
    return float(kernel[kernel.size // 2]) > 1.0 - 1e-4


@numba.njit(fastmath=True, cache=True)
def _resize_bilinear(image, j0, j1, fy, i0, i1, fx, out):  # pragma: no cover - compiled
    """Bilinear resize from precomputed source indices and weights per output row and column."""
    rows, cols = out.shape
    for r in numba.prange(rows):
        a, b, wy = j0[r], j1[r], fy[r]
        for c in range(cols):
            top = image[a, i0[c]] + fx[c] * (image[a, i1[c]] - image[a, i0[c]])
            bottom = image[b, i0[c]] + fx[c] * (image[b, i1[c]] - image[b, i0[c]])
            out[r, c] = top + wy * (bottom - top)


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (low, high) and weight of the high one, pixel centres aligned, edges clamped."""
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1.0)
    low = np.minimum(x.astype(np.int64), max(n_in - 2, 0))
    high = np.minimum(low + 1, n_in - 1)
    return low, high, (x - low).astype(np.float32)


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Downsample by averaging factor x factor blocks (edge rows/columns replicated to a multiple)."""
    rows, cols = image.shape
    pad_r, pad_c = (-rows) % factor, (-cols) % factor
    padded = np.pad(image, ((0, pad_r), (0, pad_c)), mode="edge") if pad_r or pad_c else image
    r, c = padded.shape
    return padded.reshape(r // factor, factor, c // factor, factor).mean(axis=(1, 3), dtype=np.float32)


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (numba) of a 2D float image to ``shape`` (rows, cols)."""
    out = np.empty(shape, np.float32)
    image = np.ascontiguousarray(image, np.float32)
    _resize_bilinear(image, *_bilinear_taps(image.shape[0], shape[0]), *_bilinear_taps(image.shape[1], shape[1]), out)
    return out


def fft_gaussian_blur(image: np.ndarray, sigma_px: tuple[float, float]) -> np.ndarray:
    """Gaussian blur by FFT (sigma columns, rows in pixels), reflect-padded by 3 sigma so the field does not wrap
    and a uniform object stays uniform (the body is assumed to continue beyond the detector edge)."""
    pad_c, pad_r = (int(math.ceil(3 * s)) for s in sigma_px)
    rows, cols = image.shape
    pad_r, pad_c = min(pad_r, rows - 1), min(pad_c, cols - 1)
    padded = np.pad(image, ((pad_r, pad_r), (pad_c, pad_c)), mode="reflect")
    fy = np.fft.fftfreq(padded.shape[0])[:, None]
    fx = np.fft.rfftfreq(padded.shape[1])[None, :]
    transfer = np.exp(-2 * math.pi ** 2 * ((fx * sigma_px[0]) ** 2 + (fy * sigma_px[1]) ** 2))
    blurred = np.fft.irfft2(np.fft.rfft2(padded) * transfer, s=padded.shape)
    return blurred[pad_r:pad_r + rows, pad_c:pad_c + cols].astype(np.float32)


def smooth_at_low_resolution(image: np.ndarray, sigma_mm: float, spacing_mm: tuple[float, float],
                             samples_per_sigma: float = 3.0) -> np.ndarray:
    """Broad Gaussian blur computed cheaply: block-mean downsample to ~``samples_per_sigma`` pixels per sigma,
    FFT convolution there, bilinear upsample back."""
    factor = max(1, int(sigma_mm / (samples_per_sigma * max(spacing_mm))))
    small = block_mean(image, factor) if factor > 1 else np.asarray(image, np.float32)
    sigma_px = (sigma_mm / (spacing_mm[0] * factor), sigma_mm / (spacing_mm[1] * factor))
    blurred = fft_gaussian_blur(small, sigma_px)
    return resize(blurred, image.shape) if factor > 1 else blurred


# ----------------------------------------------------------------------------------------------------------------
# Scatter


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


# ----------------------------------------------------------------------------------------------------------------
# Clinical processing


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


# ----------------------------------------------------------------------------------------------------------------
# The chain


@dataclass
class SimulatedRadiograph:
    """Output of ``simulate_radiograph``: the processed image and the intermediates, all (rows, cols) float32.

    Signals are detected energy per pixel (keV). ``flat`` is the unattenuated signal (same pixel factors, through
    the grid); ``primary`` (focal-spot blurred) and ``scatter`` are after the grid; ``noiseless`` = primary +
    scatter, the mean signal reaching the scintillator; ``noisy`` is the raw detector image: quantum noise, then
    the detector PSF, then electronic noise (with ``noise=False``: the PSF-blurred ``noiseless``); ``log_image`` =
    ln(flat at the principal point / noisy)."""

    image: np.ndarray
    primary: np.ndarray
    scatter: np.ndarray
    noiseless: np.ndarray
    noisy: np.ndarray
    log_image: np.ndarray
    flat: np.ndarray
    params: PhysicsParams
    photometric: str
    mean_quanta_per_pixel: float  # detected quanta at the principal point without object

    @property
    def spr(self) -> np.ndarray:
        """Scatter-to-primary ratio at the detector (after the grid)."""
        return self.scatter / np.maximum(self.primary, 1e-30)


def _material_line_integrals(result) -> tuple[np.ndarray, tuple[str, ...]]:
    a = getattr(result, "material_g_cm2", None)
    if a is None:
        raise PhysicsError("the DRR has no material line integrals: build the projector with "
                           "DrrProjector(ct, ..., materials=MaterialModel()) before simulating physics")
    names = tuple(result.material_names)
    if a.shape[0] != len(names) or not names or names[0] != "soft_tissue" or (len(names) > 1 and names[1] != "bone"):
        raise PhysicsError(f"material channels {names} must start with ('soft_tissue', 'bone')")
    if not np.isfinite(float(a.sum(dtype=np.float64))) or a.min() < 0:
        raise PhysicsError("material line integrals must be finite and >= 0 g/cm^2")
    return a, names


def _pixel_area_cm2(geometry) -> float:
    return float(geometry.spacing[0] * geometry.spacing[1]) * 0.01


def _principal_pixel(geometry) -> tuple[int, int]:
    """Nearest pixel to the foot of the perpendicular from the source (used to reference dose and log)."""
    foot = np.asarray(geometry.source) + geometry.normal * geometry.source_to_detector_distance * np.sign(
        np.dot(np.asarray(geometry.origin) - geometry.source, geometry.normal))
    rel = foot - np.asarray(geometry.origin)
    cols, rows = geometry.size
    i = int(np.clip(round(rel @ geometry.column_axis / geometry.spacing[0]), 0, cols - 1))
    j = int(np.clip(round(rel @ geometry.row_axis / geometry.spacing[1]), 0, rows - 1))
    return i, j


def _exposure(geometry, params: PhysicsParams, beam: BeamModel) -> tuple[np.ndarray, float]:
    """Per-pixel photon scale K (so that signal = K * w1 . T) and the mAs actually used."""
    geometric = fluence_factor(geometry, params.inverse_square, params.obliquity)
    geometric *= heel_factor(geometry, params.spectrum, params.detector, params.anode_side)
    geometric *= _pixel_area_cm2(geometry)
    mas = params.mas
    if params.photons_per_pixel is not None:
        i, j = _principal_pixel(geometry)
        incident_per_mas = float(geometric[j, i] * tube_spectrum(params.spectrum).fluence.sum())
        mas = params.photons_per_pixel / incident_per_mas
    if params.scatter.grid is not None:
        geometric *= params.scatter.grid.primary_transmission
    return (geometric * mas).astype(np.float32), mas


GAUSSIAN_QUANTA = 1000.0  # above this many equivalent quanta the Poisson draw is replaced by its normal limit


def _add_quantum_noise(signal: np.ndarray, second_moment: np.ndarray, swank: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Compound-Poisson noise with exact mean and variance: Poisson in q = swank S^2/M2 equivalent quanta,
    each worth S/q (Swank 1973, J. Appl. Phys. 44:4199: the energy spread lowers the effective quanta).

    Where q > ``GAUSSIAN_QUANTA`` the normal limit (same mean and variance, skewness < 3 %) is drawn, 4x faster."""
    variance = np.maximum(second_moment, 1e-30) / np.float32(swank)
    noisy = signal + np.sqrt(variance) * rng.standard_normal(signal.shape, dtype=np.float32)
    quanta = signal * signal / variance
    few = quanta < GAUSSIAN_QUANTA
    if few.any():
        q = quanta[few]
        noisy[few] = rng.poisson(q).astype(np.float32) * (signal[few] / np.maximum(q, 1e-30))
    return noisy.astype(np.float32, copy=False)


def _focal_spot_sigma_mm(geometry, focal_spot_mm: float) -> float:
    """Penumbra of a focal spot of nominal size f at the detector for an object at the isocentre:
    FWHM = f (M - 1), M = SDD / SID (Bushberg et al. ch. 7); modelled as a Gaussian."""
    magnification = geometry.magnification or 1.0
    return focal_spot_mm * max(magnification - 1.0, 0.0) / FWHM_PER_SIGMA


def simulate_radiograph(result, params: PhysicsParams | str | None = None,
                        rng: np.random.Generator | int | None = None) -> SimulatedRadiograph:
    """Realistic radiograph from a ``DrrResult`` rendered with materials (see module docstring for the chain).

    ``params``: a ``PhysicsParams``, a preset name (``PRESETS``), or None (defaults). ``rng``: a numpy Generator
    or a seed (the noise is reproducible)."""
    params = preset(params) if isinstance(params, str) else (params or PhysicsParams())
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    geometry = result.geometry
    spacing = (float(geometry.spacing[0]), float(geometry.spacing[1]))
    a, names = _material_line_integrals(result)
    beam_key = (params.spectrum, params.detector, names, params.material_formulas)
    beam = beam_model(*beam_key)
    scale, _ = _exposure(geometry, params, beam)
    w1, w2 = float(beam.w1.sum()), float(beam.w2.sum())
    moments = relative_moments(a, beam_key)
    primary = scale * np.float32(w1) * moments[0]
    energy_ratio = np.float32(w2 / w1) * moments[1] / np.maximum(moments[0], 1e-30)  # M2 / S: keV per quantum
    focal_sigma = _focal_spot_sigma_mm(geometry, params.focal_spot_mm)
    if focal_sigma > 0:
        primary = gaussian_blur(primary, (focal_sigma / spacing[0], focal_sigma / spacing[1]))
    scatter = np.zeros_like(primary)
    if params.scatter.enabled:
        thickness_cm = a.sum(axis=0)  # g/cm^2 ~ cm of water: Compton scatter scales with electrons per gram
        transmitted = 1.0
        if params.scatter.grid is not None:
            grid = params.scatter.grid
            transmitted = grid.scatter_fraction_transmitted / grid.primary_transmission
        scatter = scatter_image(primary, thickness_cm, params.scatter, spacing) * np.float32(transmitted)
    total = primary + scatter  # scatter is given the local primary energy per quantum (second moment)
    detector_sigma_px = (params.detector.psf_sigma_mm / spacing[0], params.detector.psf_sigma_mm / spacing[1])
    noisy = _add_quantum_noise(total, total * energy_ratio, params.detector.swank_factor, rng) if params.noise else total
    noisy = gaussian_blur(noisy, detector_sigma_px)
    flat = scale * np.float32(w1)
    energy_per_quantum = w1 / float(beam.quanta.sum())
    if params.noise and params.detector.electronic_noise_quanta > 0:
        sigma = params.detector.electronic_noise_quanta * energy_per_quantum
        noisy = noisy + rng.normal(0.0, sigma, noisy.shape).astype(np.float32)
    i0, j0 = _principal_pixel(geometry)
    reference = float(flat[j0, i0])
    floor = 0.5 * energy_per_quantum  # below one detected quantum the log is meaningless
    log_image = (np.log(reference) - np.log(np.maximum(noisy, floor))).astype(np.float32)
    anatomy = a.sum(axis=0) > ANATOMY_MIN_G_CM2
    image = _process(log_image, params.processing, spacing, anatomy if anatomy.any() else None)
    mean_quanta = reference / energy_per_quantum
    return SimulatedRadiograph(image, primary, scatter, total, noisy, log_image, flat, params,
                               params.processing.photometric, mean_quanta)


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


# ----------------------------------------------------------------------------------------------------------------
# Presets and randomisation ranges (data, for export)


def _grid(ratio: float) -> GridParams:
    return GridParams(ratio=ratio)


PRESETS: dict[str, PhysicsParams] = {
    # Chest PA: high kV technique with grid, ~2 mAs at 180 cm (e.g. European guidelines on quality criteria for
    # diagnostic radiographic images, EUR 16260, 1996: 125 kV, grid r = 10, large focus <= 1.3 mm).
    "chest-pa": PhysicsParams(
        SpectrumParams(kvp=120.0, filtration_mm_al=3.0, filtration_mm_cu=0.1), mas=2.5,
        scatter=ScatterParams(grid=_grid(10.0)), focal_spot_mm=1.2, anode_side="top",
        processing=ProcessingParams(unsharp_amount=0.6, unsharp_sigma_mm=20.0, gamma=1.4)),
    # Wrist PA / lateral: 55-60 kV, no grid, small focus, ~2-4 mAs at 100 cm (EUR 16260: extremities < 60 kV).
    "wrist-pa": PhysicsParams(
        SpectrumParams(kvp=55.0, filtration_mm_al=2.5), mas=3.0, scatter=ScatterParams(grid=None),
        focal_spot_mm=0.6, anode_side="top", detector=DetectorParams(psf_sigma_mm=0.1),
        processing=ProcessingParams(unsharp_amount=0.5, unsharp_sigma_mm=4.0)),
    "wrist-lateral": PhysicsParams(
        SpectrumParams(kvp=60.0, filtration_mm_al=2.5), mas=4.0, scatter=ScatterParams(grid=None),
        focal_spot_mm=0.6, anode_side="top", detector=DetectorParams(psf_sigma_mm=0.1),
        processing=ProcessingParams(unsharp_amount=0.5, unsharp_sigma_mm=4.0)),
    # Lumbar spine lateral: 85-95 kV, grid r = 10-12, large focus, ~40 mAs at 100-115 cm.
    "lumbar-lateral": PhysicsParams(
        SpectrumParams(kvp=90.0, filtration_mm_al=2.5, filtration_mm_cu=0.1), mas=40.0,
        scatter=ScatterParams(grid=_grid(12.0)), focal_spot_mm=1.2, anode_side="top",
        processing=ProcessingParams(unsharp_amount=0.8, unsharp_sigma_mm=10.0)),
    # Pelvis / hip AP: 70-80 kV, grid r = 10, ~20 mAs at 100-115 cm.
    "pelvis-ap": PhysicsParams(
        SpectrumParams(kvp=75.0, filtration_mm_al=2.5, filtration_mm_cu=0.1), mas=20.0,
        scatter=ScatterParams(grid=_grid(10.0)), focal_spot_mm=1.2, anode_side="top",
        processing=ProcessingParams(unsharp_amount=0.8, unsharp_sigma_mm=10.0)),
}
PRESETS["hip-ap"] = PRESETS["pelvis-ap"]

# Randomisation ranges for export (uniform; "log" = log-uniform), by dotted parameter name. Chosen to span
# clinical practice across vendors and sites around each preset.
COMMON_RANGES: dict[str, tuple[float, float, str]] = {
    "spectrum.anode_angle_deg": (10.0, 16.0, "uniform"),
    "spectrum.filtration_mm_al": (2.5, 4.0, "uniform"),
    "detector.thickness_mm": (0.4, 0.7, "uniform"),
    "detector.psf_sigma_mm": (0.08, 0.3, "uniform"),
    "detector.electronic_noise_quanta": (0.0, 10.0, "uniform"),
    "scatter.spr_at_20cm": (2.0, 5.0, "uniform"),  # the published range, PUBLISHED_SPR_20CM_WATER
    "scatter.kernel_sigma_mm": (25.0, 60.0, "uniform"),
    "processing.unsharp_amount": (0.0, 1.5, "uniform"),
    "processing.unsharp_sigma_mm": (4.0, 30.0, "uniform"),
    "processing.gamma": (0.9, 1.6, "uniform"),
}
RANDOMIZATION_RANGES: dict[str, dict[str, tuple[float, float, str]]] = {
    "chest-pa": {"spectrum.kvp": (110.0, 130.0, "uniform"), "mas": (1.0, 5.0, "log"),
                 "spectrum.filtration_mm_cu": (0.0, 0.2, "uniform"), "focal_spot_mm": (1.0, 1.3, "uniform")},
    "wrist-pa": {"spectrum.kvp": (50.0, 62.0, "uniform"), "mas": (1.0, 8.0, "log"),
                 "focal_spot_mm": (0.4, 0.8, "uniform")},
    "wrist-lateral": {"spectrum.kvp": (52.0, 65.0, "uniform"), "mas": (1.5, 10.0, "log"),
                      "focal_spot_mm": (0.4, 0.8, "uniform")},
    "lumbar-lateral": {"spectrum.kvp": (85.0, 95.0, "uniform"), "mas": (20.0, 80.0, "log"),
                       "spectrum.filtration_mm_cu": (0.0, 0.2, "uniform"), "focal_spot_mm": (1.0, 1.3, "uniform")},
    "pelvis-ap": {"spectrum.kvp": (70.0, 82.0, "uniform"), "mas": (10.0, 40.0, "log"),
                  "spectrum.filtration_mm_cu": (0.0, 0.2, "uniform"), "focal_spot_mm": (1.0, 1.3, "uniform")},
}
RANDOMIZATION_RANGES["hip-ap"] = RANDOMIZATION_RANGES["pelvis-ap"]


def preset(name: str | None) -> PhysicsParams:
    """Physics parameters of a named preset (``PRESETS``); None gives the defaults."""
    if name is None:
        return PhysicsParams()
    if name not in PRESETS:
        raise PhysicsError(f"unknown physics preset {name!r}; use one of {sorted(PRESETS)}")
    return PRESETS[name]


def randomized(name: str, rng: np.random.Generator | int | None = None, kvp_step: float = 1.0) -> PhysicsParams:
    """A random draw around preset ``name`` within ``COMMON_RANGES`` and ``RANDOMIZATION_RANGES[name]``.

    kVp is rounded to ``kvp_step`` so spectra (spekpy, ~0.2 s each) and tables are re-used from the caches."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    base = preset(name)
    ranges = {**COMMON_RANGES, **RANDOMIZATION_RANGES.get(name, {})}
    changes: dict[str, Any] = {}
    for key, (low, high, kind) in sorted(ranges.items()):
        value = math.exp(rng.uniform(math.log(low), math.log(high))) if kind == "log" else rng.uniform(low, high)
        changes[key] = round(value / kvp_step) * kvp_step if key == "spectrum.kvp" else float(value)
    if base.scatter.grid is None:
        changes = {k: v for k, v in changes.items() if not k.startswith("scatter.grid")}
    return base.replace(**changes)
