"""Shared fixtures: synthetic phantoms built in code, and the real sample chest CT (fetched once, cached)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from XraySegSimLib import Volume

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "Testing" / "Artifacts"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Folder for pictures a reviewer may want to look at (git-ignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture()
def app():
    """A headless Slicer application on a fresh scene (slicer-core); modules that use it skip without slicer."""
    from slicer_headless import HeadlessSlicer

    headless = HeadlessSlicer()
    yield headless
    headless.close()


@pytest.fixture(scope="session")
def sample_chest_ct():
    """The real chest CT with TotalSegmentator labels (see XraySegSimLib.sample_data)."""
    from XraySegSimLib.sample_data import fetch_sample_chest_ct

    os.environ.setdefault("XRAYSEG_CACHE", str(REPO / ".cache" / "xrayseg"))
    return fetch_sample_chest_ct()


def grid_volume(array: np.ndarray, spacing: float, center_ras=(0.0, 0.0, 0.0), rotation=None) -> Volume:
    """A Volume of ``array[k, j, i]`` with isotropic ``spacing`` whose grid centre sits at ``center_ras``;
    ``rotation`` (3x3) turns the grid axes (oblique IJK->RAS)."""
    r = np.eye(3) if rotation is None else np.asarray(rotation, float)
    m = np.eye(4)
    m[:3, :3] = r * spacing
    centre_ijk = (np.array(array.shape[::-1], float) - 1) / 2
    m[:3, 3] = np.asarray(center_ras, float) - m[:3, :3] @ centre_ijk
    return Volume(array, m, "phantom")


def voxel_centers_ras(volume: Volume) -> np.ndarray:
    """RAS of every voxel centre, shape (k, j, i, 3)."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in volume.array.shape], indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).astype(float)
    return ijk @ volume.ijk_to_ras[:3, :3].T + volume.ijk_to_ras[:3, 3]


def write_image(array: np.ndarray, ijk_to_ras: np.ndarray, path: Path) -> Path:
    """Write ``array[k, j, i]`` placed by a RAS ``ijk_to_ras`` with SimpleITK (which stores LPS)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    lps = np.diag([-1.0, -1.0, 1.0])
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps @ ijk_to_ras[:3, :3] / spacing).flatten().tolist())
    image.SetOrigin((lps @ ijk_to_ras[:3, 3]).tolist())
    sitk.WriteImage(image, str(path))
    return path
