"""Adapters for the peer DRR engines: plastimatch (``drr -i exact``) and DiffDRR (Siddon, trilinear).

Each renders the benchmark view (``drr_setup.make_geometry``) and returns its image oriented like ours:
array [row j, column i], columns towards the patient's left, rows towards the feet. Both peers are fed our
attenuation (``drr_setup.attenuation_per_mm``) so the correlation with our image checks geometry only.
See README.md for how each geometry was matched and checked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from drr_setup import (
    attenuation_per_mm, ct_center_ras, make_geometry, package_version, peak_rss_mb, ras_to_lps, sample_ct,
)


# ---- plastimatch ----------------------------------------------------------------------------------------
def write_lps_attenuation(ct_path: Path, out_path: Path) -> None:
    """Write mu (1/mm) on an identity-direction LPS grid: plastimatch's ray tracer ignores direction cosines
    (the sample CT's flipped y axis otherwise puts the volume elsewhere and every ray misses it)."""
    import SimpleITK as sitk

    image = sitk.DICOMOrient(sitk.ReadImage(str(ct_path), sitk.sitkFloat32), "LPS")
    if not np.allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-6):
        raise RuntimeError("oblique CT: plastimatch drr needs an axis-aligned volume")
    mu = sitk.GetImageFromArray(attenuation_per_mm(sitk.GetArrayViewFromImage(image)).astype(np.float32))
    mu.CopyInformation(image)
    sitk.WriteImage(mu, str(out_path))


def _vector(v: np.ndarray) -> str:
    return " ".join(f"{x:.9g}" for x in v)


def plastimatch_view_args(geometry) -> list[str]:
    """``plastimatch drr`` flags rendering our geometry: isocentre (-o), normal (-n, isocentre -> source),
    view-up (--vup, towards the top row) in LPS; SAD/SID; -r and -z take "columns rows" and
    "width height" (its help says "row col", but the PFM it writes is -r[0] pixels wide)."""
    to_source = geometry.source - geometry.isocenter
    sad = float(np.linalg.norm(to_source))
    nrm = ras_to_lps(to_source / sad)
    vup = ras_to_lps(-geometry.row_axis)
    if not np.allclose(ras_to_lps(geometry.column_axis), np.cross(vup, nrm), atol=1e-9):
        raise ValueError("plastimatch's columns run along vup x nrm; this (mirrored) view would need a flip")
    sdd = geometry.source_to_detector_distance
    if np.linalg.norm(geometry.detector_center - (geometry.source - sdd * to_source / sad)) > 1e-6:
        raise ValueError("the detector centre is off the source-isocentre line; plastimatch would need -c")
    (cols, rows), (width, height) = geometry.size, geometry.detector_size_mm
    return [
        "-r", f"{cols} {rows}", "-z", f"{width:.9g} {height:.9g}", "--sad", f"{sad:.9g}", "--sid", f"{sdd:.9g}",
        "-n", _vector(nrm), "--vup", _vector(vup), "-o", _vector(ras_to_lps(geometry.isocenter)),
    ]


def read_pfm(path: Path) -> np.ndarray:
    """A plastimatch PFM as float32 [row, col]; plastimatch writes the top row first (not PFM's bottom-up)."""
    data = Path(path).read_bytes()
    magic, size, scale, payload = data.split(b"\n", 3)
    if magic != b"Pf":
        raise ValueError(f"{path}: not a single-channel PFM")
    width, height = (int(x) for x in size.split())
    dtype = "<f4" if float(scale) < 0 else ">f4"
    return np.frombuffer(payload[: width * height * 4], dtype).reshape(height, width).astype(np.float32)


def plastimatch_render_ms(stdout: str) -> float:
    """Ray-tracing time from plastimatch's own timers: 'Total time' (render + write, after the volume is
    loaded and converted) minus the 'I/O time' of writing the image."""
    total = re.search(r"Total time:\s*([0-9.eE+-]+)", stdout)
    if total is None:
        raise RuntimeError(f"plastimatch printed no 'Total time': {stdout[-300:]!r}")
    io = sum(float(x) for x in re.findall(r"I/O time:\s*([0-9.eE+-]+)", stdout))
    return (float(total.group(1)) - io) * 1000.0


