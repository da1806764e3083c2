"""An exact, independent ray-voxel intersection written for tests only (Siddon 1985, vectorised numpy).

Unlike the product's incremental traversal (Amanatides-Woo in numba), this collects every plane crossing of a
ray, sorts them, and looks up the voxel at each segment's midpoint. Slow but obviously exact for the same
nearest-voxel model, so it is the reference the projector must agree with.
"""

from __future__ import annotations

import numpy as np


def siddon_line_integrals(values: np.ndarray, ras_to_ijk: np.ndarray, source_ras: np.ndarray,
                          targets_ras: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """sum(values[voxel] * length_mm) along each segment source -> target; ``values`` is [k, j, i]."""
    shape_ijk = np.array(values.shape[::-1])
    linear, offset = ras_to_ijk[:3, :3], ras_to_ijk[:3, 3] + 0.5  # voxel v spans [v, v+1)
    source = linear @ source_ras + offset
    targets = targets_ras.reshape(-1, 3)
    lengths_mm = np.linalg.norm(targets - source_ras, axis=1)
    directions = targets @ linear.T + offset - source
    out = np.zeros(len(targets))
    for start in range(0, len(targets), chunk):
        d = directions[start:start + chunk]
        out[start:start + chunk] = _chunk(values, shape_ijk, source, d) * lengths_mm[start:start + chunk]
    return out


def _chunk(values, shape_ijk, source, d):
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = (0 - source) / d
        hi = (shape_ijk - source) / d
        t_enter = np.clip(np.nanmax(np.where(d != 0, np.minimum(lo, hi), -np.inf), axis=1), 0, 1)
        t_exit = np.clip(np.nanmin(np.where(d != 0, np.maximum(lo, hi), np.inf), axis=1), 0, 1)
        crossings = [(np.arange(n + 1)[None, :] - source[a]) / d[:, a:a + 1] for a, n in enumerate(shape_ijk)]
    alphas = np.concatenate(crossings + [t_enter[:, None], t_exit[:, None]], axis=1)
    alphas = np.where((alphas >= t_enter[:, None]) & (alphas <= t_exit[:, None]), alphas, np.nan)
    alphas.sort(axis=1)  # NaNs go last
    segment = np.nan_to_num(np.diff(alphas, axis=1))
    middle = (alphas[:, 1:] + alphas[:, :-1]) / 2
    total = np.zeros(len(d))
    valid = segment > 0
    index = [np.floor(source[a] + middle * d[:, a:a + 1]) for a in range(3)]
    inside = valid & np.all([(ix >= 0) & (ix < n) for ix, n in zip(index, shape_ijk)], axis=0)
    i, j, k = (np.where(inside, ix, 0).astype(np.int64) for ix in index)
    contribution = np.where(inside, values[k, j, i] * segment, 0.0)
    total += contribution.sum(axis=1)
    return total
