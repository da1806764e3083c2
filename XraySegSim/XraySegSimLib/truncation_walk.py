"""The 2D walks over one cut face's body section, for :mod:`truncation` (issue 10, item 4).

A section is the (c, b) grid of a CT face's boundary voxels that are body. A ray's part beyond the face projects
onto the face plane as a 2D segment; the ray crosses the body's continuation (the section extruded outward) when
that segment visits a set cell. The walks: cell by cell (Amanatides & Woo 1987), and over blocks of
BLOCK x BLOCK cells (passing empty ones, jumping over squares of them, walking cells only in mixed ones). The
per-section maps they read (block states, reach of empty blocks, the set cells' box, depth of full squares) are
built once per CT.
"""

from __future__ import annotations

import numba
import numpy as np

BLOCK = 8  # cells per side of the blocks the walk passes over whole (empty) or stops in (full)


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def walk_start(pb, pc, db, dc, t, t1, nb, nc):  # pragma: no cover - compiled
    """Start of a 2D Amanatides & Woo walk of (pb + t db, pc + t dc) over an nb x nc grid of unit cells, at t
    (nudged just inside [t, t1], so the start cell is the right one; clamped onto the grid): (ib, ic, step_b,
    next_b, delta_b, step_c, next_c, delta_c). The cell walk and the block walk (in block units) share it."""
    tm = t if t1 - t < 1e-12 else t + 1e-9 * (t1 - t)
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
    return ib, ic, step_b, next_b, delta_b, step_c, next_c, delta_c


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def clip_segment(pb, pc, db, dc, b_lo, b_hi, c_lo, c_hi, t0, t1):  # pragma: no cover - compiled
    """The part (t0, t1) of (pb + t db, pc + t dc), t in [t0, t1], inside [b_lo, b_hi) x [c_lo, c_hi); empty
    (t0 >= t1) when none."""
    for axis in range(2):
        p = pb if axis == 0 else pc
        d = db if axis == 0 else dc
        lo = b_lo if axis == 0 else c_lo
        hi = b_hi if axis == 0 else c_hi
        if d == 0.0:
            if p < lo or p >= hi:
                return 1.0, 0.0
        else:
            ta, tb = (lo - p) / d, (hi - p) / d
            if ta > tb:
                ta, tb = tb, ta
            t0, t1 = max(t0, ta), min(t1, tb)
    return t0, t1


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def walk_step(ib, ic, step_b, next_b, delta_b, step_c, next_c, delta_c, t1, nb, nc):  # pragma: no cover - compiled
    """One step of the 2D walk into the next cell: (inside, ib, ic, next_b, next_c); ``inside`` is False when the
    segment ends (at ``t1``) or leaves the nb x nc grid first."""
    if next_b <= next_c:
        if next_b >= t1:
            return False, ib, ic, next_b, next_c
        ib += step_b
        return 0 <= ib < nb, ib, ic, next_b + delta_b, next_c
    if next_c >= t1:
        return False, ib, ic, next_b, next_c
    ic += step_c
    return 0 <= ic < nc, ib, ic, next_b, next_c + delta_c


@numba.njit(cache=True, nogil=True, boundscheck=False)
def cell_walk_hits(section, pb, pc, db, dc, t0, t1):  # pragma: no cover - compiled
    """True if the 2D segment (pb + t db, pc + t dc), t in [t0, t1], visits a cell of ``section`` [c, b] that is
    set. Cells span [v, v + 1); the segment is first clipped to the section's extent."""
    nc, nb = section.shape
    t0, t1 = clip_segment(pb, pc, db, dc, 0.0, nb, 0.0, nc, t0, t1)
    if t0 >= t1:
        return False
    ib, ic, step_b, next_b, delta_b, step_c, next_c, delta_c = walk_start(pb, pc, db, dc, t0, t1, nb, nc)
    inside = True
    while inside:
        if section[ic, ib]:
            return True
        inside, ib, ic, next_b, next_c = walk_step(ib, ic, step_b, next_b, delta_b, step_c, next_c, delta_c, t1, nb,
                                                   nc)
    return False


