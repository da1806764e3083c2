"""Truncation: detector pixels whose ray crosses body that the CT does not hold (issue 10, item 4).

A CT ends where the scan ended, not where the patient ends: its axial end faces (and, for a small field of view,
its side faces) cut through the body. A ray that crosses the body *beyond* such a cut face would have been
attenuated there in a real radiograph; the DRR, which integrates inside the grid only, knows nothing of it.
Those pixels say nothing true, neither the image nor the labels, so the exporter marks them "ignore" (nnU-Net
v2's ignore label) rather than inventing anatomy.

Rule (exact on the voxel grid, no sampling): on each of the six faces of the CT grid, the *cut section* is the
set of boundary voxels that are labelled, or body (HU > ``BODY_HU``) that belongs to the patient
(:func:`patient_parts`: the CT couch, its pad and rails are not the patient). The body beyond the face is taken to
continue as that section extruded outward along the face normal (a prism): without end beyond the faces
across the patient's long axis (the neck and head above a chest CT, the abdomen below it), and for
``SIDE_DEPTH_MM`` beyond the faces along the patient's sides, where a narrow field of view misses the rest of a
trunk's or limb's cross-section, not a body without end (:func:`face_limits`). A pixel is truncated when its
ray, between the source and the detector pixel, passes through the prism of any face. This contains every ray
that leaves or enters the CT through a cut face inside the body (the prism starts at the face), and also the
rays that miss the grid but cross the body's continuation (the neck above a chest CT that stops at the
clavicles). For a body that really is a prism beyond the cut (a cylinder cut across its axis) the rule is exact;
the tests check it against the analytic cylinder to a pixel. Why the sides are bounded: the full chest CT's
field of view grazes the patient's back (a sliver of 161 voxels on its posterior face); extruded without end
towards a PA view's source, the sliver's prism was crossed by oblique rays all over the image (fan lines, a
median of 12 % of each view). Bounded at 15-200 mm it flags 0.4-1.4 %, and the view's ignored share falls from
0.41 to 0.28 (100 mm; median of 30 views); the sample chest CT, cut across its axis only, keeps its 0.21.

Each prism test is a 2D voxel walk (Amanatides & Woo 1987) over the face's section along the ray's projection
onto the face, restricted to the part of the ray beyond the face plane (:mod:`truncation_walk`): one numba pass
per view. The walk goes over blocks of 8 x 8 cells, walks the cells of a block only where it holds body and air,
and crosses the empty space around the body in jumps, so a ray costs a few steps rather than one per cell.

Most rays are not walked at all: the pass goes over tiles of 8 x 8 pixels and settles a tile whole where it
can, by two exact convexity arguments (see ``_tile_misses`` and ``_tile_hit_whole``). A face is passed for a
tile when no ray of the tile can reach the face's body box beyond it; a tile is hit whole when its four corner
rays meet one full square of a section beyond its face. Only the tiles along the mask's edges are walked pixel
by pixel. The pixels are those of the walk everywhere (tested). One thread, 512^2 chest views: AP 85 ms (cell
walk) -> 8.9 ms (blocks) -> 2.2 ms (tiles); lateral 22 -> 5.1 ms.
"""

from __future__ import annotations

import numba
import numpy as np

from .truncation_walk import (block_reach, block_states, block_walk_hits, deepest_full_square, face_ray, full_depth,
                              meets_square, set_box)

