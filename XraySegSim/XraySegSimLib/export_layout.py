"""On-disk layout of an exported training set (nnU-Net v2 raw dataset) and the region ("atom") label encoding.

See ``export`` for the whole contract. This module only knows paths, file formats and the encoding:

* images: 2D NRRD, float32, raw encoding (fast to write and read), ``space dimension: 2``, ``space directions``
  = diag(column mm, row mm), origin 0: SimpleITK reads the detector pixel spacing as the image spacing;
* labels: 2D NRRD, uint8 (uint16 beyond 255 atoms), gzip, same spacing;
* masks: NRRD of the uint8 (C, H, W) stack (C-order; NRRD axes: column, row, class-list), gzip (run-coded by
  :func:`gzip_runs`: a standard gzip stream, fast to write);
* atoms: every combination of overlapping classes that occurs gets one integer. Atoms ``1..C`` are reserved for
  the single classes (atom ``c`` = class ``c`` alone, 1-based class index) whether or not they occur alone;
  combinations of two or more classes get ``C+1, C+2, ...`` sorted by (size, class indices). So the label
  values are consecutive (nnU-Net requires it), ``regions_class_order = [1, ..., C]`` turns region predictions
  back into a single-class map (later classes win), and the numbering depends only on the set of
  combinations in the dataset, never on the order samples were made in.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numba
import numpy as np

from .errors import InputError
from .io import atomic_path, write_json
from .projector_kernels import row_extremes

FILE_ENDING = ".nrrd"
MANIFEST_FIELDS = ["case", "ct_id", "split", "view", "view_index", "status", "message"]
GZIP_LEVEL = 1  # masks and labels are mostly zeros: level 1 is ~10x faster than 9 and ~as small


@dataclass(frozen=True)
class DatasetLayout:
    """Paths of one dataset folder ``<out>/Dataset<ID>_<Name>``."""

    root: Path

    @classmethod
    def create(cls, out: str | Path, dataset_id: int, name: str) -> "DatasetLayout":
        if not 0 <= int(dataset_id) <= 999:
            raise InputError(f"the dataset id must be 0..999 (3 digits), got {dataset_id}")
        clean = "".join(ch for ch in name if ch.isalnum() or ch in "_-") or "XraySeg"
        return cls(Path(out) / f"Dataset{int(dataset_id):03d}_{clean}")

    def _split_dir(self, kind: str, split: str) -> Path:
        return self.root / f"{kind}{'Tr' if split == 'train' else 'Ts'}"

    def image(self, case: str, split: str) -> Path:
        return self._split_dir("images", split) / f"{case}_0000{FILE_ENDING}"

    def label(self, case: str, split: str) -> Path:
        return self._split_dir("labels", split) / f"{case}{FILE_ENDING}"

    def masks(self, case: str, split: str) -> Path:
        return self._split_dir("masks", split) / f"{case}{FILE_ENDING}"

    def sidecar(self, case: str) -> Path:
        return self.root / "sidecars" / f"{case}.json"

    def preview(self, case: str) -> Path:
        return self.root / "previews" / f"{case}.png"

    def codes(self, case: str) -> Path:
        """Per-sample combination codes (uint16 .npy) and their table: turned into atoms by the finalisation."""
        return self.root / ".work" / "codes" / f"{case}.npz"

    @property
    def config(self) -> Path:
        return self.root / "export.json"

    @property
    def cancel_flag(self) -> Path:
        return self.root / ".work" / "cancel"

    def sample_files(self, case: str, split: str, preview: bool = True) -> list[Path]:
        files = [self.image(case, split), self.masks(case, split), self.codes(case)]
        return files + ([self.preview(case)] if preview else [])

    def folders(self) -> list[Path]:
        return [self.root / d for d in ("imagesTr", "labelsTr", "masksTr", "imagesTs", "labelsTs", "masksTs",
                                        "sidecars", "previews", ".work/codes")]


def case_name(ct_id: str, view: int) -> str:
    return f"{ct_id}_v{view:04d}"


# ---------------------------------------------------------------------------------------------------------------
# Run-length gzip: masks and labels are long runs of a few values. zlib level 1 spends ~1 ns per byte on them
# (a 63-class 512^2 mask stack is 16.5 MB); coding each run as a literal and distance-1 matches in one
# fixed-Huffman block, with the CRC of zero runs advanced in O(log n) (GF(2) matrix powers), is ~4x faster.


def _crc_table() -> np.ndarray:
    t = np.zeros(256, np.uint32)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if c & 1 else c >> 1
        t[n] = c
    return t


CRC_TABLE = _crc_table()


def _zero_operators(levels: int = 40) -> np.ndarray:
    """ops[k]: the 32 columns of the GF(2) matrix that advances the (inverted) CRC state over 2**k zero bytes."""
    ops = np.zeros((levels, 32), np.uint32)
    for i in range(32):
        c = 1 << i
        ops[0, i] = int(CRC_TABLE[c & 0xFF]) ^ (c >> 8)
    for k in range(1, levels):
        for i in range(32):
            v, r, j = int(ops[k - 1, i]), 0, 0
            while v:
                if v & 1:
                    r ^= int(ops[k - 1, j])
                v >>= 1
                j += 1
            ops[k, i] = r
    return ops


ZERO_OPS = _zero_operators()  # runs up to 2**40 bytes


def _fixed_codes() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(value, bits) of each literal/length symbol and of each match length 3..258 (symbol + extra bits),
    LSB-first as deflate writes them (Huffman codes bit-reversed)."""
    def rev(code, n):
        r = 0
        for _ in range(n):
            r = (r << 1) | (code & 1)
            code >>= 1
        return r
    lit_val, lit_len = np.zeros(288, np.uint64), np.zeros(288, np.int64)
    for s in range(288):
        if s < 144:
            code, n = 0x30 + s, 8
        elif s < 256:
            code, n = 0x190 + s - 144, 9
        elif s < 280:
            code, n = s - 256, 7
        else:
            code, n = 0xC0 + s - 280, 8
        lit_val[s], lit_len[s] = rev(code, n), n
    base = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163,
            195, 227, 258]
    extra = [0] * 8 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4 + [5] * 4 + [0]
    len_val, len_len = np.zeros(259, np.uint64), np.zeros(259, np.int64)
    for length in range(3, 259):
        i = max(i for i in range(29) if base[i] <= length) if length < 258 else 28
        s = 257 + i
        len_val[length] = int(lit_val[s]) | ((length - base[i]) << int(lit_len[s]))
        len_len[length] = lit_len[s] + extra[i]
    return lit_val, lit_len, len_val, len_len


