"""Per-sample masks and the combination codes of overlapping classes, from a render's per-class path lengths
(fused numba kernels, exactly ``DrrResult.masks`` + :func:`combination_codes`)."""

from __future__ import annotations

import numba
import numpy as np

from .errors import InputError


def combination_codes(masks: np.ndarray) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """(H, W) uint16 index into the returned list of class combinations (1-based class indices, sorted); the
    empty combination () is index 0 when present. ``masks``: (C, H, W) bool/uint8."""
    n_classes, rows, cols = masks.shape
    if n_classes == 0:
        return np.zeros((rows, cols), np.uint16), [()]
    flat = masks.reshape(n_classes, -1).astype(bool)
    if n_classes <= 64:
        bits = np.zeros(flat.shape[1], np.uint64)
        for c in np.flatnonzero(flat.any(axis=1)):
            bits |= flat[c].astype(np.uint64) << np.uint64(c)
        keys, inverse = np.unique(bits, return_inverse=True)
        combos = [tuple(int(c) + 1 for c in range(n_classes) if (int(k) >> c) & 1) for k in keys]
    else:
        packed = np.packbits(flat, axis=0).T  # (pixels, bytes)
        keys, inverse = np.unique(packed, axis=0, return_inverse=True)
        unpacked = np.unpackbits(keys, axis=1)[:, :n_classes]
        combos = [tuple(int(c) + 1 for c in np.flatnonzero(row)) for row in unpacked]
    if len(combos) > 65535:
        raise InputError("more than 65535 class combinations in one image")
    return inverse.reshape(rows, cols).astype(np.uint16), combos


# Fused per-sample kernels. Masks, combination codes, the preview's label image and per-class pixel counts
# come from one pass over the path lengths; they give exactly what ``DrrResult.masks``, ``combination_codes``
# and the combination LUT gave (tested). Serial and nogil: they run in each worker's writer thread while its
# next render uses the numba threads, so they never oversubscribe the cores.


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def row_hits(thickness_row, threshold, inside):  # pragma: no cover - compiled
    """``inside[col]`` = 1 where the row's path length is >= ``threshold`` and > 0 (float32, as
    ``DrrResult.masks``); returns how many. Branch-free: vectorises."""
    count = np.uint32(0)
    for col in range(thickness_row.size):
        v = thickness_row[col]
        hit = np.uint8((v >= threshold) & (v > np.float32(0)))
        inside[col] = hit
        count += np.uint32(hit)
    return count


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _masks_bits_kernel(thickness, rows_hit, threshold, local_to_global, absent, ignored, value, masks, bits, top,
                       counts):  # pragma: no cover - compiled
    """A row at a time, so the row's bits and top stay in L1 while every class plane passes over it; a class
    with no pixel in the row (most of them: 16 % of the class rows of a chest AP view have one) costs a copy,
    without reading its path lengths when ``rows_hit`` (L, H) says the render put none there, else one
    vectorised compare. ``ignored`` (H, W) bool: ``value`` goes into every mask plane there; bits, top and
    counts are those of the 0/1 masks."""
    n_local, rows, cols = thickness.shape
    background = np.empty(cols, np.uint8)  # a mask row without the class: the ignore value where ignored
    inside = np.empty(cols, np.uint8)
    for r in range(rows):
        ign, bits_row, top_row = ignored[r], bits[r], top[r]
        for col in range(cols):
            background[col] = value if ign[col] else np.uint8(0)
            bits_row[col] = 0
            top_row[col] = 0
        for g in absent:
            plane_row = masks[g, r]
            for col in range(cols):
                plane_row[col] = background[col]
        for c in range(n_local):
            g = local_to_global[c]
            plane_row = masks[g, r]
            count = np.uint32(0)
            if rows_hit[c, r] != 0:  # else the render put no path length in this row: nothing to read
                count = row_hits(thickness[c, r], threshold, inside)
            if count == 0:
                for col in range(cols):
                    plane_row[col] = background[col]
                continue
            counts[c] += count
            bit = np.uint64(1) << np.uint64(g)
            label = np.uint8(g + 1)
            for col in range(cols):
                hit = inside[col]
                plane_row[col] = value if ign[col] else hit
                bits_row[col] |= bit * np.uint64(hit)
                top_row[col] = max(top_row[col], label * hit)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _unique_codes_kernel(bits, codes):  # pragma: no cover - compiled
    """codes[i] = rank of bits[i] among the sorted unique values (= np.unique(..., return_inverse=True));
    returns the sorted unique values."""
    n = bits.size
    index = numba.typed.Dict.empty(key_type=numba.types.uint64, value_type=numba.types.int64)
    found = np.empty(min(n, 65536) + 1, np.uint64)
    n_found = 0
    last_key, last_id = np.uint64(0), -1
    for i in range(n):
        key = bits[i]
        if last_id < 0 or key != last_key:
            if key in index:
                last_id = index[key]
            else:
                if n_found >= found.size:
                    return found[:0], False
                last_id = n_found
                index[key] = n_found
                found[n_found] = key
                n_found += 1
            last_key = key
        codes[i] = last_id
    keys = np.sort(found[:n_found])
    rank = np.empty(n_found, np.int64)
    for j in range(n_found):
        rank[index[keys[j]]] = j
    for i in range(n):
        codes[i] = rank[codes[i]]
    return keys, True


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _ignored_stack_kernel(masks, ignored, value, out):  # pragma: no cover - compiled
    n_classes, rows, cols = masks.shape
    for c in range(n_classes):
        for r in range(rows):
            for col in range(cols):  # branch-free: vectorises
                out[c, r, col] = value if ignored[r, col] else masks[c, r, col]


