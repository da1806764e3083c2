"""CUDA path of the DRR projector (numba.cuda): one thread per detector pixel, the same ``trace_ray`` as the
CPU kernel (projector_kernels), so labels, material channels and empty-space skipping come in the one pass
with the same geometry and the same arithmetic (float64 traversal, float32 outputs).

Without a GPU it runs in numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set before numba is imported),
which is how the tests check it on a CPU-only machine: slow (Python per thread) but the same code.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

DEVICES = ("cpu", "cuda", "auto")
BLOCK = (16, 8)  # threads per block along (columns, rows): neighbouring rays share cache lines


def cuda_available() -> bool:
    """True when numba can use a CUDA GPU (or its simulator is switched on)."""
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # no driver, broken toolkit: the CPU path is the answer, not a traceback
        return False


def resolve_device(device: str) -> str:
    """"cpu" or "cuda" for a requested "cpu", "cuda" or "auto"; InputError for "cuda" without a GPU."""
    if device not in DEVICES:
        raise InputError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if device == "auto":
        return "cpu"
    raise InputError("device cuda was requested but no CUDA GPU is usable here (numba.cuda.is_available() is "
                     "false); use --device cpu, or --device auto to take the GPU only when there is one")


_KERNELS: dict[bool, object] = {}


def _kernel(with_materials: bool):
    """The CUDA kernel with or without material channels, compiled once per process (first call only)."""
    if with_materials not in _KERNELS:
        from .projector_cuda import make_kernel

        _KERNELS[with_materials] = make_kernel(with_materials)
    return _KERNELS[with_materials]


class GpuVolume:
    """The voxels, tables and hull on the GPU, uploaded once per projector; output buffers are kept per output
    shape, so a render costs one small upload (the view), the kernel and the copies back. ``packed``: 32-bit
    packed words, or 16-bit palette indices with the palette's ``pair_hu`` and ``pair_class`` and per-pair
    ``mu_lut`` and ``material_lut`` (projector_palette: half the memory traffic)."""

    def __init__(self, packed: np.ndarray, mu_lut: np.ndarray, material_lut: np.ndarray, hull,
                 pair_hu: np.ndarray | None = None, pair_class: np.ndarray | None = None) -> None:
        from numba import cuda

        self.packed = cuda.to_device(packed)
        self.flat = self.packed.reshape(packed.size)  # the same device memory, raveled
        self.mu_lut = cuda.to_device(np.ascontiguousarray(mu_lut, np.float64))
        self.material_lut = cuda.to_device(np.ascontiguousarray(material_lut))
        self.hull = [cuda.to_device(np.ascontiguousarray(a, np.float64)) for a in hull]
        # Empty pair tables mean packed words (the kernel's test); the index dtype fixes the kernel's types.
        self.palette = (cuda.to_device(np.zeros(0, np.int16) if pair_hu is None else pair_hu),
                        cuda.to_device(np.zeros(0, np.uint16) if pair_class is None else pair_class))
        self._outputs: dict[tuple, tuple] = {}

    def _buffers(self, line_integral, thickness, materials) -> tuple:
        from numba import cuda

        key = (line_integral.shape, thickness.shape, materials.shape)
        if key not in self._outputs:
            self._outputs = {key: tuple(cuda.device_array(shape, np.float32) for shape in key)}  # latest only
        return self._outputs[key]

    def trace(self, mu_scale, mu_offset, source, origin, column_step, row_step, metric, hull,
              line_integral, thickness, class_rows, materials, soft_only_below) -> None:
        """Fill the host arrays ``line_integral`` (rows, cols), ``thickness``, ``class_rows`` (classes, rows)
        and ``materials`` (channels, rows, cols) like ``trace_rays_cpu`` does; ``hull`` must be the one given
        at construction."""
        from numba import cuda

        rows, cols = line_integral.shape
        d_line, d_thickness, d_materials = self._buffers(line_integral, thickness, materials)
        view = cuda.to_device(np.concatenate([np.ravel(a) for a in (source, origin, column_step, row_step, metric)])
                              .astype(np.float64))  # one upload: 4 points/vectors and the 3x3 metric
        d_class_rows = cuda.to_device(np.zeros(class_rows.shape, np.uint8))  # small: rows x classes bytes
        grid = ((cols + BLOCK[0] - 1) // BLOCK[0], (rows + BLOCK[1] - 1) // BLOCK[1])
        kernel = _kernel(materials.shape[0] > 0)
        kernel[grid, BLOCK](self.packed, self.flat, self.mu_lut, float(mu_scale), float(mu_offset), view[0:3],
                            view[3:6], view[6:9], view[9:12], view[12:21].reshape(3, 3), *self.hull, d_line,
                            d_thickness, d_class_rows, self.material_lut, d_materials, int(soft_only_below),
                            *self.palette)
        d_line.copy_to_host(line_integral)
        if thickness.size:
            d_thickness.copy_to_host(thickness)
            d_class_rows.copy_to_host(class_rows)
        if materials.size:
            d_materials.copy_to_host(materials)
