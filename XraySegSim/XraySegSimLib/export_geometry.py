"""Where each exported sample looks from: its reproducible random generator, the randomised C-arm geometry
around the view preset, and the detector kept beyond the body (from the body's voxel-row extremes)."""

from __future__ import annotations

import dataclasses
import math
import zlib

import numba
import numpy as np

from . import views
from .export_config import DEFAULT_RANGES, ExportConfig
from .projector_kernels import NO_PALETTE_CLASS, NO_PALETTE_HU, row_extremes


def sample_rng(seed: int, ct_id: str, view: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(ct_id.encode()), int(view)])


def _axis_rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = math.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def random_geometry(config: ExportConfig, isocenter: np.ndarray, rng: np.random.Generator):
    """(XrayGeometry, {name: value}) for one sample: draws every range of ``config.ranges`` in sorted order."""
    preset = views.PRESETS[config.view]
    draws = {}
    for name in sorted(DEFAULT_RANGES):
        low, high = config.ranges.get(name, DEFAULT_RANGES[name])
        value = float(rng.uniform(low, high))
        if not config.randomize_geometry:
            value = 1.0 if name.endswith("_scale") else 0.0
        draws[name] = value
    sdd = preset.source_to_detector_mm * draws["sdd_scale"]
    magnification = max(preset.source_to_detector_mm / preset.source_to_isocenter_mm * draws["magnification_scale"],
                        1.02)
    sid = sdd / magnification
    width, height = preset.detector_mm
    pixel = max(width, height) / config.size * draws["pixel_scale"]
    pixels = (max(1, round(width / max(width, height) * config.size)),
              max(1, round(height / max(width, height) * config.size)))
    detector_mm = (pixels[0] * pixel, pixels[1] * pixel)
    iso = np.asarray(isocenter, float) + np.array([draws["shift_r_mm"], draws["shift_a_mm"], draws["shift_s_mm"]])
    geometry = views.from_preset(config.view, iso, pixels, sdd, sid, detector_mm, draws["lao_deg"],
                                 draws["cranial_deg"])
    if draws["roll_deg"]:
        geometry = geometry.rotated(_axis_rotation(geometry.principal_direction, draws["roll_deg"]), about=iso)
    values = dict(draws, sdd_mm=sdd, sid_mm=sid, magnification=magnification, pixel_spacing_mm=pixel,
                  detector_mm=list(detector_mm), detector_pixels=list(pixels), isocenter_ras=iso.tolist(),
                  base_isocenter_ras=np.asarray(isocenter, float).tolist())
    return geometry, values


DETECTOR_CLEARANCE_MM = 1.0  # gap left between the body's farthest voxel and a pushed detector


def keep_detector_beyond_body(geometry, values: dict, body_ras: np.ndarray | None, voxel_axes: np.ndarray):
    """(geometry, values): the detector moved back along the principal ray (source, isocentre, pixel pitch and
    pixel count kept; SDD and magnification grow) so that the whole body lies between source and detector.

    ``body_ras`` (3, N): points whose convex hull holds the body's voxel centres (``body_points_ras``);
    ``voxel_axes``: the CT's 3x3 IJK->RAS (a voxel's box reaches ``0.5 * sum |axis . n|`` beyond its centre
    along ``n``). ``values["detector_pushed_mm"]`` records the move (0 when none was needed)."""
    values = dict(values, detector_pushed_mm=0.0)
    if body_ras is None or body_ras.shape[1] == 0:
        return geometry, values
    n = geometry.principal_direction
    s = geometry.source
    depth = (body_ras[0] - s[0]) * n[0] + (body_ras[1] - s[1]) * n[1] + (body_ras[2] - s[2]) * n[2]
    reach = float(depth.max()) + 0.5 * float(np.abs(np.asarray(voxel_axes, float).T @ n).sum())
    push = reach + DETECTOR_CLEARANCE_MM - geometry.source_to_detector_distance
    if push <= 0:
        return geometry, values
    geometry = dataclasses.replace(geometry, detector_center=geometry.detector_center + push * n)
    values.update(detector_pushed_mm=push, sdd_final_mm=geometry.source_to_detector_distance,
                  magnification_final=geometry.magnification)
    return geometry, values


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
    extremes = row_extremes(packed, np.int64(hu_min), NO_PALETTE_HU, NO_PALETTE_CLASS)
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