def with_ignored(masks: np.ndarray, ignored: np.ndarray, value: int, in_place: bool = False) -> np.ndarray:
    """The (C, H, W) uint8 ``masks`` with ``value`` in every class plane where ``ignored`` (H, W) is set:
    ``out = masks.copy(); out[:, ignored] = value`` in one pass (5x faster at 49 x 512^2); ``in_place``
    writes into ``masks`` itself (C-contiguous uint8) and returns it."""
    if in_place and not (masks.dtype == np.uint8 and masks.flags.c_contiguous):
        raise ValueError("with_ignored(in_place=True) needs C-contiguous uint8 masks")
    source = masks if in_place else np.ascontiguousarray(masks, np.uint8)
    out = source if in_place else np.empty_like(source)
    _ignored_stack_kernel(source, np.ascontiguousarray(ignored, np.bool_), np.uint8(value), out)
    return out


def _combos_of_keys(keys: np.ndarray, n_classes: int) -> list[tuple[int, ...]]:
    """Bit-set keys (uint64) -> sorted tuples of their 1-based class indices."""
    held = (keys[:, None] >> np.arange(n_classes, dtype=np.uint64)) & np.uint64(1) != 0
    which, classes = np.nonzero(held)
    per_key = np.split(classes + 1, np.cumsum(held.sum(axis=1))[:-1])
    return [tuple(c.tolist()) for c in per_key]


def sample_masks(thickness: np.ndarray, threshold: float, local_to_global: np.ndarray, n_classes: int,
                 ignored: np.ndarray | None = None, ignore_value: int = 255, out: np.ndarray | None = None,
                 rows_hit: np.ndarray | None = None):
    """From a render's per-class path lengths (L, H, W) to the dataset's masks and codes in one pass.

    ``ignored`` (H, W) bool, <= 64 classes only: the returned masks hold ``ignore_value`` in every plane there
    (as :func:`with_ignored`, without a second pass); everything else is computed from the 0/1 masks. ``out``:
    a (C, H, W) uint8 C-contiguous array the masks are written into and returned as (<= 64 classes; a buffer
    kept between samples spares the page faults of a fresh 16 MB array, ~8 ms at 63 x 512^2). ``rows_hit``:
    the render's ``DrrResult.class_rows`` (L, H); rows where it is 0 must hold no path length (not read).
    Returns ``(masks, codes, combos, top, counts, bits)``: ``masks`` (C, H, W) uint8 in dataset order (the local class
    ``l`` goes to plane ``local_to_global[l]``; others are 0), ``codes``/``combos`` as :func:`combination_codes`
    of ``masks``, ``top`` (H, W) the highest 1-based class index of each pixel (0: none), ``counts`` (L,) the
    pixels of each local class, ``bits`` (H, W) uint64 each pixel's classes as bits (None beyond 64 classes)."""
    n_local, rows, cols = thickness.shape
    local_to_global = np.ascontiguousarray(local_to_global, np.int64)
    if ignored is not None and n_classes > 64:
        raise ValueError("sample_masks(ignored=...) needs <= 64 classes: use with_ignored after the preview")
    if n_classes > 64 or n_local == 0:
        masks = np.zeros((n_classes, rows, cols), np.uint8)
        local = (thickness >= np.float32(threshold)) & (thickness > 0)
        masks[local_to_global] = local
        codes, combos = combination_codes(masks)
        top = np.array([c[-1] if c else 0 for c in combos], np.uint16 if n_classes > 254 else np.uint8)[codes]
        counts = local.reshape(n_local, -1).sum(axis=1) if n_local else np.zeros(0, np.int64)
        if ignored is not None:
            masks[:, ignored] = ignore_value
        return masks, codes, combos, top, counts, None
    if out is not None and (out.shape != (n_classes, rows, cols) or out.dtype != np.uint8
                            or not out.flags.c_contiguous):
        raise ValueError(f"sample_masks(out=...) needs a C-contiguous uint8 array of shape {(n_classes, rows, cols)}")
    masks = np.empty((n_classes, rows, cols), np.uint8) if out is None else out
    bits = np.empty((rows, cols), np.uint64)
    top = np.empty((rows, cols), np.uint8)
    counts = np.zeros(n_local, np.int64)
    absent = np.setdiff1d(np.arange(n_classes), local_to_global).astype(np.int64)
    ignored = np.zeros((rows, cols), np.bool_) if ignored is None else np.ascontiguousarray(ignored, np.bool_)
    rows_hit = np.ones((n_local, rows), np.uint8) if rows_hit is None else np.ascontiguousarray(rows_hit, np.uint8)
    if rows_hit.shape != (n_local, rows):
        raise ValueError(f"sample_masks(rows_hit=...) needs shape {(n_local, rows)}, not {rows_hit.shape}")
    _masks_bits_kernel(np.ascontiguousarray(thickness, np.float32), rows_hit, np.float32(threshold), local_to_global,
                       absent, ignored, np.uint8(ignore_value), masks, bits, top, counts)
    codes = np.empty(rows * cols, np.uint16)
    keys, ok = _unique_codes_kernel(bits.reshape(-1), codes)
    if not ok:
        raise InputError("more than 65535 class combinations in one image")
    return masks, codes.reshape(rows, cols), _combos_of_keys(keys, n_classes), top, counts, bits
