"""The export's mask stack as byte runs (<= 64 classes): the masks, codes and preview inputs of
:func:`export_masks.sample_masks` without the dense (C, H, W) stack.

A 63-class 512^2 stack is 16.5 MB, nearly all of it runs of 0 (and of the ignore value): writing it and then
scanning it again for the gzip stream cost ~12 ms of the export's ~37 ms of work per sample beyond the render.
Here one row-wise pass over the render's path lengths keeps, for each class row that holds a pixel, that row's
runs; every other row of every plane is the row's background (the ignore value where ignored, else 0), whose
runs are made once per row. A plane-major pass then strings them together, merging equal neighbours, into the
stack's maximal runs, which :func:`export_gzip.gzip_run_list` codes to exactly the bytes of
``gzip_runs(dense stack)`` (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .errors import InputError
from .export_gzip import gzip_run_list, run_end


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


def _combos_of_keys(keys: np.ndarray, n_classes: int) -> list[tuple[int, ...]]:
    """Bit-set keys (uint64) -> sorted tuples of their 1-based class indices (none for an image without pixels,
    as :func:`export_masks.combination_codes`)."""
    if keys.size == 0:
        return []
    held = (keys[:, None] >> np.arange(n_classes, dtype=np.uint64)) & np.uint64(1) != 0
    which, classes = np.nonzero(held)
    per_key = np.split(classes + 1, np.cumsum(held.sum(axis=1))[:-1])
    return [tuple(c.tolist()) for c in per_key]


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _push(values, lengths, n, first, v, length):  # pragma: no cover - compiled
    """Append a run of ``length`` bytes ``v`` at ``n``, merged into run ``n - 1`` when that is >= ``first`` and
    holds ``v``; returns the new count."""
    if n > first and values[n - 1] == v:
        lengths[n - 1] += length
        return n
    values[n] = v
    lengths[n] = length
    return n + 1


@numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _row_runs(row, words, cols, values, lengths, n):  # pragma: no cover - compiled
    """Append the maximal runs of ``row[:cols]`` (``words``: the same buffer as uint64) from ``n``, the first
    not merged into earlier runs; returns the new count."""
    first = n
    whole = words[: cols // 8]  # the words inside the row (the buffer is padded)
    i = 0
    while i < cols:
        j = run_end(row, whole, i, cols)
        n = _push(values, lengths, n, first, row[i], j - i)
        i = j
    return n


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _class_rows_kernel(thickness, rows_hit, threshold, local_to_global, ignored, value, bits, top, counts, row, words,
                       bg_start, bg_values, bg_lengths, hit_start, hit_end, row_values,
                       row_lengths):  # pragma: no cover - compiled
    """Row-wise: each row's background runs (``bg_start[r]:bg_start[r + 1]``), the runs of each class row with a
    pixel (``hit_start[c, r]:hit_end[c, r]``; -1 where none), each pixel's class ``bits``, the ``top`` (highest
    1-based class) and per-class ``counts`` of the 0/1 masks.
    ``row``/``words``: a scratch row (uint8, padded to 8 bytes) and its uint64 view."""
    n_local, rows, cols = thickness.shape
    inside = np.empty(cols, np.uint8)
    nb = 0
    ns = 0
    for r in range(rows):
        ign, bits_row, top_row = ignored[r], bits[r], top[r]
        for col in range(cols):
            bits_row[col] = 0
            top_row[col] = 0
            row[col] = value if ign[col] else np.uint8(0)
        bg_start[r] = nb
        nb = _row_runs(row, words, cols, bg_values, bg_lengths, nb)
        for c in range(n_local):
            hit_start[c, r] = -1
            if rows_hit[c, r] == 0:  # the render put no path length in this row: nothing to read
                continue
            count = row_hits(thickness[c, r], threshold, inside)
            if count == 0:
                continue
            counts[c] += count
            bit = np.uint64(1) << np.uint64(local_to_global[c])
            label = np.uint8(local_to_global[c] + 1)
            for col in range(cols):
                hit = inside[col]
                row[col] = value if ign[col] else hit
                bits_row[col] |= bit * np.uint64(hit)
                top_row[col] = max(top_row[col], label * hit)
            hit_start[c, r] = ns
            ns = _row_runs(row, words, cols, row_values, row_lengths, ns)
            hit_end[c, r] = ns
    bg_start[rows] = nb
    return ns


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _stack_runs_kernel(local_of_global, rows, bg_start, bg_values, bg_lengths, hit_start, hit_end, row_values,
                       row_lengths, values, lengths):  # pragma: no cover - compiled
    """Plane-major: the stack's maximal runs into ``values``/``lengths``; returns their count."""
    n = 0
    for g in range(local_of_global.size):
        c = local_of_global[g]
        for r in range(rows):
            if c >= 0 and hit_start[c, r] >= 0:
                for i in range(hit_start[c, r], hit_end[c, r]):
                    n = _push(values, lengths, n, 0, row_values[i], row_lengths[i])
            else:
                for i in range(bg_start[r], bg_start[r + 1]):
                    n = _push(values, lengths, n, 0, bg_values[i], bg_lengths[i])
    return n


