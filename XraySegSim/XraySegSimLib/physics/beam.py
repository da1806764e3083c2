"""Spectrum, attenuation and detector combined (``BeamModel``), and the log-domain look-up table over the
(soft tissue, bone) line integrals that gives the polyenergetic signal per pixel without a spectral sum."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numba
import numpy as np

from .attenuation import channel_attenuation
from .detector import DetectorParams, detector_response
from .spectrum import SpectrumParams, Spectrum, tube_spectrum


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
