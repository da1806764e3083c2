"""The truncation mask's first kernel, kept as the test reference: a cell-by-cell 2D walk (Amanatides & Woo,
``truncation_walk.cell_walk_hits``) over each whole cut-face section, every pixel. truncation.py now settles
tiles of pixels whole where it can and walks the others over 8x8 blocks (passing empty ones, jumping over squares
of them, clipped to the body's box, walking cells only in mixed ones); both must agree (and test_truncation.py
checks the mask against the analytic cut cylinder)."""

from __future__ import annotations

import numba
import numpy as np

from XraySegSimLib.truncation_walk import beyond_interval as _beyond_interval, cell_walk_hits as _walk_hits


@numba.njit(parallel=True, nogil=True, boundscheck=False)
def reference_truncated_kernel(faces_i, faces_j, faces_k, limits, source, origin, column_step, row_step, shape_kji,
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
                t0, t1 = _beyond_interval(s[0], d0, ni, high, limits[0 + side])
                if not hit and t0 < t1 and _walk_hits(faces_i[side], s[1], s[2], d1, d2, t0, t1):
                    hit = True
                t0, t1 = _beyond_interval(s[1], d1, nj, high, limits[2 + side])
                if not hit and t0 < t1 and _walk_hits(faces_j[side], s[0], s[2], d0, d2, t0, t1):
                    hit = True
                t0, t1 = _beyond_interval(s[2], d2, nk, high, limits[4 + side])
                if not hit and t0 < t1 and _walk_hits(faces_k[side], s[0], s[1], d0, d1, t0, t1):
                    hit = True
            out[r, c] = hit


def reference_mask(cut_faces, geometry) -> np.ndarray:
    """(rows, cols) bool: CutFaces.mask computed with the cell-by-cell walk."""
    cols, rows = geometry.size
    out = np.zeros((rows, cols), np.bool_)
    source, origin, column_step, row_step = cut_faces.detector_in_voxels(geometry)
    reference_truncated_kernel(cut_faces.faces_i, cut_faces.faces_j, cut_faces.faces_k, cut_faces.limits, source,
                               origin, column_step, row_step, cut_faces.shape_kji, out)
    return out
