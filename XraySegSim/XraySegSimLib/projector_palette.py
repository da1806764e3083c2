"""The projector's compact voxel volume: 2 bytes per voxel, an index into a palette of (HU, class) pairs.

The traversal is bound by memory traffic, not arithmetic: with one 4-byte word per voxel (HU in the low 16
bits, class index in the high 16, ``pack_voxels``) every render streams the volume through the caches, which
is most of the time at 256^2 (measured on the sample chest CT, AP, no labels: the same traversal over 2-byte
HU words took 0.64x the time at 256^2 and 0.75x at 512^2). A CT with bone labels holds far fewer distinct
(HU, class) pairs than 2^16 (the sample chest CT with its 49 TotalSegmentator bone classes: 53,818), so each
voxel can be stored as its pair's index and decoded with small per-pair tables (attenuation, class, HU) that
stay in cache. When the pairs do not fit (e.g. all 89 TotalSegmentator classes of that CT: 86,992 pairs) or
there are more than ``MAX_PALETTE_CLASSES`` classes, the projector keeps the 4-byte words.

The palette is ordered by class, then by HU: the unlabelled pairs come first, and among them the empty ones
(class 0, HU <= -1000: no attenuation, no label), whose count is ``n_empty`` (information; the kernels skip
empty space with the hull, not per voxel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

PALETTE_SIZE = 65536  # indices are uint16
MAX_PALETTE_CLASSES = 127  # the pair tables are (classes + 1) x 65536 entries (33 MB at 127); beyond: 4-byte words
HU_CODES = 65536  # int16 HU, offset by 32768 so that the palette is ordered by signed HU
AIR_HU = -1000


@numba.njit(inline="always", nogil=True)
def voxel_hu_class(hu, labels, class_lut, has_labels, k, j, i):  # pragma: no cover - compiled
    """(HU rounded and clipped to int16, class index) of one voxel: what the packed word and the palette hold.
    HU is clipped before it is rounded, so every value has a defined result (+-inf: the int16 ends; NaN: -32768,
    air, which is what the float-to-integer conversion gave on x86; read_volume refuses non-finite CTs)."""
    c = np.int64(0)
    if has_labels:
        value = labels[k, j, i]
        if value < class_lut.shape[0]:
            c = np.int64(class_lut[value])
    x = hu[k, j, i]
    if x != x:
        return np.int64(-32768), c
    return np.int64(round(min(max(x, -32768.0), 32767.0))), c


@numba.njit(parallel=True, cache=True, nogil=True)
def _mark_pairs(hu, labels, class_lut, has_labels, present):  # pragma: no cover - compiled
    """present[class, HU + 32768] = 1 for every pair that occurs (threads only ever write 1: no lost update
    can change the result)."""
    nk, nj, ni = hu.shape
    for k in numba.prange(nk):
        for j in range(nj):
            for i in range(ni):
                h, c = voxel_hu_class(hu, labels, class_lut, has_labels, k, j, i)
                present[c, h + 32768] = 1


@numba.njit(parallel=True, cache=True, nogil=True)
def _encode_pairs(hu, labels, class_lut, has_labels, index, out):  # pragma: no cover - compiled
    nk, nj, ni = hu.shape
    for k in numba.prange(nk):
        for j in range(nj):
            for i in range(ni):
                h, c = voxel_hu_class(hu, labels, class_lut, has_labels, k, j, i)
                out[k, j, i] = index[c, h + 32768]


@dataclass
class PaletteVolume:
    """Voxels as uint16 indices into per-pair tables; see the module docstring."""

    voxels: np.ndarray  # (nk, nj, ni) uint16
    hu: np.ndarray  # (n_pairs,) int16: each pair's HU
    class_index: np.ndarray  # (n_pairs,) uint16: each pair's class index (0 = none)
    n_empty: int  # pairs [0, n_empty) are empty (class 0, HU <= -1000)

    def packed(self) -> np.ndarray:
        """The same voxels as ``pack_voxels`` writes them (uint32: class << 16 | HU as uint16)."""
        words = (self.class_index.astype(np.uint32) << 16) | self.hu.view(np.uint16).astype(np.uint32)
        return words[self.voxels]

    def per_pair(self, table_by_hu_code: np.ndarray) -> np.ndarray:
        """Rows of a table indexed by the 16-bit HU code (e.g. the attenuation or material table), one per pair."""
        return np.ascontiguousarray(table_by_hu_code[self.hu.view(np.uint16)])


def build_palette_volume(hu: np.ndarray, labels: np.ndarray, class_lut: np.ndarray, has_labels: bool,
                         n_classes: int) -> PaletteVolume | None:
    """The palette volume of a CT (HU, any real dtype) and its label map (mapped to class indices by
    ``class_lut``), or None when its (HU, class) pairs do not fit 16 bits or there are too many classes."""
    if n_classes > MAX_PALETTE_CLASSES:
        return None
    present = np.zeros((n_classes + 1, HU_CODES), np.uint8)
    _mark_pairs(hu, labels, class_lut, has_labels, present)
    flat_present = present.ravel()
    n_pairs = int(np.count_nonzero(flat_present))
    if n_pairs > PALETTE_SIZE:
        return None
    # Index of each present pair = (present pairs up to it) - 1; uint16 arithmetic wraps 65536 -> 0 -> 65535,
    # which is right for the last of 65536 pairs (absent entries are never read), and holds no wider copy.
    index = np.cumsum(flat_present, dtype=np.uint16).reshape(present.shape)
    index -= np.uint16(1)
    pairs = np.flatnonzero(flat_present)  # ordered by class, then by signed HU
    pair_class, pair_hu = pairs // HU_CODES, pairs % HU_CODES - 32768
    voxels = np.empty(hu.shape, np.uint16)
    _encode_pairs(hu, labels, class_lut, has_labels, index, voxels)
    n_empty = int(np.count_nonzero((pair_class == 0) & (pair_hu <= AIR_HU)))
    return PaletteVolume(voxels, pair_hu.astype(np.int16), pair_class.astype(np.uint16), n_empty)


def palette_from_words(words: np.ndarray, n_classes: int) -> PaletteVolume | None:
    """The palette volume of 32-bit packed words (e.g. a virtual patient's warped voxels), or None as above.
    The HU and class halves are read through strided views of the words: no copy."""
    halves = words.view(np.uint16).reshape(words.shape + (2,))  # little-endian: [..., 0] = HU bits, [..., 1] = class
    if np.little_endian is False:  # pragma: no cover - every platform Slicer ships on is little-endian
        halves = halves[..., ::-1]
    identity = np.arange(n_classes + 1, dtype=np.uint16)
    return build_palette_volume(halves[..., 0].view(np.int16), halves[..., 1], identity, True, n_classes)
