"""The CUDA kernel of the projector (numba.cuda). Imported only when a CUDA render is asked for, by
projector_gpu; ``cuda`` is a module global so that numba's CUDA simulator can stand in for it."""

from __future__ import annotations

from numba import cuda

from .projector_kernels import make_trace_ray


def make_kernel(with_materials: bool):
    """Compile the kernel: one thread per detector pixel, tracing with the CPU kernel's ``trace_ray`` (packed
    words, with the palette tables ``pair_hu``, ``pair_class`` empty, or palette indices: projector_palette)."""
    device_function = cuda.jit(device=True)
    trace = device_function(make_trace_ray(with_materials, device_function))

    @cuda.jit
    def trace_rays_cuda(packed, flat, mu_lut, mu_scale, mu_offset, source, origin, column_step, row_step, metric,
                        hull_directions, hull_lower, hull_upper, line_integral, thickness, class_rows,
                        material_lut, materials, soft_only_below, pair_hu, pair_class):  # pragma: no cover - compiled
        col, row = cuda.grid(2)
        if row < line_integral.shape[0] and col < line_integral.shape[1]:
            # Outputs come uninitialised from device_array: this thread owns its pixel (class_rows, shared
            # by a row's threads, comes zeroed; they only ever write 1 into it).
            line_integral[row, col] = 0.0
            for c in range(thickness.shape[0]):
                thickness[c, row, col] = 0.0
            for m in range(materials.shape[0]):
                materials[m, row, col] = 0.0
            trace(packed, flat, mu_lut, mu_scale, mu_offset, source, origin, column_step, row_step, metric,
                  hull_directions, hull_lower, hull_upper, row, col, line_integral, thickness, class_rows,
                  material_lut, materials, soft_only_below, pair_hu, pair_class)

    return trace_rays_cuda
