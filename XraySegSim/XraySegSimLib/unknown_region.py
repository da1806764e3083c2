"""Tissue a virtual patient's shoulder pose brought in from beyond a cut face: unknown, so its pixels are ignored.

The shoulder pose (:mod:`shoulder_pose`) is a backward warp: each output voxel samples the CT where the turn
takes it from. Where that would be beyond a face of the CT (the sample chest CT's top face cuts its clavicles, so
lowering a girdle pulls in what lay above the scan), nothing is known; the warp kernel cuts the turn short there
(sampling at the face, which smears the girdle's section) and, where what it samples at the face is body (HU
above the truncation rule's ``BODY_HU``, or labelled: as in :mod:`truncation`, body at a face goes on beyond it,
air does not), records the voxel's cell on the shoulder field's coarse grid (cells of about 6 mm). Those cells
are the **unknown region**. A detector pixel whose ray, between
the source and the pixel, crosses an unknown cell says nothing true, as a ray through the continuation beyond a
cut face does not (:mod:`truncation`): :class:`UnknownRegion` gives those pixels, exactly on the cell grid
(a 3D walk, Amanatides & Woo 1987), and the exporter puts them under the ignore label with the truncated ones.
A cell is unknown when any of its voxels is (a superset of the voxels, by at most a cell).
"""

from __future__ import annotations

import numba
import numpy as np

from .truncation import detector_in_voxels

UNKNOWN_RULE = ("and pixels whose ray crosses tissue that the virtual patient's shoulder pose brought in from "
                "beyond a cut face (cells of the turn's coarse grid)")
UNKNOWN_SHORTFALL_VOXELS = 0.5  # a turn cut short by more than this (voxels) samples where nothing is known


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _axis_start(s, d, tm, lo, hi):  # pragma: no cover - compiled
    """One axis of a 3D Amanatides & Woo walk started at t = tm: (cell, step, next crossing t, t per cell)."""
    index = min(max(int(np.floor(s + tm * d)), lo), hi - 1)
    if d > 0.0:
        return index, 1, (index + 1 - s) / d, 1.0 / d
    if d < 0.0:
        return index, -1, (index - s) / d, -1.0 / d
    return index, 0, np.inf, np.inf


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _advance(index, step, next_t, delta, lo, hi, t1):  # pragma: no cover - compiled
    """The walk's step into the next cell along one axis: (cell, its exit t, whether the segment and the box
    go on into it)."""
    if next_t >= t1:
        return index, next_t, False
    index += step
    return index, next_t + delta, lo <= index < hi


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _ray_hits_cells(cells, box_lo, box_hi, s, d):  # pragma: no cover - compiled
    """Does the segment s + t d, t in [0, 1], cross a set cell of ``cells`` (k, j, i; unit cells, frame i, j,
    k with cell c spanning [c, c + 1))? The walk runs inside [box_lo, box_hi), the set cells' box (i, j, k).
    Scalars only: an array allocated per ray cost more than the walk."""
    t0, t1 = 0.0, 1.0
    for axis in range(3):
        if d[axis] == 0.0:
            if s[axis] < box_lo[axis] or s[axis] >= box_hi[axis]:
                return False
        else:
            ta, tb = (box_lo[axis] - s[axis]) / d[axis], (box_hi[axis] - s[axis]) / d[axis]
            if ta > tb:
                ta, tb = tb, ta
            t0, t1 = max(t0, ta), min(t1, tb)
    if t0 >= t1:
        return False
    tm = t0 + 1e-9 * (t1 - t0)
    i, si, ni, di = _axis_start(s[0], d[0], tm, box_lo[0], box_hi[0])
    j, sj, nj, dj = _axis_start(s[1], d[1], tm, box_lo[1], box_hi[1])
    k, sk, nk, dk = _axis_start(s[2], d[2], tm, box_lo[2], box_hi[2])
    while True:
        if cells[k, j, i]:
            return True
        if ni <= nj and ni <= nk:
            i, ni, going = _advance(i, si, ni, di, box_lo[0], box_hi[0], t1)
        elif nj <= nk:
            j, nj, going = _advance(j, sj, nj, dj, box_lo[1], box_hi[1], t1)
        else:
            k, nk, going = _advance(k, sk, nk, dk, box_lo[2], box_hi[2], t1)
        if not going:
            return False


@numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _unknown_kernel(cells, box_lo, box_hi, source, origin, column_step, row_step, out):  # pragma: no cover
    rows, cols = out.shape
    for r in numba.prange(rows):
        for c in range(cols):
            d = origin + c * column_step + r * row_step - source
            out[r, c] = _ray_hits_cells(cells, box_lo, box_hi, source, d)


class UnknownRegion:
    """Unknown cells of one virtual patient's grid; ``mask(geometry)`` gives the pixels whose ray crosses one."""

    rule = UNKNOWN_RULE  # what the sidecars add to the cut faces' ignore rule

    def __init__(self, cells: np.ndarray, steps_ijk: np.ndarray, ras_to_ijk: np.ndarray) -> None:
        """``cells`` (Kd, Jd, Id) bool: cell (k, j, i) spans voxels [k sk, (k + 1) sk) ... of the CT grid;
        ``steps_ijk``: voxels per cell along i, j, k; ``ras_to_ijk``: the (virtual patient's) grid."""
        self.cells = np.ascontiguousarray(cells, np.bool_)
        self.steps_ijk = np.asarray(steps_ijk, np.float64)
        self.ras_to_ijk = np.asarray(ras_to_ijk, np.float64)
        k, j, i = np.nonzero(self.cells)
        self.n_cells = len(k)
        # the set cells' box (i, j, k): rays that miss it are settled at once
        self._box_lo = np.array([i.min(), j.min(), k.min()] if self.n_cells else [0, 0, 0], np.int64)
        self._box_hi = np.array([i.max(), j.max(), k.max()] if self.n_cells else [-1, -1, -1], np.int64) + 1

    def volume_ml(self) -> float:
        """Volume of the unknown cells (ml)."""
        voxel_ml = abs(np.linalg.det(np.linalg.inv(self.ras_to_ijk)[:3, :3])) / 1000.0
        return float(self.n_cells * np.prod(self.steps_ijk) * voxel_ml)

    def mask(self, geometry) -> np.ndarray:
        """(rows, cols) bool: the pixel's ray crosses an unknown cell."""
        cols, rows = geometry.size
        out = np.zeros((rows, cols), np.bool_)
        if not self.n_cells:
            return out
        to_cells = 1.0 / self.steps_ijk  # the voxel frame of the truncation walks, then cells of steps voxels
        source, origin, column_step, row_step = (v * to_cells for v in detector_in_voxels(self.ras_to_ijk, geometry))
        _unknown_kernel(self.cells, self._box_lo, self._box_hi, source, origin, column_step, row_step, out)
        return out


__all__ = ["UNKNOWN_RULE", "UnknownRegion"]
