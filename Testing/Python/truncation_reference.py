"""The truncation mask's first kernel, kept as the test reference: a cell-by-cell 2D walk (Amanatides & Woo)
over each cut face's section. truncation.py now walks 8x8 blocks (passing empty ones, jumping over squares of
them, walking cells only in mixed ones); both must agree."""

from __future__ import annotations

import numba
import numpy as np

from XraySegSimLib.truncation import _beyond_interval


@numba.njit(nogil=True, boundscheck=False)
def _walk_hits(section, pb, pc, db, dc, t0, t1):  # pragma: no cover - compiled
    """True if the 2D segment (pb + t db, pc + t dc), t in [t0, t1], visits a cell of ``section`` [c, b] that is
    set. Cells span [v, v + 1); the segment is first clipped to the section's extent."""
    nc, nb = section.shape
    for axis in range(2):
        p = pb if axis == 0 else pc
        d = db if axis == 0 else dc
        n = nb if axis == 0 else nc
        if d == 0.0:
            if p < 0.0 or p >= n:
                return False
        else:
            ta, tb = (0.0 - p) / d, (n - p) / d
            if ta > tb:
                ta, tb = tb, ta
            t0, t1 = max(t0, ta), min(t1, tb)
    if t0 >= t1:
        return False
    tm = t0 if t1 - t0 < 1e-12 else t0 + 1e-9 * (t1 - t0)  # just inside, so the start cell is the right one
    ib = min(max(int(np.floor(pb + tm * db)), 0), nb - 1)
    ic = min(max(int(np.floor(pc + tm * dc)), 0), nc - 1)
    inf = np.inf
    step_b, next_b, delta_b = 0, inf, inf
    if db > 0.0:
        step_b, next_b, delta_b = 1, (ib + 1 - pb) / db, 1.0 / db
    elif db < 0.0:
        step_b, next_b, delta_b = -1, (ib - pb) / db, -1.0 / db
    step_c, next_c, delta_c = 0, inf, inf
    if dc > 0.0:
        step_c, next_c, delta_c = 1, (ic + 1 - pc) / dc, 1.0 / dc
    elif dc < 0.0:
        step_c, next_c, delta_c = -1, (ic - pc) / dc, -1.0 / dc
    while True:
        if section[ic, ib]:
            return True
        if next_b <= next_c:
            if next_b >= t1:
                return False
            ib += step_b
            next_b += delta_b
            if ib < 0 or ib >= nb:
                return False
        else:
            if next_c >= t1:
                return False
            ic += step_c
            next_c += delta_c
            if ic < 0 or ic >= nc:
                return False


@numba.njit(parallel=True, nogil=True, boundscheck=False)
def reference_truncated_kernel(faces_i, faces_j, faces_k, source, origin, column_step, row_step, shape_kji,
                      out):  # pragma: no cover - compiled
    nk, nj, ni = shape_kji[0], shape_kji[1], shape_kji[2]
    rows, cols = out.shape
    s = source
    for r in numba.prange(rows):
        for c in range(cols):
            d0 = origin[0] + c * column_step[0] + r * row_step[0] - s[0]
            d1 = origin[1] + c * column_step[1] + r * row_step[1] - s[1]
            d2 = origin[2] + c * column_step[2] + r * row_step[2] - s[2]
            hit = False
            for side in range(2):
                high = side == 1
                # i faces: section [k, j]; j faces: [k, i]; k faces: [j, i]
                t0, t1 = _beyond_interval(s[0], d0, ni, high)
                if not hit and t0 < t1 and _walk_hits(faces_i[side], s[1], s[2], d1, d2, t0, t1):
                    hit = True
                t0, t1 = _beyond_interval(s[1], d1, nj, high)
                if not hit and t0 < t1 and _walk_hits(faces_j[side], s[0], s[2], d0, d2, t0, t1):
                    hit = True
                t0, t1 = _beyond_interval(s[2], d2, nk, high)
                if not hit and t0 < t1 and _walk_hits(faces_k[side], s[0], s[1], d0, d1, t0, t1):
                    hit = True
            out[r, c] = hit



def reference_mask(cut_faces, geometry) -> np.ndarray:
    """(rows, cols) bool: CutFaces.mask computed with the cell-by-cell walk."""
    cols, rows = geometry.size
    out = np.zeros((rows, cols), np.bool_)
    linear, shift = cut_faces.ras_to_ijk[:3, :3], cut_faces.ras_to_ijk[:3, 3] + 0.5
    source = linear @ np.asarray(geometry.source, float) + shift
    origin = linear @ np.asarray(geometry.origin, float) + shift
    column_step = linear @ (np.asarray(geometry.column_axis, float) * geometry.spacing[0])
    row_step = linear @ (np.asarray(geometry.row_axis, float) * geometry.spacing[1])
    reference_truncated_kernel(cut_faces.faces_i, cut_faces.faces_j, cut_faces.faces_k, source, origin,
                               column_step, row_step, cut_faces.shape_kji, out)
    return out