@numba.njit(cache=True, nogil=True, boundscheck=False)
def block_walk_hits(section, blocks, reach, box, pb, pc, db, dc, t0, t1):  # pragma: no cover - compiled
    """``cell_walk_hits`` a block at a time: the same walk over ``blocks`` (the section's BLOCK x BLOCK cells:
    0 none set, 1 some, 2 all), where a block with none is passed, a block with all is a hit, and only the
    cells of a block with some are walked (over the segment's t-interval inside that block). ``reach``: per
    block with none, how far (in blocks, chessboard) the nearest block with some is; from a block of reach r >= 2
    the walk jumps to where the segment leaves the square of blocks within r - 1. ``box``: (b low, b high,
    c low, c high) cell bounds of the set cells, high exclusive: the segment is clipped to it (no set cell lies
    outside), so most rays that pass beside the body's section cost two slab tests."""
    nc, nb = blocks.shape
    qb, qc, eb, ec = pb / BLOCK, pc / BLOCK, db / BLOCK, dc / BLOCK  # the same t in block units
    # clipped to the set cells' box
    t0, t1 = clip_segment(qb, qc, eb, ec, box[0] / BLOCK, box[1] / BLOCK, box[2] / BLOCK, box[3] / BLOCK, t0, t1)
    if t0 >= t1:
        return False
    t = t0
    while True:  # (re)start the block walk at t: at the entry, and after each jump over empty blocks
        ib, ic, step_b, next_b, delta_b, step_c, next_c, delta_c = walk_start(qb, qc, eb, ec, t, t1, nb, nc)
        while True:
            t_out = min(next_b, next_c, t1)
            state = blocks[ic, ib]
            if state == 2 and t_out > t:
                return True
            if state == 1 and cell_walk_hits(section, pb, pc, db, dc, t, t_out):
                return True
            r = reach[ic, ib]
            if r >= 2:  # no body in the square of blocks within r - 1 of this one: leave it in one jump
                t_jump = t1
                if eb != 0.0:
                    t_jump = min(t_jump, ((ib + r if eb > 0.0 else ib - r + 1) - qb) / eb)
                if ec != 0.0:
                    t_jump = min(t_jump, ((ic + r if ec > 0.0 else ic - r + 1) - qc) / ec)
                if t_jump >= t1:
                    return False
                t = t_jump
                break
            if t_out >= t1:
                return False
            t = t_out
            if next_b <= next_c:
                ib += step_b
                next_b += delta_b
                if ib < 0 or ib >= nb:
                    return False
            else:
                ic += step_c
                next_c += delta_c
                if ic < 0 or ic >= nc:
                    return False


@numba.njit(cache=True, nogil=True, boundscheck=False)
def beyond_interval(s, d, n, high, depth):  # pragma: no cover - compiled
    """t-interval of [0, 1] where s + t d lies beyond the face and at most ``depth`` past its plane
    (n < x <= n + depth when ``high``, -depth <= x < 0 otherwise; ``depth`` may be inf)."""
    lo, hi = (n, n + depth) if high else (-depth, 0.0)
    if d == 0.0:
        return (0.0, 1.0) if lo < s < hi else (1.0, 0.0)
    ta, tb = (lo - s) / d, (hi - s) / d
    if ta > tb:
        ta, tb = tb, ta
    return max(ta, 0.0), min(tb, 1.0)


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def face_ray(face, s, d0, d1, d2, shape_kji, depth):  # pragma: no cover - compiled
    """(t0, t1, pb, pc, db, dc): the ray's t-interval beyond ``face`` (at most ``depth`` voxels past it) and its
    2D line in the face's section."""
    axis, high = face // 2, face % 2 == 1
    if axis == 0:  # i faces: section [k, j]; j faces: [k, i]; k faces: [j, i]
        t0, t1 = beyond_interval(s[0], d0, shape_kji[2], high, depth)
        return t0, t1, s[1], s[2], d1, d2
    if axis == 1:
        t0, t1 = beyond_interval(s[1], d1, shape_kji[1], high, depth)
        return t0, t1, s[0], s[2], d0, d2
    t0, t1 = beyond_interval(s[2], d2, shape_kji[0], high, depth)
    return t0, t1, s[0], s[1], d0, d1


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def meets_square(pb, pc, db, dc, t0, t1, b0, b1, c0, c1):  # pragma: no cover - compiled
    """True if (pb + t db, pc + t dc), t in [t0, t1], meets the square [b0, b1) x [c0, c1) over a length."""
    t0, t1 = clip_segment(pb, pc, db, dc, b0, b1, c0, c1, t0, t1)
    return t1 - t0 > 1e-9


