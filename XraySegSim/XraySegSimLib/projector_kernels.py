"""Voxel packing, the hull of the non-empty voxels, and the per-ray traversal shared by the CPU (numba) and
CUDA kernels.

``make_trace_ray`` returns plain Python on purpose: it is compiled with ``numba.njit`` for the CPU kernel and
with ``numba.cuda.jit(device=True)`` for the GPU kernel (projector_gpu), so both devices run the same
arithmetic on the same packed volume.

Empty-space skipping: voxels with no attenuation (HU <= -1000) and no label add nothing to any output, and on
CTs they surround the body (air, the scanner's padding outside its field of view). Each ray is therefore
clipped, before it is traversed, to a 13-direction discrete-orientation polytope ("k-DOP": the 3 axes, 6 face
and 4 body diagonals of the IJK grid) that holds every non-empty voxel. The clip costs ~13 slab tests per ray
and nothing per voxel step (a per-step test for empty bricks cost 12% of every step here, more than it saved).
Inside the polytope the traversal is the exact one, so the values are those of the whole-box traversal.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .projector_palette import voxel_hu_class

AIR_HU = -1000
# The per-pair tables of "no palette": the volume holds packed words (class << 16 | HU).
NO_PALETTE_HU = np.zeros(0, np.int16)
NO_PALETTE_CLASS = np.zeros(0, np.uint16)
# Directions of the polytope's slabs in IJK: axes first (with bounds [0, n] they are the volume box).
HULL_DIRECTIONS = np.array(
    [[1, 0, 0], [0, 1, 0], [0, 0, 1],
     [1, 1, 0], [1, -1, 0], [1, 0, 1], [1, 0, -1], [0, 1, 1], [0, 1, -1],
     [1, 1, 1], [1, 1, -1], [1, -1, 1], [1, -1, -1]], np.float64)


@numba.njit(parallel=True, cache=True, nogil=True)
def pack_voxels(hu, labels, class_lut, has_labels, packed):  # pragma: no cover - compiled
    """packed = (class_lut[label] << 16) | uint16(round(clip(HU, int16 range)))."""
    nk, nj, ni = hu.shape
    for k in numba.prange(nk):
        for j in range(nj):
            for i in range(ni):
                h, c = voxel_hu_class(hu, labels, class_lut, has_labels, k, j, i)
                packed[k, j, i] = np.uint32((c << 16) | (h & 0xFFFF))


@numba.njit(inline="always", nogil=True)
def decode_word(word, pair_hu, pair_class):  # pragma: no cover - compiled
    """(HU, class index) of a voxel word: a packed word, or a palette index when ``pair_class`` is not empty."""
    if pair_class.shape[0] > 0:
        return np.int64(pair_hu[word]), np.int64(pair_class[word])
    return np.int64(np.int16(word & 0xFFFF)), word >> 16


@numba.njit(parallel=True, cache=True, nogil=True)
def row_extremes(packed, hu_min, pair_hu, pair_class):  # pragma: no cover - compiled
    """(nk, nj, 2) first and last i of the voxels of each row (k, j) with HU > ``hu_min`` or a label; -1 where
    none. With ``hu_min`` = AIR_HU these are the non-empty voxels (the hull below); the exporter uses it with its
    body threshold to place the detector. ``packed`` holds packed words (pass NO_PALETTE_HU, NO_PALETTE_CLASS:
    no defaults here, numba's disk cache misses on omitted array arguments), or palette indices with the
    palette's ``pair_hu`` and ``pair_class`` (projector_palette)."""
    nk, nj, ni = packed.shape
    out = np.full((nk, nj, 2), -1, np.int32)
    for k in numba.prange(nk):
        for j in range(nj):
            for i in range(ni):
                h, c = decode_word(np.int64(packed[k, j, i]), pair_hu, pair_class)
                if h > hu_min or c != 0:
                    out[k, j, 0] = i
                    break
            if out[k, j, 0] < 0:
                continue
            for i in range(ni - 1, -1, -1):
                h, c = decode_word(np.int64(packed[k, j, i]), pair_hu, pair_class)
                if h > hu_min or c != 0:
                    out[k, j, 1] = i
                    break
    return out


def attenuation_table(mu_scale: float, mu_offset: float) -> np.ndarray:
    """mu (1/mm) of every 16-bit HU code: max(0, mu_offset + mu_scale * HU) in float64, the very expression the
    traversal used to evaluate per voxel step (a table lookup is cheaper, the values are the same bit for bit)."""
    hu = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.float64)
    return np.maximum(0.0, mu_offset + mu_scale * hu)