# Voxels above this (or labelled) are body. Soft tissue and fat lie above -150 HU; the foam of couch pads and
# mattresses (-300 to -700 HU) lies against the patient's back and, at -500, joined the couch to the patient: on the
# full chest CT (its couch cut by the posterior face) 70-100 % of every PA view was ignored; now a median of 40 %.
BODY_HU = -200
PATIENT_PART_FRACTION = 0.2  # a part of the body at least this share of the largest is the patient's too (limbs)
SIDE_DEPTH_MM = 100.0  # how far the body goes on beyond a face along the patient's side (face_limits)
TILE = 8  # pixels per side of the tiles that are settled whole before any ray of theirs is walked


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _pixel(origin, column_step, row_step, r, c):  # pragma: no cover - compiled
    """Detector pixel (r, c)'s centre in voxel coordinates (r, c may be fractional)."""
    return (origin[0] + c * column_step[0] + r * row_step[0], origin[1] + c * column_step[1] + r * row_step[1],
            origin[2] + c * column_step[2] + r * row_step[2])


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _corner(face, s, origin, column_step, row_step, shape_kji, r, c):  # pragma: no cover - compiled
    """One tile corner for ``_tile_misses``: (beyond, its beyond part's section box lo_b, hi_b, lo_c, hi_c, the
    pixel's signed distance past the face plane along the face's axis, the pixel's section coordinates b, c)."""
    axis = face // 2
    n = shape_kji[2] if axis == 0 else (shape_kji[1] if axis == 1 else shape_kji[0])
    p0, p1, p2 = _pixel(origin, column_step, row_step, r, c)
    # the unbounded part beyond the face holds the bounded one, so a miss of it is a miss of the continuation
    t0, t1, pb, pc, db, dc = face_ray(face, s, p0 - s[0], p1 - s[1], p2 - s[2], shape_kji, np.inf)
    side = (p0 if axis == 0 else (p1 if axis == 1 else p2)) - (n if face % 2 == 1 else 0.0)
    lo_b, hi_b, lo_c, hi_c = np.inf, -np.inf, np.inf, -np.inf
    if t0 < t1:
        b0, b1, c0, c1 = pb + t0 * db, pb + t1 * db, pc + t0 * dc, pc + t1 * dc
        lo_b, hi_b, lo_c, hi_c = min(b0, b1), max(b0, b1), min(c0, c1), max(c0, c1)
    if (side >= 0.0) if face % 2 == 1 else (side <= 0.0):
        # On or beyond the plane the pixel is a corner of the region even when its own ray's part beyond the
        # face is empty (on the plane, or rounded away): its neighbours' parts may reach it.
        lo_b, hi_b, lo_c, hi_c = min(lo_b, pb + db), max(hi_b, pb + db), min(lo_c, pc + dc), max(hi_c, pc + dc)
    return t0 < t1, lo_b, hi_b, lo_c, hi_c, side, pb + db, pc + dc


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _edge_crossing(side_a, b_a, c_a, side_b, b_b, c_b):  # pragma: no cover - compiled
    """Where the tile edge a-b crosses the face plane (section coordinates, as a box), or an empty box."""
    if (side_a > 0.0) == (side_b > 0.0):
        return np.inf, -np.inf, np.inf, -np.inf
    w = side_a / (side_a - side_b)
    xb, xc = b_a + w * (b_b - b_a), c_a + w * (c_b - c_a)
    return xb, xb, xc, xc


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _tile_misses(face, box, s, origin, column_step, row_step, shape_kji, r_lo, r_hi, c_lo, c_hi):  # pragma: no cover
    """How many of the tile's corner rays reach beyond ``face``, or -1 when no ray of the tile can meet the face's
    body box (``box``) there. Why that is exact: the rays' parts beyond the face fill the pyramid (source, tile)
    cut by the face's half-space, a convex set whose corners are the corner rays' beyond-part ends, the tile
    corners on or beyond the plane and the points where the tile's edges cross it; its bounding box in section
    coordinates holds every such part."""
    e0, lb0, hb0, lc0, hc0, s0, b0, c0 = _corner(face, s, origin, column_step, row_step, shape_kji, r_lo, c_lo)
    e1, lb1, hb1, lc1, hc1, s1, b1, c1 = _corner(face, s, origin, column_step, row_step, shape_kji, r_lo, c_hi)
    e2, lb2, hb2, lc2, hc2, s2, b2, c2 = _corner(face, s, origin, column_step, row_step, shape_kji, r_hi, c_hi)
    e3, lb3, hb3, lc3, hc3, s3, b3, c3 = _corner(face, s, origin, column_step, row_step, shape_kji, r_hi, c_lo)
    lo_b, hi_b = min(lb0, lb1, lb2, lb3), max(hb0, hb1, hb2, hb3)
    lo_c, hi_c = min(lc0, lc1, lc2, lc3), max(hc0, hc1, hc2, hc3)
    for lb, hb, lc, hc in (_edge_crossing(s0, b0, c0, s1, b1, c1), _edge_crossing(s1, b1, c1, s2, b2, c2),
                           _edge_crossing(s2, b2, c2, s3, b3, c3), _edge_crossing(s3, b3, c3, s0, b0, c0)):
        lo_b, hi_b, lo_c, hi_c = min(lo_b, lb), max(hi_b, hb), min(lo_c, lc), max(hi_c, hc)
    margin = 1e-6  # rounding of the corners' coordinates
    if hi_b < box[0] - margin or lo_b > box[1] + margin or hi_c < box[2] - margin or lo_c > box[3] + margin:
        return -1
    return int(e0) + int(e1) + int(e2) + int(e3)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _tile_hit_whole(face, section, blocks, depth, box, limit, s, origin, column_step, row_step, shape_kji, r_lo,
                    r_hi, c_lo, c_hi):  # pragma: no cover - compiled
    """True when every ray of the tile crosses ``face``'s body continuation. Why that is exact: the pixels whose
    ray meets a convex set C beyond the face form a convex region of the detector (if rays to p and q meet C at
    x and y, the ray to any mix of p and q meets C at a mix of x and y), so when the four corner rays meet one
    full square of the section (C: its prism), every ray of the tile does. The square: the deepest full one that
    the centre ray passes, shrunk a little so that "meets" means "enters a set cell"."""
    p0, p1, p2 = _pixel(origin, column_step, row_step, (r_lo + r_hi) * 0.5, (c_lo + c_hi) * 0.5)
    t0, t1, pb, pc, db, dc = face_ray(face, s, p0 - s[0], p1 - s[1], p2 - s[2], shape_kji, limit)
    if t0 >= t1:
        return False
    b0, b1, q0, q1 = deepest_full_square(blocks, depth, box, section.shape[1], section.shape[0], pb, pc, db, dc, t0,
                                         t1)
    if b0 > b1:
        return False
    for corner in range(4):
        p0, p1, p2 = _pixel(origin, column_step, row_step, r_lo if corner < 2 else r_hi,
                            c_lo if corner % 2 == 0 else c_hi)
        t0, t1, pb, pc, db, dc = face_ray(face, s, p0 - s[0], p1 - s[1], p2 - s[2], shape_kji, limit)
        if not meets_square(pb, pc, db, dc, t0, t1, b0, b1, q0, q1):
            return False
    return True


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _pixel_hit(sections, blocks, reaches, boxes, limits, active, s, origin, column_step, row_step, shape_kji, r,
               c):  # pragma: no cover - compiled
    """The walk of pixel (r, c)'s ray over the sections of the faces in the bit set ``active``."""
    p0, p1, p2 = _pixel(origin, column_step, row_step, r, c)
    for face in range(6):
        if active & (1 << face):
            t0, t1, pb, pc, db, dc = face_ray(face, s, p0 - s[0], p1 - s[1], p2 - s[2], shape_kji, limits[face])
            if t0 < t1 and block_walk_hits(sections[face], blocks[face], reaches[face], boxes[face], pb, pc, db, dc,
                                           t0, t1):
                return True
    return False


@numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _truncated_kernel(sections, blocks, reaches, depths, boxes, limits, source, origin, column_step, row_step,
                      shape_kji, out):  # pragma: no cover - compiled
    """``out`` (zeroed): per pixel, whether its ray crosses a face's body continuation; a tile of TILE x TILE
    pixels at a time. ``sections``, ``blocks``, ``reaches``, ``depths``: per face (i low, i high, j low, j high,
    k low, k high) its body section and the section's maps (:mod:`truncation_walk`); ``boxes`` (6, 4): the set
    cells' box of each section (empty: the face is skipped); ``limits`` (6,): how far, in voxels along its axis,
    each face's continuation reaches (inf: without end)."""
    rows, cols = out.shape
    for tile_row in numba.prange(-(-rows // TILE)):
        r_lo, r_hi = tile_row * TILE, min(tile_row * TILE + TILE, rows) - 1
        for c_lo in range(0, cols, TILE):
            c_hi = min(c_lo + TILE, cols) - 1
            active, whole = 0, False  # active: bit set of the faces some ray of the tile may cross
            for face in range(6):
                if whole:
                    break
                if boxes[face, 0] >= boxes[face, 1]:
                    continue
                beyond = _tile_misses(face, boxes[face], source, origin, column_step, row_step, shape_kji, r_lo,
                                      r_hi, c_lo, c_hi)
                if beyond < 0:
                    continue
                active |= 1 << face
                if beyond == 4:
                    whole = _tile_hit_whole(face, sections[face], blocks[face], depths[face], boxes[face],
                                            limits[face], source, origin, column_step, row_step, shape_kji, r_lo,
                                            r_hi, c_lo, c_hi)
            for r in range(r_lo, r_hi + 1):
                for c in range(c_lo, c_hi + 1):
                    out[r, c] = whole or (active != 0 and _pixel_hit(sections, blocks, reaches, boxes, limits, active,
                                                                     source, origin, column_step, row_step,
                                                                     shape_kji, r, c))


def _fine(coarse_section: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A coarse face section back on the face's own grid (each coarse cell covers 2 x 2 voxels)."""
    return np.repeat(np.repeat(coarse_section, 2, 0), 2, 1)[:shape[0], :shape[1]]


def _hu_body_and_labelled(values: np.ndarray, labels: np.ndarray | None, packed: bool, body_hu: int
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(HU above ``body_hu``, labelled) of packed words (low 16 bits HU, high 16 bits class), or of HU values
    and their labels (or none)."""
    if packed:
        words = values.astype(np.int64)
        return (words & 0xFFFF).astype(np.uint16).view(np.int16) > body_hu, (words >> 16) != 0
    return values > body_hu, np.zeros(values.shape, bool) if labels is None else labels != 0


def _coarse_body(a: np.ndarray, packed: bool, body_hu: int, labels: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(body, labelled) on a grid 2x coarser per axis (a coarse voxel is set when any of its 8 voxels is), built
    two slices at a time so that no full-size temporary is made (the packed chest CT has 35 M words)."""
    k, j, i = a.shape
    shape = ((k + 1) // 2, (j + 1) // 2, (i + 1) // 2)
    body, labelled = np.zeros(shape, np.bool_), np.zeros(shape, np.bool_)

    def pooled(slab: np.ndarray) -> np.ndarray:
        plane = np.pad(slab.any(0), ((0, j % 2), (0, i % 2)))
        return plane.reshape(shape[1], 2, shape[2], 2).any((1, 3))

    for z in range(0, k, 2):
        hu_body, has_label = _hu_body_and_labelled(a[z:z + 2], None if labels is None else labels[z:z + 2], packed,
                                                   body_hu)
        body[z // 2], labelled[z // 2] = pooled(hu_body | has_label), pooled(has_label)
    return body, labelled


def patient_parts(coarse_body: np.ndarray, coarse_labelled: np.ndarray | None = None,
                  fraction: float = PATIENT_PART_FRACTION) -> np.ndarray:
    """The patient in a (coarse) body mask: its largest 6-connected part, every part at least ``fraction`` of its
    size (a leg beside the other), and every part that holds a label (an arm apart from the trunk). What lies
    apart from the patient unlabelled (the couch shell and rails, a positioning aid, a tube) is dropped; so is an
    unlabelled arm that the scan shows apart from the trunk."""
    import scipy.ndimage as ndi

    parts, count = ndi.label(coarse_body)
    if count <= 1:
        return coarse_body
    sizes = np.bincount(parts.ravel())
    sizes[0] = 0
    keep = sizes >= fraction * sizes.max()
    if coarse_labelled is not None:
        keep[np.unique(parts[coarse_labelled])] = True
    keep[0] = False
    return keep[parts]


def face_limits(ras_to_ijk: np.ndarray, side_depth_mm: float = SIDE_DEPTH_MM) -> np.ndarray:
    """(6,) float: how far, in voxels along each face's axis, the body's continuation beyond it reaches. The
    faces across the patient's long axis (the grid axis closest to S) go on without end: the neck, the head,
    the abdomen, the legs. Beyond a face along the patient's side (a field of view narrower than the body) what
    is missing is the rest of a trunk's or a limb's cross-section, at most ``side_depth_mm`` deep."""
    ijk_to_ras = np.linalg.inv(np.asarray(ras_to_ijk, np.float64))[:3, :3]
    spacing = np.linalg.norm(ijk_to_ras, axis=0)
    long_axis = int(np.argmax(np.abs(ijk_to_ras[2]) / spacing))
    return np.array([np.inf if face // 2 == long_axis else side_depth_mm / spacing[face // 2]
                     for face in range(6)], np.float64)


def detector_in_voxels(ras_to_ijk: np.ndarray, geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(source, first pixel, column step, row step) of ``geometry`` in the voxel coordinates of ``ras_to_ijk``
    shifted by 0.5, so that voxel v spans [v, v + 1): the frame of the walks here and in :mod:`unknown_region`."""
    linear, shift = ras_to_ijk[:3, :3], ras_to_ijk[:3, 3] + 0.5
    source = linear @ np.asarray(geometry.source, float) + shift
    origin = linear @ np.asarray(geometry.origin, float) + shift
    column_step = linear @ (np.asarray(geometry.column_axis, float) * geometry.spacing[0])
    row_step = linear @ (np.asarray(geometry.row_axis, float) * geometry.spacing[1])
    return source, origin, column_step, row_step


class CutFaces:
    """The body's cut sections on the six faces of one CT grid; ``mask(geometry)`` gives the truncated pixels.

    Build it once per CT (or per virtual patient) from the projector's packed voxels (low 16 bits HU, high 16
    bits class) or from an HU array plus optional labels."""

    def __init__(self, hu_or_packed: np.ndarray, ras_to_ijk: np.ndarray, body_hu: int = BODY_HU,
                 labels: np.ndarray | None = None, packed: bool = True,
                 side_depth_mm: float = SIDE_DEPTH_MM, unknown=None) -> None:
        """``hu_or_packed``: (k, j, i) packed uint32 words (``packed=True``) or HU values. ``side_depth_mm``:
        how far the body goes on beyond the faces along the patient's sides (see :func:`face_limits`).
        ``unknown``: an :class:`~unknown_region.UnknownRegion` (a virtual patient's shoulder pose) whose pixels
        are masked too."""
        self.unknown = unknown
        a = hu_or_packed
        self.shape_kji = np.array(a.shape, np.int64)
        self.ras_to_ijk = np.asarray(ras_to_ijk, np.float64)
        self.limits = face_limits(self.ras_to_ijk, side_depth_mm)
        patient = patient_parts(*_coarse_body(a, packed, body_hu, labels))

        def body(section: np.ndarray, label_section: np.ndarray | None, index) -> np.ndarray:
            # HU body counts where it is the patient's; a labelled voxel is anatomy wherever it lies
            hu_body, labelled = _hu_body_and_labelled(section, label_section, packed, body_hu)
            mask = (hu_body & _fine(patient[index], section.shape)) | labelled
            return np.ascontiguousarray(mask, np.uint8)

        def section(index):  # one face; the coarse grid's face has the same index
            return body(a[index], None if labels is None else labels[index], index)

        every = slice(None)
        self.faces_i = np.stack([section((every, every, 0)), section((every, every, -1))])
        self.faces_j = np.stack([section((every, 0, every)), section((every, -1, every))])
        self.faces_k = np.stack([section((0, every, every)), section((-1, every, every))])
        sections = [section for faces in (self.faces_i, self.faces_j, self.faces_k) for section in faces]
        self._blocks = tuple(block_states(section) for section in sections)
        self._sections = tuple(np.ascontiguousarray(section) for section in sections)
        self._reaches = tuple(block_reach(blocks) for blocks in self._blocks)
        self._boxes = np.stack([set_box(section) for section in sections])
        self._depths = tuple(full_depth(blocks) for blocks in self._blocks)
        names = ("i_low", "i_high", "j_low", "j_high", "k_low", "k_high")
        self._cut_voxels = {name: int(np.count_nonzero(section)) for name, section in zip(names, sections)}

    @property
    def rule(self) -> str:
        """The ignore rule of this mask, for the sidecars."""
        return IGNORE_RULE if self.unknown is None else f"{IGNORE_RULE}; {self.unknown.rule}"

    @property
    def cut_voxels(self) -> dict[str, int]:
        """Body voxels on each face (0 everywhere: the CT holds the whole body, nothing is truncated)."""
        return dict(self._cut_voxels)

    def detector_in_voxels(self, geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(source, first pixel, column step, row step) in voxel coordinates shifted by 0.5, so that voxel v
        spans [v, v + 1): the frame of the kernels."""
        return detector_in_voxels(self.ras_to_ijk, geometry)

    def mask(self, geometry) -> np.ndarray:
        """(rows, cols) bool: the pixel's ray crosses the body's continuation beyond a cut face (or, with
        ``unknown``, an unknown cell)."""
        cols, rows = geometry.size
        out = np.zeros((rows, cols), np.bool_)
        if any(self._cut_voxels.values()):
            source, origin, column_step, row_step = self.detector_in_voxels(geometry)
            _truncated_kernel(self._sections, self._blocks, self._reaches, self._depths, self._boxes, self.limits,
                              source, origin, column_step, row_step, self.shape_kji, out)
        if self.unknown is not None:  # (the kernel writes every pixel: the unknown ones are added after it)
            out |= self.unknown.mask(geometry)
        return out


def truncated_mask(projector, geometry, body_hu: int = BODY_HU) -> np.ndarray:
    """Truncated pixels of ``geometry`` for a ``DrrProjector``'s CT (see the module docstring)."""
    return CutFaces(projector.packed, projector.ct.ras_to_ijk, body_hu).mask(geometry)


IGNORE_MASK_VALUE = 255  # value of unknown pixels in every class plane of masksTr/masksTs (classes are 0/1)
IGNORE_RULE = ("pixels whose ray crosses the body's continuation beyond a cut face of the CT (boundary voxels "
               f"with HU > {BODY_HU} or labelled, of the patient's connected body, not the couch; extruded outward, "
               f"without end across the long axis, {SIDE_DEPTH_MM:g} mm along the sides): "
               f"labelsTr 'ignore', masks {IGNORE_MASK_VALUE}")