@numba.njit(cache=True, nogil=True, boundscheck=False)
def deepest_full_square(blocks, depth, box, n_b, n_c, pb, pc, db, dc, t0, t1):  # pragma: no cover - compiled
    """Along the segment's blocks: the full square (all its cells set) around the visited block of greatest
    ``depth`` (chessboard radius, in blocks, of the full square around a full block; -1 not full), as cell bounds
    (b0, b1, c0, c1); b0 > b1 when the segment visits no full block."""
    nc, nb = blocks.shape
    qb, qc, eb, ec = pb / BLOCK, pc / BLOCK, db / BLOCK, dc / BLOCK
    t0, t1 = clip_segment(qb, qc, eb, ec, box[0] / BLOCK, box[1] / BLOCK, box[2] / BLOCK, box[3] / BLOCK, t0, t1)
    best, best_b, best_c = -1, 0, 0
    if t0 < t1:
        ib, ic, step_b, next_b, delta_b, step_c, next_c, delta_c = walk_start(qb, qc, eb, ec, t0, t1, nb, nc)
        inside = True
        while inside:
            if depth[ic, ib] > best:  # (any choice is safe: the caller tests the square against its rays)
                best, best_b, best_c = depth[ic, ib], ib, ic
                if best >= 2:
                    break
            inside, ib, ic, next_b, next_c = walk_step(ib, ic, step_b, next_b, delta_b, step_c, next_c, delta_c, t1,
                                                       nb, nc)
    if best < 0:
        return 1.0, 0.0, 1.0, 0.0
    eps = 1e-3  # cells: more than the walks' start nudge (1e-9 of a segment of <~ 1e4 cells)
    return ((best_b - best) * BLOCK + eps, min((best_b + best + 1) * BLOCK, n_b) - eps,
            (best_c - best) * BLOCK + eps, min((best_c + best + 1) * BLOCK, n_c) - eps)


def block_states(section: np.ndarray) -> np.ndarray:
    """(ceil(nc / BLOCK), ceil(nb / BLOCK)) uint8 of a section [c, b]: 0 no cell set, 1 some, 2 all (cells past
    the section's edge count as set: the walk never visits them)."""
    nc, nb = section.shape
    padded = np.ones((-(-nc // BLOCK) * BLOCK, -(-nb // BLOCK) * BLOCK), np.uint8)
    padded[:nc, :nb] = section != 0
    cells = padded.reshape(padded.shape[0] // BLOCK, BLOCK, padded.shape[1] // BLOCK, BLOCK).sum(axis=(1, 3))
    real = np.zeros_like(padded)
    real[:nc, :nb] = 1
    real_cells = real.reshape(cells.shape[0], BLOCK, cells.shape[1], BLOCK).sum(axis=(1, 3))
    some = cells - (BLOCK * BLOCK - real_cells) > 0  # set cells inside the section
    return np.where(cells == BLOCK * BLOCK, 2, some.astype(np.uint8)).astype(np.uint8)


def set_box(section: np.ndarray) -> np.ndarray:
    """(b low, b high, c low, c high) int64 of a section [c, b]'s set cells, high exclusive; (0, 0, 0, 0) if none."""
    rows, cols = np.flatnonzero(section.any(axis=1)), np.flatnonzero(section.any(axis=0))
    if rows.size == 0:
        return np.zeros(4, np.int64)
    return np.array([cols[0], cols[-1] + 1, rows[0], rows[-1] + 1], np.int64)


def block_reach(blocks: np.ndarray) -> np.ndarray:
    """int32 per block: 0 where some cell is set, else the chessboard distance (in blocks) to the nearest block
    with a set cell (blocks.size when there is none: every walk over the face leaves it in one jump)."""
    occupied = blocks != 0
    reach = np.where(occupied, 0, blocks.size).astype(np.int32)
    grown = occupied.copy()
    for r in range(1, max(blocks.shape) + 1):
        if grown.all() or not occupied.any():
            break
        padded = np.pad(grown, 1)
        grown = np.zeros_like(grown)
        for dy in range(3):  # 3 x 3 dilation: the blocks within chessboard distance r of an occupied one
            for dx in range(3):
                grown |= padded[dy: dy + blocks.shape[0], dx: dx + blocks.shape[1]]
        reach[grown & (reach == blocks.size)] = r
    return reach


def full_depth(blocks: np.ndarray) -> np.ndarray:
    """int32 per block: -1 unless full; else the chessboard radius (in blocks) of the full square around it."""
    full = blocks == 2
    depth = np.where(full, 0, -1).astype(np.int32)
    inner = full.copy()
    for r in range(1, 3):
        padded = np.pad(inner, 1)
        shrunk = np.ones_like(inner)
        for dy in range(3):
            for dx in range(3):
                shrunk &= padded[dy: dy + blocks.shape[0], dx: dx + blocks.shape[1]]
        inner = shrunk
        depth[inner] = r
    return depth