LIT_VAL, LIT_LEN, LEN_VAL, LEN_LEN = _fixed_codes()


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _deflate_runs(data, words, out, crc_table, zero_ops, lit_val, lit_len, len_val, len_len):  # pragma: no cover
    """One fixed-Huffman deflate block of ``data`` coded as runs (a literal, then distance-1 matches of the
    repeats); returns (bytes written to out, CRC-32 of data). ``words``: data viewed as uint64 (len // 8)."""
    n = data.size
    acc = np.uint64(3)  # BFINAL=1, BTYPE=01 (fixed Huffman)
    nacc = 3
    pos = 0
    crc = np.uint32(0xFFFFFFFF)
    i = 0
    while i < n:
        b = data[i]
        j = i + 1
        # run end: bytewise to a word boundary, then 8 bytes at a time
        while j < n and (j & 7) != 0 and data[j] == b:
            j += 1
        if j < n and (j & 7) == 0 and data[j] == b:
            pattern = np.uint64(b) * np.uint64(0x0101010101010101)
            w = j >> 3
            while w < words.size and words[w] == pattern:
                w += 1
            j = w << 3
            while j < n and data[j] == b:
                j += 1
        run = j - i
        # CRC of the run
        if b == 0 and run >= 32:
            m = run
            k = 0
            while m:
                if m & 1:
                    v = crc
                    r = np.uint32(0)
                    col = 0
                    while v:
                        if v & np.uint32(1):
                            r ^= zero_ops[k, col]
                        v >>= np.uint32(1)
                        col += 1
                    crc = r
                m >>= 1
                k += 1
        else:
            for _ in range(run):
                crc = crc_table[(crc ^ np.uint32(b)) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
        # code: literal b, then matches of distance 1 (distance code 0: 5 zero bits)
        acc |= lit_val[b] << np.uint64(nacc)
        nacc += lit_len[b]
        rest = run - 1
        while rest > 0:
            if rest >= 3:
                length = 258 if rest >= 258 + 3 or rest == 258 else (rest if rest < 258 else rest - 3)
                acc |= len_val[length] << np.uint64(nacc)
                nacc += len_len[length] + 5
                rest -= length
            else:
                acc |= lit_val[b] << np.uint64(nacc)
                nacc += lit_len[b]
                rest -= 1
            while nacc >= 8:
                out[pos] = np.uint8(acc & np.uint64(0xFF))
                pos += 1
                acc >>= np.uint64(8)
                nacc -= 8
        while nacc >= 8:
            out[pos] = np.uint8(acc & np.uint64(0xFF))
            pos += 1
            acc >>= np.uint64(8)
            nacc -= 8
        i = j
    nacc += 7  # end of block (symbol 256: seven 0 bits)
    while nacc > 0:
        out[pos] = np.uint8(acc & np.uint64(0xFF))
        pos += 1
        acc >>= np.uint64(8)
        nacc -= 8
    return pos, crc ^ np.uint32(0xFFFFFFFF)


def gzip_runs(array: np.ndarray) -> bytes:
    """gzip stream (RFC 1952, mtime 0) of the array's bytes, coded as byte runs: ~4x faster than zlib level 1 on
    binary masks and label images (mostly long runs), ~25 % larger. Any inflater reads it."""
    data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    words = data[: data.size // 8 * 8].view(np.uint64)
    out = np.empty(data.size * 9 // 8 + 64, np.uint8)
    n, crc = _deflate_runs(data, words, out, CRC_TABLE, ZERO_OPS, LIT_VAL, LIT_LEN, LEN_VAL, LEN_LEN)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + out[:n].tobytes() + int(crc).to_bytes(4, "little")
            + (data.size & 0xFFFFFFFF).to_bytes(4, "little"))


# ---------------------------------------------------------------------------------------------------------------
# NRRD writers


def _plane_header(spacing: Sequence[float]) -> dict[str, Any]:
    return {"space dimension": 2, "space directions": np.diag([float(spacing[0]), float(spacing[1])]),
            "space origin": np.zeros(2), "kinds": ["domain", "domain"]}


_PYNRRD_TIME_STAMP = re.compile(rb"# on [0-9: -]+\(GMT\)\.\n")


def _without_time_stamp(data: bytes) -> bytes:
    """pynrrd writes the current time into its header comment: dropped, so the same dataset is the same bytes."""
    head, tail = data[:256], data[256:]
    return _PYNRRD_TIME_STAMP.sub(b"", head, count=1) + tail


def _write_nrrd(path: Path, array: np.ndarray, header: dict[str, Any]) -> None:
    """pynrrd's header and data; 8-bit gzip data from :func:`gzip_runs` (the same decoded bytes, much faster).
    No time stamp: the same content gives the same bytes."""
    import nrrd

    array = np.ascontiguousarray(array)
    with atomic_path(path) as tmp:
        if header.get("encoding") == "gzip" and array.dtype.itemsize == 1:  # byte runs: uint8 masks and labels
            try:
                from nrrd.writer import _handle_header, _write_header
            except ImportError:  # pragma: no cover - another pynrrd: its own writer
                pass
            else:
                buffer = io.BytesIO()
                _write_header(buffer, _handle_header(array, dict(header), "C"))
                with open(tmp, "wb") as handle:
                    handle.write(_without_time_stamp(buffer.getvalue()))
                    handle.write(gzip_runs(array))
                return
        nrrd.write(str(tmp), array, header, index_order="C", compression_level=GZIP_LEVEL)
        tmp.write_bytes(_without_time_stamp(tmp.read_bytes()))


def write_image_2d(path: Path, image: np.ndarray, spacing: Sequence[float], encoding: str = "raw",
                   extra: dict | None = None) -> None:
    """A [row, column] image as a 2D NRRD whose spacing is (column mm, row mm)."""
    header = _plane_header(spacing)
    header["encoding"] = encoding
    header.update(extra or {})
    _write_nrrd(path, image, header)


def write_mask_stack(path: Path, masks: np.ndarray, spacing: Sequence[float], class_names: Sequence[str]) -> None:
    """uint8 (C, H, W) stack; read back with ``nrrd.read(path, index_order='C')``."""
    header = {"space dimension": 2, "encoding": "gzip",
              "space directions": np.vstack([np.diag([float(spacing[0]), float(spacing[1])]), np.full(2, np.nan)]),
              "space origin": np.zeros(2), "kinds": ["domain", "domain", "list"],
              "labels": ["column", "row", "class"],
              "xrayseg_classes": "|".join(class_names)}
    _write_nrrd(path, np.ascontiguousarray(masks, dtype=np.uint8), header)


def read_nrrd(path: Path) -> np.ndarray:
    import nrrd

    array, _ = nrrd.read(str(path), index_order="C")
    return array


# ---------------------------------------------------------------------------------------------------------------
# Combination codes and atoms


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


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _masks_bits_kernel(thickness, threshold, local_to_global, absent, masks, bits, top, counts):  # pragma: no cover
    n_local, rows, cols = thickness.shape
    for g in absent:
        masks[g] = 0
    bits[:] = 0
    top[:] = 0
    for c in range(n_local):
        g = local_to_global[c]
        bit = np.uint64(1) << np.uint64(g)
        label = np.uint8(g + 1)
        count = 0
        for r in range(rows):
            for col in range(cols):  # branch-free: vectorises
                v = thickness[c, r, col]
                inside = (v >= threshold) & (v > 0)  # float32 compare, as DrrResult.masks (NumPy 2 weak scalars)
                masks[g, r, col] = np.uint8(inside)
                bits[r, col] |= bit * np.uint64(inside)
                top[r, col] = max(top[r, col], label * np.uint8(inside))
                count += inside
        counts[c] = count


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


@numba.njit(parallel=True, cache=True, nogil=True)
def _labelled_index_sums(packed):  # pragma: no cover - compiled
    """(sum of i, sum of j, sum of k, count) over the voxels whose packed word holds a class (high 16 bits)."""
    nk, nj, ni = packed.shape
    partial = np.zeros((nk, 4), np.int64)
    for k in numba.prange(nk):
        si = sj = n = 0
        for j in range(nj):
            for i in range(ni):
                if packed[k, j, i] >> 16 != 0:
                    si += i
                    sj += j
                    n += 1
        partial[k, 0], partial[k, 1], partial[k, 2], partial[k, 3] = si, sj, k * n, n
    return partial.sum(axis=0)


BODY_HU = -500  # voxels above this (or labelled) are "body" for the detector placement


def body_points_ras(packed: np.ndarray, ijk_to_ras: np.ndarray, hu_min: int = BODY_HU) -> np.ndarray:
    """(3, N) RAS centres of the first and last body voxel of every voxel row along i (body: HU > ``hu_min``
    or labelled). Their convex hull is the body's (voxel centres), so the largest value of any linear function
    over the body, e.g. the depth along a ray, is their largest: one pass over the CT, then O(rows) per view."""
    extremes = row_extremes(packed, np.int64(hu_min))
    k, j = np.nonzero(extremes[:, :, 0] >= 0)
    if not len(k):
        return np.zeros((3, 0))
    i = extremes[k, j].T.reshape(-1)  # first of every row, then last of every row
    m = np.asarray(ijk_to_ras, np.float64)
    j, k = np.concatenate([j, j]), np.concatenate([k, k])
    return m[:3, 0:1] * i + m[:3, 1:2] * j + m[:3, 2:3] * k + m[:3, 3:4]  # elementwise: bit-reproducible


def labelled_centroid_ras(packed: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray | None:
    """``Volume.centroid_ras(packed >> 16 != 0)`` without the two full-size temporaries, bit for bit: NumPy's
    mean of integer indices is float64(exact integer sum) / count (partial sums stay far below 2**53). None when
    no voxel is labelled."""
    si, sj, sk, n = (int(v) for v in _labelled_index_sums(packed))
    if n == 0:
        return None
    ijk = np.array([np.float64(si) / n, np.float64(sj) / n, np.float64(sk) / n])
    return ijk_to_ras[:3, :3] @ ijk + ijk_to_ras[:3, 3]


def _combos_of_keys(keys: np.ndarray, n_classes: int) -> list[tuple[int, ...]]:
    """Bit-set keys (uint64) -> sorted tuples of their 1-based class indices."""
    held = (keys[:, None] >> np.arange(n_classes, dtype=np.uint64)) & np.uint64(1) != 0
    which, classes = np.nonzero(held)
    per_key = np.split(classes + 1, np.cumsum(held.sum(axis=1))[:-1])
    return [tuple(c.tolist()) for c in per_key]


def sample_masks(thickness: np.ndarray, threshold: float, local_to_global: np.ndarray, n_classes: int):
    """From a render's per-class path lengths (L, H, W) to the dataset's masks and codes in one pass.

    Returns ``(masks, codes, combos, top, counts, bits)``: ``masks`` (C, H, W) uint8 in dataset order (the local class
    ``l`` goes to plane ``local_to_global[l]``; others are 0), ``codes``/``combos`` as :func:`combination_codes`
    of ``masks``, ``top`` (H, W) the highest 1-based class index of each pixel (0: none), ``counts`` (L,) the
    pixels of each local class, ``bits`` (H, W) uint64 each pixel's classes as bits (None beyond 64 classes)."""
    n_local, rows, cols = thickness.shape
    local_to_global = np.ascontiguousarray(local_to_global, np.int64)
    if n_classes > 64 or n_local == 0:
        masks = np.zeros((n_classes, rows, cols), np.uint8)
        local = (thickness >= np.float32(threshold)) & (thickness > 0)
        masks[local_to_global] = local
        codes, combos = combination_codes(masks)
        top = np.array([c[-1] if c else 0 for c in combos], np.uint16 if n_classes > 254 else np.uint8)[codes]
        counts = local.reshape(n_local, -1).sum(axis=1) if n_local else np.zeros(0, np.int64)
        return masks, codes, combos, top, counts, None
    masks = np.empty((n_classes, rows, cols), np.uint8)
    bits = np.empty((rows, cols), np.uint64)
    top = np.empty((rows, cols), np.uint8)
    counts = np.zeros(n_local, np.int64)
    absent = np.setdiff1d(np.arange(n_classes), local_to_global).astype(np.int64)
    _masks_bits_kernel(np.ascontiguousarray(thickness, np.float32), np.float32(threshold), local_to_global,
                       absent, masks, bits, top, counts)
    codes = np.empty(rows * cols, np.uint16)
    keys, ok = _unique_codes_kernel(bits.reshape(-1), codes)
    if not ok:
        raise InputError("more than 65535 class combinations in one image")
    return masks, codes.reshape(rows, cols), _combos_of_keys(keys, n_classes), top, counts, bits


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _blend(out, r, col, value, label, colors, keep, alpha):  # pragma: no cover - compiled
    if label > 0:
        for k in range(3):
            v = keep * value + alpha * colors[label - 1, k]
            out[r, col, k] = np.uint8(min(max(v, np.float32(0)), np.float32(255)))
    else:
        g8 = np.uint8(min(max(value, np.float32(0)), np.float32(255)))
        out[r, col, 0] = g8
        out[r, col, 1] = g8
        out[r, col, 2] = g8


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _outline_color(out, r, col, g, colors):  # pragma: no cover - compiled
    for k in range(3):
        out[r, col, k] = np.uint8(min(max(colors[g, k], np.float32(0)), np.float32(255)))


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _overlay_bits_kernel(gray, bits, top, colors, keep, alpha, out):  # pragma: no cover - compiled
    """<= 64 classes: ``bits`` holds each pixel's classes, so its outlines are ``bits & ~(4 neighbours' bits)``
    and the highest such class is drawn (the last outline drawn wins in ``overlay_rgb``)."""
    rows, cols = gray.shape
    zero = np.uint64(0)
    for r in range(rows):
        for col in range(cols):
            b = bits[r, col]
            if b != zero:
                inner = zero
                if r > 0 and r < rows - 1 and col > 0 and col < cols - 1:
                    inner = bits[r - 1, col] & bits[r + 1, col] & bits[r, col - 1] & bits[r, col + 1]
                edge = b & ~inner
                if edge != zero:
                    g = 63
                    while (edge >> np.uint64(g)) & np.uint64(1) == zero:
                        g -= 1
                    _outline_color(out, r, col, g, colors)
                    continue
            _blend(out, r, col, np.float32(gray[r, col]), top[r, col], colors, keep, alpha)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _overlay_planes_kernel(gray, masks, top, colors, order, keep, alpha, out):  # pragma: no cover - compiled
    rows, cols = gray.shape
    for r in range(rows):
        for col in range(cols):
            done = False
            for g in order:  # classes with pixels, highest index first: the last outline drawn wins
                if masks[g, r, col]:
                    interior = (r > 0 and r < rows - 1 and col > 0 and col < cols - 1 and masks[g, r - 1, col] != 0
                                and masks[g, r + 1, col] != 0 and masks[g, r, col - 1] != 0
                                and masks[g, r, col + 1] != 0)
                    if not interior:
                        _outline_color(out, r, col, g, colors)
                        done = True
                        break
            if not done:
                _blend(out, r, col, np.float32(gray[r, col]), top[r, col], colors, keep, alpha)


def preview_rgb(gray: np.ndarray, masks: np.ndarray, top: np.ndarray, colors_rgb01: Sequence[Sequence[float]],
                present: Sequence[int], bits: np.ndarray | None = None, fill_alpha: float = 0.35) -> np.ndarray:
    """Exactly ``overlay.overlay_rgb(gray, masks.astype(bool), top, classes)`` (float32 blend, 4-neighbour
    outlines, later classes on top), in one pass. ``present``: 1-based indices of the classes with pixels;
    ``bits``: the per-pixel class bit sets of :func:`sample_masks` (<= 64 classes), faster than the planes."""
    colors = np.array(list(colors_rgb01) or [(0, 0, 0)], np.float32) * 255
    out = np.empty(gray.shape + (3,), np.uint8)
    gray = np.ascontiguousarray(gray, np.uint8)
    top = np.ascontiguousarray(top)
    # NumPy 2 (NEP 50): ``(1 - a) * rgb`` and ``a * tint`` are float32 products with float32(1 - a), float32(a)
    keep, alpha = np.float32(1 - fill_alpha), np.float32(fill_alpha)
    if bits is not None:
        _overlay_bits_kernel(gray, bits, top, colors, keep, alpha, out)
    else:
        order = np.array(sorted((int(c) - 1 for c in present), reverse=True), np.int64)
        _overlay_planes_kernel(gray, masks, top, colors, order, keep, alpha, out)
    return out


def write_png_fast(path: Path, rgb: np.ndarray, level: int = 1) -> None:
    """8-bit gray or RGB PNG: filter none and zlib level 1 (~10x faster than PIL's default; ~40 % larger)."""
    import struct

    array = np.ascontiguousarray(rgb, np.uint8)
    rows, cols = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    raw = np.empty((rows, 1 + cols * channels), np.uint8)
    raw[:, 0] = 0
    raw[:, 1:] = array.reshape(rows, -1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    color_type = {1: 0, 3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", cols, rows, 8, color_type, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, level))
            + chunk(b"IEND", b""))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atom_table(n_classes: int, combos: Iterable[tuple[int, ...]]) -> dict[tuple[int, ...], int]:
    """{combination: atom}; () -> 0, (c,) -> c, larger combinations C+1... in (size, indices) order."""
    table: dict[tuple[int, ...], int] = {(): 0}
    table.update({(c,): c for c in range(1, n_classes + 1)})
    multi = sorted({tuple(sorted(c)) for c in combos if len(c) > 1}, key=lambda c: (len(c), c))
    table.update({combo: n_classes + 1 + i for i, combo in enumerate(multi)})
    return table


def atoms_json(table: dict[tuple[int, ...], int], class_names: Sequence[str]) -> dict[str, Any]:
    return {
        "description": "atom (label value in labelsTr/labelsTs) -> the 1-based class indices it contains "
                       "(classes.json); 0 = background. Atoms 1..C are the single classes.",
        "classes": list(class_names),
        "atoms": {str(atom): list(combo) for combo, atom in sorted(table.items(), key=lambda kv: kv[1])},
    }


def dataset_json(name: str, class_names: Sequence[str], table: dict[tuple[int, ...], int], num_training: int,
                 num_test: int, extra: dict | None = None, ignore_label: int | None = None) -> dict[str, Any]:
    """nnU-Net v2 dataset.json for region-based training: each class is the region of the atoms containing it.
    ``ignore_label``: the value of unknown pixels (nnU-Net v2 ``"ignore"``: the highest value, an int)."""
    labels: dict[str, Any] = {"background": 0}
    for index, class_name in enumerate(class_names, start=1):
        labels[class_name] = sorted(atom for combo, atom in table.items() if index in combo)
    if ignore_label is not None:
        labels["ignore"] = int(ignore_label)
    data = {
        "channel_names": {"0": "radiograph"},
        "labels": labels,
        "regions_class_order": list(range(1, len(class_names) + 1)),
        "numTraining": int(num_training),
        "file_ending": FILE_ENDING,
        "overwrite_image_reader_writer": "SimpleITKIO",
        "name": name,
        "description": "Simulated radiographs (XraySeg) with exactly projected, overlapping bone labels. "
                       "Region-based labels: see atoms.json and classes.json.",
        "numTest": int(num_test),
    }
    data.update(extra or {})
    return data


# ---------------------------------------------------------------------------------------------------------------
# Manifest and disk space


def write_manifest(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, MANIFEST_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in MANIFEST_FIELDS})
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def read_manifest(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    return list(csv.DictReader(path.read_text().splitlines()))


def expected_sample_bytes(rows: int, cols: int, n_classes: int, previews: bool = True) -> int:
    """Generous estimate of one sample on disk: raw float32 image, compressed masks/labels/codes, preview, JSON."""
    pixels = rows * cols
    image = 4 * pixels + 1024
    masks = int(0.08 * n_classes * pixels) + pixels // 4 + 1024  # gzip of sparse binary masks
    labels = pixels // 2 + 1024
    codes = 2 * pixels + 1024
    preview = (3 * pixels) // 2 if previews else 0
    return image + masks + labels + codes + preview + 32 * 1024


def check_disk_space(folder: Path, needed_bytes: int) -> None:
    """Raise InputError if ``folder``'s file system has less than ``needed_bytes`` (+5 %) free."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes * 1.05:
        raise InputError(
            f"not enough disk space in {probe}: the export needs about {needed_bytes / 1e9:.2f} GB, only "
            f"{free / 1e9:.2f} GB are free. Free space, pick another --out, or lower --views-per-ct / --size"
        )


def write_classes_json(path: Path, rows: list[dict]) -> None:
    write_json(path, {"description": "dataset classes, in mask-stack and atom order (index is 1-based); "
                                     "label_values/label_names: in the default names table", "classes": rows})


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