class PlastimatchExact:
    """``plastimatch drr -i exact`` (Siddon-style exact path lengths, OpenMP), one process per DRR."""

    warmup = True  # warms the page cache for the volume file

    def __init__(self, threads: int, workdir: str) -> None:
        self.exe = shutil.which("plastimatch")
        if self.exe is None:
            raise RuntimeError("plastimatch is not installed (Debian/Ubuntu: apt-get install plastimatch)")
        paths = sample_ct()
        self.center = ct_center_ras(paths.ct_path)
        self.volume_path = Path(workdir) / "plastimatch-mu.mha"
        write_lps_attenuation(paths.ct_path, self.volume_path)
        self.prefix = str(Path(workdir) / "plastimatch-")
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        self.command: list[str] = []

    def info(self) -> dict:
        done = subprocess.run([self.exe, "--version"], capture_output=True, text=True)
        return {
            "labels": 0,
            "version": done.stdout.strip() or "plastimatch",
            "timing": "plastimatch's own 'Total time' minus 'I/O time': ray tracing only (volume load, "
                      "process start and image write excluded); OMP_NUM_THREADS=threads",
        }

    def prepare(self, size: int) -> None:
        view = plastimatch_view_args(make_geometry(self.center, size))
        self.command = [self.exe, "drr", "-i", "exact", "-P", "none", "-t", "pfm", *view,
                        "-O", self.prefix, str(self.volume_path)]

    def render(self) -> tuple[float, np.ndarray]:
        done = subprocess.run(self.command, capture_output=True, text=True, env=self.env)
        if done.returncode != 0:
            raise RuntimeError(f"plastimatch failed ({done.returncode}): {(done.stdout + done.stderr)[-400:]}")
        # plastimatch integrates mu * length in cm (it divides by 10): ours / 10, same geometry.
        return plastimatch_render_ms(done.stdout), read_pfm(Path(self.prefix + "0000.pfm"))

    def peak_mb(self) -> float:
        import resource

        return peak_rss_mb(resource.RUSAGE_CHILDREN)  # the largest plastimatch run, volume loaded


# ---- DiffDRR ----------------------------------------------------------------------------------------------
# Rough peak memory per ray, measured at 256^2 on the sample CT (DiffDRR 0.6.1, CPU, no grad).
DIFFDRR_BYTES_PER_RAY = {"siddon": 50_000, "trilinear": 18_000}


def available_memory_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def check_diffdrr_view(geometry, ct_center: np.ndarray) -> None:
    """DiffDRR's documented AP pose (orientation "AP", no rotation, translation (0, SID, 0) about the CT
    centre) is exactly our chest-ap preset aimed at the CT centre; anything else needs another pose."""
    expected = {
        "source direction": (geometry.source - geometry.isocenter) / geometry.source_to_isocenter_distance,
        "column axis": geometry.column_axis, "row axis": geometry.row_axis, "isocentre": geometry.isocenter,
    }
    wanted = {"source direction": [0, 1, 0], "column axis": [-1, 0, 0], "row axis": [0, 0, -1],
              "isocentre": ct_center}
    for name, value in expected.items():
        if not np.allclose(value, wanted[name], atol=1e-6):
            raise ValueError(f"DiffDRR adapter supports the AP view at the CT centre only ({name} differs)")


class DiffDrrEngine:
    """DiffDRR 0.6.1 on the CPU, ``renderer`` "siddon" (exact) or "trilinear" (500 samples per ray)."""

    warmup = False  # no JIT; calls take seconds, and the median absorbs any first-call cost

    def __init__(self, threads: int, renderer: str) -> None:
        import torch
        from torchio import ScalarImage
        from diffdrr.data import read

        torch.set_num_threads(threads)
        paths = sample_ct()
        self.renderer = renderer
        self.center = ct_center_ras(paths.ct_path)
        self.subject = read(ScalarImage(paths.ct_path), orientation="AP")  # centres the CT at the origin
        self.subject.density.set_data(attenuation_per_mm(self.subject.volume.data.float()))
        self.drr = None
        self.pose = None

    def info(self) -> dict:
        return {
            "labels": 0,
            "version": f"diffdrr {package_version('diffdrr')} (torch {package_version('torch')})",
            "timing": "DRR.forward wall time under torch.no_grad (CPU); first call timed",
        }

    def prepare(self, size: int) -> None:
        import torch
        from diffdrr.drr import DRR

        geometry = make_geometry(self.center, size)
        check_diffdrr_view(geometry, self.center)
        rays = geometry.size[0] * geometry.size[1]
        need, have = rays * DIFFDRR_BYTES_PER_RAY[self.renderer], available_memory_bytes() - (1 << 30)
        if need > have:
            raise MemoryError(f"needs ~{need / 2**30:.1f} GiB, only {have / 2**30:.1f} GiB available")
        self.drr = None  # free the previous size's detector before building the next
        self.drr = DRR(
            self.subject, sdd=geometry.source_to_detector_distance, height=geometry.size[1],
            width=geometry.size[0], delx=geometry.spacing[0], dely=geometry.spacing[1], renderer=self.renderer,
        )
        self.pose = (torch.zeros(1, 3), torch.tensor([[0.0, geometry.source_to_isocenter_distance, 0.0]]))

    def render(self) -> tuple[float, np.ndarray]:
        import torch

        with torch.no_grad():
            start = time.perf_counter()
            image = self.drr(*self.pose, parameterization="euler_angles", convention="ZXY")
            elapsed = (time.perf_counter() - start) * 1000.0
        return elapsed, image[0, 0].numpy().astype(np.float32)

    def peak_mb(self) -> float:
        return peak_rss_mb()
