"""Image filters of the chain: separable Gaussian (numba), FFT blur at reduced resolution, bilinear resize."""

from __future__ import annotations

import math

import numba
import numpy as np


def gaussian_kernel(sigma_px: float) -> np.ndarray:
    """Normalised 1D Gaussian sampled at integer offsets, radius ceil(4 sigma)."""
    sigma_px = max(float(sigma_px), 1e-3)
    radius = max(1, int(math.ceil(4.0 * sigma_px)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma_px) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


@numba.njit(fastmath=True, cache=True)
def _convolve_rows(image, kernel, out):  # pragma: no cover - compiled
    rows, cols = image.shape
    radius = kernel.size // 2
    for r in numba.prange(rows):
        padded = np.empty(cols + 2 * radius, np.float32)  # edge clamp, then a straight (vectorised) loop
        for c in range(cols + 2 * radius):
            padded[c] = image[r, min(max(c - radius, 0), cols - 1)]
        for c in range(cols):
            out[r, c] = 0.0
        for k in range(kernel.size):
            w = kernel[k]
            for c in range(cols):
                out[r, c] += w * padded[c + k]


@numba.njit(fastmath=True, cache=True)
def _convolve_cols(image, kernel, out):  # pragma: no cover - compiled
    rows, cols = image.shape
    radius = kernel.size // 2
    for r in numba.prange(rows):
        for k in range(kernel.size):
            rr = min(max(r + k - radius, 0), rows - 1)
            w = kernel[k]
            for c in range(cols):
                out[r, c] += w * image[rr, c]


def gaussian_blur(image: np.ndarray, sigma_px: tuple[float, float]) -> np.ndarray:
    """Separable Gaussian blur, sigma (columns, rows) in pixels, edges clamped; sigma < 0.05 px is identity."""
    out = np.ascontiguousarray(image, np.float32)
    if sigma_px[0] > 0 and not _is_identity(kernel := gaussian_kernel(sigma_px[0])):
        tmp = np.empty_like(out)
        _convolve_rows(out, kernel, tmp)
        out = tmp
    if sigma_px[1] > 0 and not _is_identity(kernel := gaussian_kernel(sigma_px[1])):
        tmp = np.zeros_like(out)
        _convolve_cols(out, kernel, tmp)
        out = tmp
    return out


def _is_identity(kernel: np.ndarray) -> bool:
    """A sampled Gaussian far below a pixel (sigma < ~0.25 px) leaves every pixel within 1e-4 of itself."""
    return float(kernel[kernel.size // 2]) > 1.0 - 1e-4


@numba.njit(fastmath=True, cache=True)
def _resize_bilinear(image, j0, j1, fy, i0, i1, fx, out):  # pragma: no cover - compiled
    """Bilinear resize from precomputed source indices and weights per output row and column."""
    rows, cols = out.shape
    for r in numba.prange(rows):
        a, b, wy = j0[r], j1[r], fy[r]
        for c in range(cols):
            top = image[a, i0[c]] + fx[c] * (image[a, i1[c]] - image[a, i0[c]])
            bottom = image[b, i0[c]] + fx[c] * (image[b, i1[c]] - image[b, i0[c]])
            out[r, c] = top + wy * (bottom - top)


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (low, high) and weight of the high one, pixel centres aligned, edges clamped."""
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1.0)
    low = np.minimum(x.astype(np.int64), max(n_in - 2, 0))
    high = np.minimum(low + 1, n_in - 1)
    return low, high, (x - low).astype(np.float32)


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Downsample by averaging factor x factor blocks (edge rows/columns replicated to a multiple)."""
    rows, cols = image.shape
    pad_r, pad_c = (-rows) % factor, (-cols) % factor
    padded = np.pad(image, ((0, pad_r), (0, pad_c)), mode="edge") if pad_r or pad_c else image
    r, c = padded.shape
    return padded.reshape(r // factor, factor, c // factor, factor).mean(axis=(1, 3), dtype=np.float32)


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (numba) of a 2D float image to ``shape`` (rows, cols)."""
    out = np.empty(shape, np.float32)
    image = np.ascontiguousarray(image, np.float32)
    _resize_bilinear(image, *_bilinear_taps(image.shape[0], shape[0]), *_bilinear_taps(image.shape[1], shape[1]), out)
    return out


def fft_gaussian_blur(image: np.ndarray, sigma_px: tuple[float, float]) -> np.ndarray:
    """Gaussian blur by FFT (sigma columns, rows in pixels), reflect-padded by 3 sigma so the field does not wrap
    and a uniform object stays uniform (the body is assumed to continue beyond the detector edge)."""
    pad_c, pad_r = (int(math.ceil(3 * s)) for s in sigma_px)
    rows, cols = image.shape
    pad_r, pad_c = min(pad_r, rows - 1), min(pad_c, cols - 1)
    padded = np.pad(image, ((pad_r, pad_r), (pad_c, pad_c)), mode="reflect")
    fy = np.fft.fftfreq(padded.shape[0])[:, None]
    fx = np.fft.rfftfreq(padded.shape[1])[None, :]
    transfer = np.exp(-2 * math.pi ** 2 * ((fx * sigma_px[0]) ** 2 + (fy * sigma_px[1]) ** 2))
    blurred = np.fft.irfft2(np.fft.rfft2(padded) * transfer, s=padded.shape)
    return blurred[pad_r:pad_r + rows, pad_c:pad_c + cols].astype(np.float32)


def smooth_at_low_resolution(image: np.ndarray, sigma_mm: float, spacing_mm: tuple[float, float],
                             samples_per_sigma: float = 3.0) -> np.ndarray:
    """Broad Gaussian blur computed cheaply: block-mean downsample to ~``samples_per_sigma`` pixels per sigma,
    FFT convolution there, bilinear upsample back."""
    factor = max(1, int(sigma_mm / (samples_per_sigma * max(spacing_mm))))
    small = block_mean(image, factor) if factor > 1 else np.asarray(image, np.float32)
    sigma_px = (sigma_mm / (spacing_mm[0] * factor), sigma_mm / (spacing_mm[1] * factor))
    blurred = fft_gaussian_blur(small, sigma_px)
    return resize(blurred, image.shape) if factor > 1 else blurred