@dataclass(frozen=True)
class MaskRuns:
    """A (C, H, W) uint8 mask stack as its maximal byte runs in C order."""

    shape: tuple[int, int, int]
    values: np.ndarray  # uint8
    lengths: np.ndarray  # int64, same length

    def gzip(self) -> bytes:
        """The gzip stream of the stack's bytes (exactly ``gzip_runs(self.dense())``)."""
        return gzip_run_list(self.values, self.lengths)

    def dense(self) -> np.ndarray:
        return np.repeat(self.values, self.lengths).reshape(self.shape)


def sample_mask_runs(thickness: np.ndarray, threshold: float, local_to_global: np.ndarray, n_classes: int,
                     ignored: np.ndarray | None = None, ignore_value: int = 255, rows_hit: np.ndarray | None = None):
    """The masks, codes and preview inputs of :func:`export_masks.sample_masks` (same arguments, 1 to 64
    classes), the masks as :class:`MaskRuns`: ``(runs, codes, combos, top, counts, bits)``."""
    n_local, rows, cols = thickness.shape
    if n_classes > 64 or n_local == 0:
        raise ValueError("sample_mask_runs needs 1 to 64 classes with labels: use export_masks.sample_masks")
    local_to_global = np.ascontiguousarray(local_to_global, np.int64)
    local_of_global = np.full(n_classes, -1, np.int64)
    local_of_global[local_to_global] = np.arange(n_local)
    ignored = np.zeros((rows, cols), np.bool_) if ignored is None else np.ascontiguousarray(ignored, np.bool_)
    rows_hit = np.ones((n_local, rows), np.uint8) if rows_hit is None else np.ascontiguousarray(rows_hit, np.uint8)
    if rows_hit.shape != (n_local, rows):
        raise ValueError(f"sample_mask_runs(rows_hit=...) needs shape {(n_local, rows)}, not {rows_hit.shape}")
    bits = np.empty((rows, cols), np.uint64)
    top = np.empty((rows, cols), np.uint8)
    counts = np.zeros(n_local, np.int64)
    # Run stores sized for the worst case (a run per pixel); np.empty touches no page until a run is written.
    bg_start = np.empty(rows + 1, np.int64)
    bg_values, bg_lengths = np.empty(rows * cols, np.uint8), np.empty(rows * cols, np.int64)
    hit_start, hit_end = np.empty((n_local, rows), np.int64), np.empty((n_local, rows), np.int64)
    stored = int(np.count_nonzero(rows_hit)) * cols
    row_values, row_lengths = np.empty(stored, np.uint8), np.empty(stored, np.int64)
    row = np.zeros(-(-cols // 8) * 8, np.uint8)
    stored = _class_rows_kernel(np.ascontiguousarray(thickness, np.float32), rows_hit, np.float32(threshold),
                                local_to_global, ignored, np.uint8(ignore_value), bits, top, counts, row,
                                row.view(np.uint64), bg_start, bg_values, bg_lengths, hit_start, hit_end, row_values,
                                row_lengths)
    capacity = min(n_classes * int(bg_start[rows]) + stored, n_classes * rows * cols)
    values, lengths = np.empty(capacity, np.uint8), np.empty(capacity, np.int64)
    n = _stack_runs_kernel(local_of_global, rows, bg_start, bg_values, bg_lengths, hit_start, hit_end, row_values,
                           row_lengths, values, lengths)
    codes = np.empty(rows * cols, np.uint16)
    keys, ok = _unique_codes_kernel(bits.reshape(-1), codes)
    if not ok:
        raise InputError("more than 65535 class combinations in one image")
    runs = MaskRuns((n_classes, rows, cols), values[:n].copy(), lengths[:n].copy())
    return runs, codes.reshape(rows, cols), _combos_of_keys(keys, n_classes), top, counts, bits
