"""Truncation: detector pixels whose ray crosses body that the CT does not hold (issue 10, item 4).

A CT ends where the scan ended, not where the patient ends: its axial end faces (and, for a small field of view,
its side faces) cut through the body. A ray that crosses the body *beyond* such a cut face would have been
attenuated there in a real radiograph; the DRR, which integrates inside the grid only, knows nothing of it.
Those pixels say nothing true, neither the image nor the labels, so the exporter marks them "ignore" (nnU-Net
v2's ignore label) rather than inventing anatomy.

Rule (exact on the voxel grid, no sampling): on each of the six faces of the CT grid, the *cut section* is the
set of boundary voxels that are body (HU > ``BODY_HU``, or labelled). The body beyond the face is taken to
continue as that section extruded outward along the face normal, without end (a prism). A pixel is truncated
when its ray, between the source and the detector pixel, passes through the prism of any face. This contains
every ray that leaves or enters the CT through a cut face inside the body (the prism starts at the face), and
also the rays that miss the grid but cross the body's continuation (the neck above a chest CT that stops at the
clavicles). For a body that really is a prism beyond the cut (a cylinder cut across its axis) the rule is exact;
the tests check it against the analytic cylinder to a pixel.

Each prism test is a 2D voxel walk (Amanatides & Woo 1987) over the face's section along the ray's projection
onto the face, restricted to the part of the ray beyond the face plane: one numba pass per view. The walk goes
over blocks of 8 x 8 cells, walks the cells of a block only where it holds body and air, and crosses the empty
space around the body in jumps (the square of empty blocks around the current one), so a ray costs a few steps
rather than one per cell (chest AP export views at 512^2: 85 -> 22 ms CPU, the same pixels).
"""

from __future__ import annotations

import numba
import numpy as np

BODY_HU = -500  # voxels above this (or labelled) are body; the same rule as the detector placement
BLOCK = 8  # cells per side of the blocks the walk passes over whole (empty) or stops in (full)


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _walk_start(pb, pc, db, dc, t, t1, nb, nc):  # pragma: no cover - compiled
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


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _cell_walk_hits(section, pb, pc, db, dc, t0, t1):  # pragma: no cover - compiled
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
    ib, ic, step_b, next_b, delta_b, step_c, next_c, delta_c = _walk_start(pb, pc, db, dc, t0, t1, nb, nc)
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


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _walk_hits(section, blocks, reach, box, pb, pc, db, dc, t0, t1):  # pragma: no cover - compiled
    """``_cell_walk_hits`` a block at a time: the same walk over ``blocks`` (the section's BLOCK x BLOCK cells:
    0 none set, 1 some, 2 all), where a block with none is passed, a block with all is a hit, and only the
    cells of a block with some are walked (over the segment's t-interval inside that block). ``reach``: per
    block with none, how far (in blocks, chessboard) the nearest block with some is; from a block of reach r >= 2
    the walk jumps to where the segment leaves the square of blocks within r - 1. ``box``: (b low, b high,
    c low, c high) cell bounds of the set cells, high exclusive: the segment is clipped to it (no set cell lies
    outside), so most rays that pass beside the body's section cost two slab tests."""
    nc, nb = blocks.shape
    qb, qc, eb, ec = pb / BLOCK, pc / BLOCK, db / BLOCK, dc / BLOCK  # the same t in block units
    for axis in range(2):  # clipped to the set cells' box
        p = qb if axis == 0 else qc
        d = eb if axis == 0 else ec
        lo, n = box[2 * axis] / BLOCK, box[2 * axis + 1] / BLOCK
        if d == 0.0:
            if p < lo or p >= n:
                return False
        else:
            ta, tb = (lo - p) / d, (n - p) / d
            if ta > tb:
                ta, tb = tb, ta
            t0, t1 = max(t0, ta), min(t1, tb)
    if t0 >= t1:
        return False
    t = t0
    while True:  # (re)start the block walk at t: at the entry, and after each jump over empty blocks
        ib, ic, step_b, next_b, delta_b, step_c, next_c, delta_c = _walk_start(qb, qc, eb, ec, t, t1, nb, nc)
        while True:
            t_out = min(next_b, next_c, t1)
            state = blocks[ic, ib]
            if state == 2 and t_out > t:
                return True
            if state == 1 and _cell_walk_hits(section, pb, pc, db, dc, t, t_out):
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
def _beyond_interval(s, d, n, high):  # pragma: no cover - compiled
    """t-interval of [0, 1] where s + t d lies beyond the face (> n when ``high``, < 0 otherwise)."""
    plane = n if high else 0.0
    if d == 0.0:
        beyond = s > plane if high else s < plane
        return (0.0, 1.0) if beyond else (1.0, 0.0)
    t = (plane - s) / d
    if (d > 0.0) == high:  # moving outward through this face: beyond after t
        return max(t, 0.0), 1.0
    return 0.0, min(t, 1.0)


@numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _truncated_kernel(sections, blocks, reaches, boxes, source, origin, column_step, row_step, shape_kji,
                      out):  # pragma: no cover - compiled
    """``sections``, ``blocks``: per face (i low, i high, j low, j high, k low, k high) its body section and the
    section's block states (``_block_states``) and the reach of its empty blocks (``_block_reach``); ``boxes``
    (6, 4): the set cells' box of each section (``_set_box``; empty: the face is skipped)."""
    rows, cols = out.shape
    s = source
    for r in numba.prange(rows):
        for c in range(cols):
            d0 = origin[0] + c * column_step[0] + r * row_step[0] - s[0]
            d1 = origin[1] + c * column_step[1] + r * row_step[1] - s[1]
            d2 = origin[2] + c * column_step[2] + r * row_step[2] - s[2]
            hit = False
            for face in range(6):
                if hit:
                    break
                if boxes[face, 0] >= boxes[face, 1]:  # no body on this face
                    continue
                axis, high = face // 2, face % 2 == 1
                # i faces: section [k, j]; j faces: [k, i]; k faces: [j, i]
                if axis == 0:
                    t0, t1 = _beyond_interval(s[0], d0, shape_kji[2], high)
                    pb, pc, db, dc = s[1], s[2], d1, d2
                elif axis == 1:
                    t0, t1 = _beyond_interval(s[1], d1, shape_kji[1], high)
                    pb, pc, db, dc = s[0], s[2], d0, d2
                else:
                    t0, t1 = _beyond_interval(s[2], d2, shape_kji[0], high)
                    pb, pc, db, dc = s[0], s[1], d0, d1
                if t0 < t1 and _walk_hits(sections[face], blocks[face], reaches[face], boxes[face], pb, pc, db, dc,
                                             t0, t1):
                    hit = True
            out[r, c] = hit


def _block_states(section: np.ndarray) -> np.ndarray:
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


def _set_box(section: np.ndarray) -> np.ndarray:
    """(b low, b high, c low, c high) int64 of a section [c, b]'s set cells, high exclusive; (0, 0, 0, 0) if none."""
    rows, cols = np.flatnonzero(section.any(axis=1)), np.flatnonzero(section.any(axis=0))
    if rows.size == 0:
        return np.zeros(4, np.int64)
    return np.array([cols[0], cols[-1] + 1, rows[0], rows[-1] + 1], np.int64)


def _block_reach(blocks: np.ndarray) -> np.ndarray:
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


def _is_body(words: np.ndarray, body_hu: int) -> np.ndarray:
    words = words.astype(np.int64)
    return ((words & 0xFFFF).astype(np.uint16).view(np.int16) > body_hu) | (words >> 16 != 0)


