"""The engines of the DRR benchmark, one adapter each, behind one small interface.

An adapter is built once in its worker process (loading the volume, which counts towards its peak
memory) and then answers::

    info() -> dict            labels projected, version, how its time is measured
    prepare(size)             set up the benchmark view at ``size`` x ``size`` pixels
    render() -> (ms, image)   one DRR: its render time and the image as float32 [row j, column i],
                              oriented like ours (columns = patient left, rows = inferior)
    peak_mb() -> float        peak resident memory of the process that holds the volume and renders

``warmup`` says whether the worker renders once, untimed, after each ``prepare``.
Our engine lives here; the peers (plastimatch, DiffDRR) are in ``peers.py``.
"""

from __future__ import annotations

import time

import numpy as np

from drr_setup import make_geometry, package_version, peak_rss_mb, sample_ct


class XraySegEngine:
    """Our numba projector, with no labels or with every TotalSegmentator bone class projected; on the CPU or
    (``device="cuda"``, labels always) on the GPU, where the time includes copying the outputs to the host."""

    warmup = True  # the first render per process loads/compiles the numba kernel

    def __init__(self, threads: int, with_labels: bool, device: str = "cpu", skip_empty: bool = True) -> None:
        from XraySegSimLib import DrrProjector, LabelClasses, read_volume

        paths = sample_ct()
        ct = read_volume(paths.ct_path)
        labels = read_volume(paths.labels_path) if with_labels else None
        classes = LabelClasses.totalsegmentator_bones() if with_labels else None
        self.projector = DrrProjector(ct, labels, classes, threads=threads, device=device, skip_empty=skip_empty)
        self.center = ct.center_ras
        self.geometry = None

    def info(self) -> dict:
        return {
            "labels": len(self.projector.classes),
            "version": f"xrayseg {package_version('xrayseg')} ({self.projector.device})",
            "timing": "DrrProjector.render wall time; first render per size (numba kernel load) not timed",
        }

    def prepare(self, size: int) -> None:
        self.geometry = make_geometry(self.center, size)

    def render(self) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        result = self.projector.render(self.geometry)
        return (time.perf_counter() - start) * 1000.0, result.line_integral

    def peak_mb(self) -> float:
        return peak_rss_mb()


ENGINE_NAMES = ("xrayseg", "xrayseg-labels", "xrayseg-labels-noskip", "xrayseg-gpu", "plastimatch-exact", "diffdrr-siddon", "diffdrr-trilinear")


def make_engine(key: str, threads: int, workdir: str):
    """Build the adapter registered under ``key`` (one of ENGINE_NAMES)."""
    if key in ("xrayseg", "xrayseg-labels"):
        return XraySegEngine(threads, with_labels=key == "xrayseg-labels")
    if key == "xrayseg-labels-noskip":  # the same without empty-space skipping: what the skipping saves
        return XraySegEngine(threads, with_labels=True, skip_empty=False)
    if key == "xrayseg-gpu":
        return XraySegEngine(threads, with_labels=True, device="cuda")  # InputError without a GPU: row skipped
    import peers

    if key == "plastimatch-exact":
        return peers.PlastimatchExact(threads, workdir)
    if key.startswith("diffdrr-"):
        return peers.DiffDrrEngine(threads, renderer=key.split("-", 1)[1])
    raise ValueError(f"unknown engine '{key}'; choose one of {', '.join(ENGINE_NAMES)}")