def check_voxel_tables(voxels: np.ndarray, mu_lut: np.ndarray | None, pair_class: np.ndarray) -> None:
    """Refuse voxels and tables that do not go together (the kernels run without bounds checks): uint16 palette
    indices with their pair tables, or uint32 packed words with empty ones and tables per 16-bit HU code."""
    palette = pair_class.shape[0] > 0
    if (voxels.dtype == np.uint16) != palette or (not palette and voxels.dtype != np.uint32):
        raise ValueError(f"{voxels.dtype} voxels with {'a' if palette else 'no'} palette: uint16 palette indices "
                         "need their pair tables, uint32 packed words none")
    if mu_lut is not None and mu_lut.shape[0] != (pair_class.shape[0] if palette else 65536):
        raise ValueError(f"attenuation table of {mu_lut.shape[0]} entries for "
                         f"{'a palette of %d pairs' % pair_class.shape[0] if palette else '16-bit HU codes'}")


def box_hull(shape_kji: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The volume box as a polytope: (directions, lower, upper) for the three axes (no skipping)."""
    nk, nj, ni = shape_kji
    return HULL_DIRECTIONS[:3].copy(), np.zeros(3), np.array([ni, nj, nk], np.float64)


@numba.njit(cache=True, nogil=True)
def _hull_bounds(extremes, directions):  # pragma: no cover - compiled
    """Lower and upper bound of every direction over the voxel cubes of the row extremes (no temporaries)."""
    n = directions.shape[0]
    lower = np.full(n, np.inf)
    upper = np.full(n, -np.inf)
    nk, nj = extremes.shape[0], extremes.shape[1]
    for k in range(nk):
        for j in range(nj):
            if extremes[k, j, 0] < 0:
                continue
            for end in range(2):  # along a row the projection is linear in i: its two ends bound it
                i = extremes[k, j, end]
                for h in range(n):
                    a, b, c = directions[h, 0], directions[h, 1], directions[h, 2]
                    corner = a * i + b * j + c * k  # the voxel's lower corner; the cube adds the negative
                    low = corner + min(a, 0.0) + min(b, 0.0) + min(c, 0.0)  # or the positive components
                    high = corner + max(a, 0.0) + max(b, 0.0) + max(c, 0.0)
                    lower[h] = min(lower[h], low)
                    upper[h] = max(upper[h], high)
    return lower, upper


def matter_hull(packed: np.ndarray, pair_hu: np.ndarray = NO_PALETTE_HU, pair_class: np.ndarray = NO_PALETTE_CLASS
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(directions, lower, upper): the tightest 13-direction polytope (in IJK + 0.5, voxel v = [v, v+1))
    holding every non-empty voxel; an empty polytope (lower > upper) when all voxels are empty. ``packed``:
    packed words, or palette indices with their ``pair_hu`` and ``pair_class``."""
    check_voxel_tables(packed, None, pair_class)
    lower, upper = _hull_bounds(row_extremes(packed, np.int64(AIR_HU), pair_hu, pair_class), HULL_DIRECTIONS)
    return HULL_DIRECTIONS.copy(), lower, upper


def make_accumulate(with_materials: bool):
    """``accumulate``: add one voxel segment to the ray's sums (attenuation, material channels, the run of the
    current class); returns the updated scalars. Called from the two places of the traversal that end a
    segment (plain Python, compiled for the CPU or CUDA like ``trace_ray``)."""

    def accumulate(word, segment, t, total, m0, m1, m2, m3, run_class, run_start, mu_lut, material_lut,
                   soft_only_below, thickness, class_rows, row, col, length_mm, pair_hu, pair_class,
                   palette):  # pragma: no cover - compiled
        # A palette index: the tables are per pair; a packed word: per HU code (low 16 bits), class above.
        if palette:
            code = word
            c = np.int64(pair_class[word])
        else:
            code = word & 0xFFFF
            c = word >> 16
        total += segment * mu_lut[code]  # max(0, mu_offset + mu_scale * HU), one load
        if with_materials:
            # Soft-tissue voxels (most of them) cost nothing here: their partial density is the mu
            # integrand / mu_water, added from ``total`` at the end. Others correct that and add theirs.
            hu_value = np.int64(pair_hu[code]) if palette else np.int64(np.int16(code))
            if soft_only_below <= hu_value:
                m0 += segment * (material_lut[code, 0] - (1.0 + 0.001 * hu_value))
                m1 += segment * material_lut[code, 1]
                m2 += segment * material_lut[code, 2]
                m3 += segment * material_lut[code, 3]
        if c != run_class:
            # A run of one class ends: its length is a difference of t (no sum per step to keep).
            if run_class != 0:
                thickness[run_class - 1, row, col] += (t - run_start) * length_mm
                class_rows[run_class - 1, row] = 1
            run_class = c
            run_start = t
        return total, m0, m1, m2, m3, run_class, run_start

    return accumulate


def make_trace_ray(with_materials: bool, compile_helper):
    """``trace_ray``, specialised at compile time with or without the material channels (a test per step
    that is not there costs nothing); ``compile_helper`` compiles its ``accumulate`` for the same target
    (``numba.njit(inline="always")`` or ``numba.cuda.jit(device=True)``)."""
    accumulate = compile_helper(make_accumulate(with_materials))

    def trace_ray(packed, flat, mu_lut, mu_scale, mu_offset, source, origin, column_step, row_step, metric,
                  hull_directions, hull_lower, hull_upper, row, col, line_integral, thickness, class_rows,
                  material_lut, materials, soft_only_below, pair_hu, pair_class):  # pragma: no cover - compiled
        """Trace the ray from ``source`` to detector pixel (row, col) and write that pixel of every output.

        All points are in IJK shifted by +0.5, so voxel v spans [v, v+1); the ray is ``source + t * d`` with
        t in [0, 1] (Amanatides & Woo stepping, exact segment lengths). Outputs must hold zeros for the pixel;
        ``class_rows[c, row]`` is set to 1 when the ray adds path length to class c (zeroed per row).
        ``flat`` is ``packed`` raveled: one running offset, indexed unsigned (no wrap-around code), replaces the
        3D index arithmetic (11% less time per chest AP view, same values bit for bit).

        The axis the ray crosses most often ("a", e.g. j for a chest AP view) is stepped in a tight inner
        loop up to the next crossing of the two others ("b", "c") or the end: no three-way choice per voxel.
        Each axis counts the steps left before the volume's face, so no index is kept or tested.
        ``packed`` holds packed words, or palette indices when ``pair_class`` is not empty; ``mu_lut`` and
        ``material_lut`` are then per pair (projector_palette)."""
        nk, nj, ni = packed.shape
        palette = pair_class.shape[0] > 0
        n_materials = materials.shape[0] if with_materials else 0
        sx, sy, sz = source[0], source[1], source[2]
        dx = origin[0] + col * column_step[0] + row * row_step[0] - sx
        dy = origin[1] + col * column_step[1] + row * row_step[1] - sy
        dz = origin[2] + col * column_step[2] + row * row_step[2] - sz
        length_mm = math.sqrt(
            metric[0, 0] * dx * dx + metric[1, 1] * dy * dy + metric[2, 2] * dz * dz
            + 2.0 * (metric[0, 1] * dx * dy + metric[0, 2] * dx * dz + metric[1, 2] * dy * dz)
        )
        # Clip the ray segment [source, pixel] (t in [0, 1]) to the polytope around the non-empty voxels
        # (slab method per direction; the first three are the axes, so the volume box is always in it).
        t0, t1 = 0.0, 1.0
        for h in range(hull_directions.shape[0]):
            start = hull_directions[h, 0] * sx + hull_directions[h, 1] * sy + hull_directions[h, 2] * sz
            rate = hull_directions[h, 0] * dx + hull_directions[h, 1] * dy + hull_directions[h, 2] * dz
            if rate == 0.0:
                if start < hull_lower[h] or start > hull_upper[h]:
                    return
            else:
                ta, tb = (hull_lower[h] - start) / rate, (hull_upper[h] - start) / rate
                if ta > tb:
                    ta, tb = tb, ta
                t0 = ta if ta > t0 else t0
                t1 = tb if tb < t1 else t1
        if t0 >= t1:
            return
        # Voxel containing the entry point (midpoint-safe: clamp onto the grid).
        ix = int(math.floor(sx + t0 * dx))
        iy = int(math.floor(sy + t0 * dy))
        iz = int(math.floor(sz + t0 * dz))
        ix = 0 if ix < 0 else (ni - 1 if ix > ni - 1 else ix)
        iy = 0 if iy < 0 else (nj - 1 if iy > nj - 1 else iy)
        iz = 0 if iz < 0 else (nk - 1 if iz > nk - 1 else iz)
        # Per axis: t of the next face, t between faces, offset change, steps left inside the volume.
        inf = math.inf
        never = 1 << 40  # steps left along an axis the ray does not cross
        next_x, delta_x, stride_x, left_x = inf, inf, 0, never
        if dx > 0.0:
            next_x, delta_x, stride_x, left_x = (ix + 1 - sx) / dx, 1.0 / dx, 1, ni - 1 - ix
        elif dx < 0.0:
            next_x, delta_x, stride_x, left_x = (ix - sx) / dx, -1.0 / dx, -1, ix
        next_y, delta_y, stride_y, left_y = inf, inf, 0, never
        if dy > 0.0:
            next_y, delta_y, stride_y, left_y = (iy + 1 - sy) / dy, 1.0 / dy, ni, nj - 1 - iy
        elif dy < 0.0:
            next_y, delta_y, stride_y, left_y = (iy - sy) / dy, -1.0 / dy, -ni, iy
        next_z, delta_z, stride_z, left_z = inf, inf, 0, never
        if dz > 0.0:
            next_z, delta_z, stride_z, left_z = (iz + 1 - sz) / dz, 1.0 / dz, ni * nj, nk - 1 - iz
        elif dz < 0.0:
            next_z, delta_z, stride_z, left_z = (iz - sz) / dz, -1.0 / dz, -ni * nj, iz
        # a: the axis with the shortest t between faces; b, c: the others.
        if delta_x <= delta_y and delta_x <= delta_z:
            next_a, delta_a, stride_a, left_a = next_x, delta_x, stride_x, left_x
            next_b, delta_b, stride_b, left_b = next_y, delta_y, stride_y, left_y
            next_c, delta_c, stride_c, left_c = next_z, delta_z, stride_z, left_z
        elif delta_y <= delta_z:
            next_a, delta_a, stride_a, left_a = next_y, delta_y, stride_y, left_y
            next_b, delta_b, stride_b, left_b = next_x, delta_x, stride_x, left_x
            next_c, delta_c, stride_c, left_c = next_z, delta_z, stride_z, left_z
        else:
            next_a, delta_a, stride_a, left_a = next_z, delta_z, stride_z, left_z
            next_b, delta_b, stride_b, left_b = next_x, delta_x, stride_x, left_x
            next_c, delta_c, stride_c, left_c = next_y, delta_y, stride_y, left_y
        offset = (iz * nj + iy) * ni + ix
        t = t0
        total = 0.0
        m0 = m1 = m2 = m3 = 0.0
        run_class = 0
        run_start = t0
        t_exit = t0
        # Past a_stop the next a face may be the volume's (half a step of margin: the running sum of
        # delta_a is off by far less), so the inner loop needs no test of the steps left.
        a_stop = next_a + (left_a - 0.5) * delta_a
        while True:
            limit = next_b if next_b < next_c else next_c  # written out: numba's CUDA target has no scalar min
            limit = t1 if t1 < limit else limit
            limit = a_stop if a_stop < limit else limit
            while next_a < limit:  # voxels that end on an a face
                word = np.int64(flat[np.uint64(offset)])
                total, m0, m1, m2, m3, run_class, run_start = accumulate(
                    word, next_a - t, t, total, m0, m1, m2, m3, run_class, run_start, mu_lut, material_lut,
                    soft_only_below, thickness, class_rows, row, col, length_mm, pair_hu, pair_class, palette)
                t = next_a
                next_a += delta_a
                offset += stride_a
                left_a -= 1
            # This voxel ends on a b or c face, at the end of the ray, or near the volume's a face: the
            # general step, with every axis's steps left tested.
            word = np.int64(flat[np.uint64(offset)])
            t_exit = next_a if next_a < next_b else next_b
            t_exit = next_c if next_c < t_exit else t_exit
            t_exit = t1 if t1 < t_exit else t_exit
            total, m0, m1, m2, m3, run_class, run_start = accumulate(
                word, t_exit - t, t, total, m0, m1, m2, m3, run_class, run_start, mu_lut, material_lut,
                soft_only_below, thickness, class_rows, row, col, length_mm, pair_hu, pair_class, palette)
            if t_exit >= t1:
                break
            t = t_exit
            if next_a <= next_b and next_a <= next_c:
                if left_a == 0:
                    break
                left_a -= 1
                next_a += delta_a
                offset += stride_a
            elif next_b <= next_c:
                if left_b == 0:
                    break
                left_b -= 1
                next_b += delta_b
                offset += stride_b
            else:
                if left_c == 0:
                    break
                left_c -= 1
                next_c += delta_c
                offset += stride_c
        if run_class != 0:
            thickness[run_class - 1, row, col] += (t_exit - run_start) * length_mm
            class_rows[run_class - 1, row] = 1
        line_integral[row, col] = total * length_mm
        if n_materials > 0:
            m0 += total / mu_offset  # sum of segment * max(0, 1 + HU/1000): the soft-tissue line
            scale = length_mm * 0.1  # g/cm^3 * mm -> g/cm^2
            materials[0, row, col] = m0 * scale
            if n_materials > 1:
                materials[1, row, col] = m1 * scale
            if n_materials > 2:
                materials[2, row, col] = m2 * scale
            if n_materials > 3:
                materials[3, row, col] = m3 * scale

    return trace_ray


# Inlined into the kernels below (numba IR inlining), which are the cached entry points.
_INLINE = numba.njit(inline="always", nogil=True, boundscheck=False)
_trace_ray_plain = _INLINE(make_trace_ray(False, _INLINE))
_trace_ray_materials = _INLINE(make_trace_ray(True, _INLINE))


@_INLINE
def _zero_row(row, line_integral, thickness, class_rows, materials):  # pragma: no cover - compiled
    """Zero one detector row of every output, on the thread that then traces it: the outputs are allocated
    uninitialised, so the zeroing runs on all threads (not one memset) and leaves the row's lines in cache
    for the writes that follow."""
    line_integral[row, :] = 0.0
    for c in range(thickness.shape[0]):
        thickness[c, row, :] = 0.0
        class_rows[c, row] = 0
    for m in range(materials.shape[0]):
        materials[m, row, :] = 0.0


@numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _trace_rays_plain(packed, mu_lut, mu_scale, mu_offset, source, origin, column_step, row_step, metric,
                      hull_directions, hull_lower, hull_upper, row_order, line_integral, thickness, class_rows,
                      material_lut, materials, soft_only_below, pair_hu, pair_class):  # pragma: no cover - compiled; covered through DrrProjector tests
    n_rows, n_cols = line_integral.shape
    flat = packed.reshape(packed.size)
    for r in numba.prange(n_rows):
        row = row_order[r]
        _zero_row(row, line_integral, thickness, class_rows, materials)
        for col in range(n_cols):
            _trace_ray_plain(packed, flat, mu_lut, mu_scale, mu_offset, source, origin, column_step, row_step, metric,
                             hull_directions, hull_lower, hull_upper, row, col, line_integral, thickness,
                             class_rows, material_lut, materials, soft_only_below, pair_hu, pair_class)


@numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _trace_rays_materials(packed, mu_lut, mu_scale, mu_offset, source, origin, column_step, row_step, metric,
                          hull_directions, hull_lower, hull_upper, row_order, line_integral, thickness,
                          class_rows, material_lut, materials, soft_only_below, pair_hu, pair_class):  # pragma: no cover - compiled
    n_rows, n_cols = line_integral.shape
    flat = packed.reshape(packed.size)
    for r in numba.prange(n_rows):
        row = row_order[r]
        _zero_row(row, line_integral, thickness, class_rows, materials)
        for col in range(n_cols):
            _trace_ray_materials(packed, flat, mu_lut, mu_scale, mu_offset, source, origin, column_step, row_step,
                                 metric, hull_directions, hull_lower, hull_upper, row, col, line_integral, thickness,
                                 class_rows, material_lut, materials, soft_only_below, pair_hu, pair_class)


def row_schedule(rows: int, threads: int, block: int = 8) -> np.ndarray:
    """Order in which the CPU kernel's ``prange`` visits detector rows. numba's OpenMP layer splits the range
    statically into one contiguous part per thread (``parallel_chunksize`` does not change that), so blocks
    of ``block`` neighbouring rows are dealt to the parts in turn: each thread gets rows from all over the
    detector (balanced whatever the view) while neighbouring rays still share cached voxels (a shuffle of
    single rows cost 20-25% more CPU time on the chest AP view)."""
    starts = np.arange(0, rows, block)
    parts = [starts[t::max(1, threads)] for t in range(max(1, threads))]
    return np.concatenate([np.arange(s, min(s + block, rows)) for part in parts for s in part]
                          or [np.zeros(0, np.int64)]).astype(np.int64)


def trace_rays_cpu(packed, mu_lut, mu_scale, mu_offset, source, origin, column_step, row_step, metric, hull,
                   row_order, line_integral, thickness, class_rows, material_lut, materials,
                   soft_only_below, pair_hu=NO_PALETTE_HU, pair_class=NO_PALETTE_CLASS) -> None:
    """Trace every detector pixel on the CPU threads (rows in ``row_order``, which balances the threads, and
    must hold every row once); ``hull`` = (directions, lower, upper) from ``matter_hull`` or ``box_hull``.
    The outputs may be uninitialised (``np.empty``): each row is zeroed before it is traced. With a palette
    volume (``packed`` of palette indices), pass its ``pair_hu``, ``pair_class`` and per-pair tables."""
    check_voxel_tables(packed, mu_lut, pair_class)
    kernel = _trace_rays_materials if materials.shape[0] > 0 else _trace_rays_plain
    kernel(packed, mu_lut, mu_scale, mu_offset, source, origin, column_step, row_step, metric, *hull, row_order,
           line_integral, thickness, class_rows, material_lut, materials, soft_only_below, pair_hu, pair_class)