class CutFaces:
    """The body's cut sections on the six faces of one CT grid; ``mask(geometry)`` gives the truncated pixels.

    Build it once per CT (or per virtual patient) from the projector's packed voxels (low 16 bits HU, high 16
    bits class) or from an HU array plus optional labels."""

    def __init__(self, hu_or_packed: np.ndarray, ras_to_ijk: np.ndarray, body_hu: int = BODY_HU,
                 labels: np.ndarray | None = None, packed: bool = True) -> None:
        """``hu_or_packed``: (k, j, i) packed uint32 words (``packed=True``) or HU values."""
        a = hu_or_packed
        self.shape_kji = np.array(a.shape, np.int64)
        self.ras_to_ijk = np.asarray(ras_to_ijk, np.float64)

        def body(section: np.ndarray, label_section: np.ndarray | None) -> np.ndarray:
            if packed:
                return np.ascontiguousarray(_is_body(section, body_hu), np.uint8)
            mask = section > body_hu
            if label_section is not None:
                mask |= label_section != 0
            return np.ascontiguousarray(mask, np.uint8)

        def lab(index) -> np.ndarray | None:
            return None if labels is None else labels[index]

        self.faces_i = np.stack([body(a[:, :, 0], lab((slice(None), slice(None), 0))),
                                 body(a[:, :, -1], lab((slice(None), slice(None), -1)))])
        self.faces_j = np.stack([body(a[:, 0, :], lab((slice(None), 0, slice(None)))),
                                 body(a[:, -1, :], lab((slice(None), -1, slice(None))))])
        self.faces_k = np.stack([body(a[0], lab(0)), body(a[-1], lab(-1))])
        sections = [section for faces in (self.faces_i, self.faces_j, self.faces_k) for section in faces]
        self._blocks = tuple(_block_states(section) for section in sections)
        self._sections = tuple(np.ascontiguousarray(section) for section in sections)
        self._reaches = tuple(_block_reach(blocks) for blocks in self._blocks)
        self._boxes = np.stack([_set_box(section) for section in sections])

    @property
    def cut_voxels(self) -> dict[str, int]:
        """Body voxels on each face (0 everywhere: the CT holds the whole body, nothing is truncated)."""
        names = ("i_low", "i_high", "j_low", "j_high", "k_low", "k_high")
        counts = [int(f.sum()) for faces in (self.faces_i, self.faces_j, self.faces_k) for f in faces]
        return dict(zip(names, counts))

    def mask(self, geometry) -> np.ndarray:
        """(rows, cols) bool: the pixel's ray crosses the body's continuation beyond a cut face."""
        cols, rows = geometry.size
        out = np.zeros((rows, cols), np.bool_)
        if not any(self.cut_voxels.values()):
            return out
        linear, shift = self.ras_to_ijk[:3, :3], self.ras_to_ijk[:3, 3] + 0.5  # voxel v spans [v, v + 1)
        source = linear @ np.asarray(geometry.source, float) + shift
        origin = linear @ np.asarray(geometry.origin, float) + shift
        column_step = linear @ (np.asarray(geometry.column_axis, float) * geometry.spacing[0])
        row_step = linear @ (np.asarray(geometry.row_axis, float) * geometry.spacing[1])
        _truncated_kernel(self._sections, self._blocks, self._reaches, self._boxes, source, origin, column_step,
                          row_step, self.shape_kji, out)
        return out


def truncated_mask(projector, geometry, body_hu: int = BODY_HU) -> np.ndarray:
    """Truncated pixels of ``geometry`` for a ``DrrProjector``'s CT (see the module docstring)."""
    return CutFaces(projector.packed, projector.ct.ras_to_ijk, body_hu).mask(geometry)


IGNORE_MASK_VALUE = 255  # value of unknown pixels in every class plane of masksTr/masksTs (classes are 0/1)
IGNORE_RULE = ("pixels whose ray crosses the body's continuation beyond a cut face of the CT (boundary voxels "
               f"with HU > {BODY_HU} or labelled, extruded outward): labelsTr 'ignore', masks {IGNORE_MASK_VALUE}")
