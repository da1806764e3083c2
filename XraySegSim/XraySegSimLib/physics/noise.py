"""Quantum noise of the energy-integrating detector (compound Poisson, exact mean and variance)."""

from __future__ import annotations

import numpy as np


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
