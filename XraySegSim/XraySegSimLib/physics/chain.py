"""The chain itself: ``PhysicsParams`` and ``simulate_radiograph`` (see the package docstring)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .base import PhysicsError, FWHM_PER_SIGMA, _check_range
from .beam import BeamModel, beam_model, relative_moments
from .detector import DetectorParams
from .filters import gaussian_blur
from .noise import _add_quantum_noise
from .processing import ProcessingParams, ANATOMY_MIN_G_CM2, _process
from .scatter import ScatterParams, scatter_image
from .spectrum import SpectrumParams, tube_spectrum, fluence_factor, heel_factor


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
    from .presets import preset  # (presets are PhysicsParams: imported here, not at the top)

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
