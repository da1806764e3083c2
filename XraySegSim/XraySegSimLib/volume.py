"""A voxel array placed in RAS, and reading it from NIfTI, NRRD, MHA or a DICOM series folder.

``Volume.array`` is indexed ``[k, j, i]`` like Slicer's ``arrayFromVolume`` and SimpleITK's
``GetArrayFromImage``; ``ijk_to_ras`` maps (i, j, k, 1) of a voxel centre to RAS millimetres.
Files store LPS (DICOM, NRRD, ITK) or RAS (NIfTI sform); SimpleITK hands everything over in LPS and we
convert with ``diag(-1, -1, 1)``, so any orientation, oblique included, ends up correct in RAS.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """Voxels ``array[k, j, i]`` with their 4x4 ``ijk_to_ras`` placement (mm)."""

    array: np.ndarray
    ijk_to_ras: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=float)
        if self.array.ndim != 3:
            raise InputError(f"{self.name or 'volume'}: expected a 3D volume, got {self.array.ndim} dimensions")
        if abs(np.linalg.det(self.ijk_to_ras[:3, :3])) < 1e-12:
            raise InputError(f"{self.name or 'volume'}: its IJK->RAS matrix is singular")

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        k, j, i = self.array.shape
        return (i, j, k)

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def ras_to_ijk(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_ras)

    @property
    def center_ras(self) -> np.ndarray:
        """RAS centre of the voxel grid."""
        centre_ijk = (np.array(self.shape_ijk, dtype=float) - 1) / 2
        return self.ijk_to_ras[:3, :3] @ centre_ijk + self.ijk_to_ras[:3, 3]

    def corners_ras(self) -> np.ndarray:
        """The 8 outer corners of the voxel grid (voxel faces, not centres), shape (8, 3)."""
        n = self.shape_ijk
        corners = np.array([[a, b, c] for a in (-0.5, n[0] - 0.5) for b in (-0.5, n[1] - 0.5)
                            for c in (-0.5, n[2] - 0.5)])
        return corners @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def contains_ras(self, point: np.ndarray) -> bool:
        """True if the RAS point lies inside the voxel grid's outer faces."""
        ijk = self.ras_to_ijk[:3, :3] @ np.asarray(point, float) + self.ras_to_ijk[:3, 3]
        return bool(np.all(ijk >= -0.5) and np.all(ijk <= np.array(self.shape_ijk) - 0.5))

    def same_grid_as(self, other: "Volume", tolerance_mm: float = 1e-3) -> bool:
        return self.array.shape == other.array.shape and bool(
            np.allclose(self.ijk_to_ras, other.ijk_to_ras, atol=tolerance_mm)
        )

    def describe_grid(self) -> str:
        sp = ", ".join(f"{s:.4g}" for s in self.spacing)
        origin = ", ".join(f"{o:.4g}" for o in self.ijk_to_ras[:3, 3])
        return f"size {self.shape_ijk}, spacing ({sp}) mm, origin RAS ({origin})"

    def grid_only(self) -> "Volume":
        """The same grid with no voxel memory (a read-only zero-stride array): for code that needs only the
        placement, so the voxels can be freed."""
        placeholder = np.lib.stride_tricks.as_strided(np.zeros(1, self.array.dtype), self.array.shape, (0, 0, 0))
        return Volume(placeholder, self.ijk_to_ras.copy(), self.name)

    def centroid_ras(self, mask: np.ndarray) -> np.ndarray:
        """RAS centroid of the voxels where ``mask[k, j, i]`` is true."""
        k, j, i = np.nonzero(mask)
        if len(i) == 0:
            raise InputError(f"{self.name or 'volume'}: the mask is empty, it has no centroid")
        ijk = np.array([i.mean(), j.mean(), k.mean()])
        return self.ijk_to_ras[:3, :3] @ ijk + self.ijk_to_ras[:3, 3]


def _ijk_to_ras_from_sitk(image) -> np.ndarray:
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction @ np.diag(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ ijk_to_lps


def _read_nifti(path: Path, label: str) -> Volume:
    """NIfTI through nibabel, which streams the (gzipped) voxels straight into one array: half the peak memory
    of SimpleITK's reader, which decompresses to a buffer and then copies. The affine is RAS already."""
    import nibabel

    try:
        image = nibabel.load(str(path))
    except Exception as err:  # nibabel raises several types for broken files
        raise InputError(f"{label}: cannot read {path} as NIfTI ({err})") from None
    if len(image.shape) != 3:
        raise InputError(f"{label}: expected a 3D scalar volume, got a NIfTI image of shape {image.shape}")
    slope, intercept = image.dataobj.slope, image.dataobj.inter
    try:
        array = np.asarray(image.dataobj.get_unscaled())
    except (OSError, EOFError, ValueError, zlib.error) as err:  # truncated or corrupt voxel data
        raise InputError(f"{label}: the voxel data of {path} cannot be read ({err}); the file is truncated or "
                         "corrupt: copy or export it again") from None
    if (slope, intercept) != (1.0, 0.0):
        array = array.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return Volume(np.ascontiguousarray(array.T), image.affine, label)  # [i, j, k] -> [k, j, i]


def check_finite(volume: Volume) -> Volume:
    """Refuse NaN or infinite voxels (a CT full of NaN would otherwise render as water)."""
    # The sum is non-finite exactly when a voxel is (float64: no overflow from HU); no voxel-sized temporary.
    if np.issubdtype(volume.array.dtype, np.floating) and not np.isfinite(np.sum(volume.array, dtype=np.float64)):
        bad = int(volume.array.size - np.count_nonzero(np.isfinite(volume.array)))
        if bad:
            raise InputError(f"{volume.name or 'volume'}: {bad} of {volume.array.size} voxels are NaN or infinite; "
                             "replace them (e.g. with -1000 HU, air) before rendering")
    return volume


def read_volume(path: str | Path, name: str | None = None) -> Volume:
    """Read a 3D image file (NIfTI, NRRD, MHA...) or a DICOM series folder into a RAS-placed Volume; refuses
    unreadable (e.g. truncated) files and NaN or infinite voxels with one line (:class:`InputError`)."""
    path = Path(path)
    label = name or path.name
    if not path.exists():
        raise InputError(f"{label}: file not found: {path}")
    if path.is_file() and path.name.lower().endswith((".nii", ".nii.gz")):
        return check_finite(_read_nifti(path, label))
    import SimpleITK as sitk

    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            files = reader.GetGDCMSeriesFileNames(str(path))
            if not files:
                raise InputError(f"{label}: the folder {path} holds no DICOM series")
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reason"
        raise InputError(
            f"{label}: cannot read {path} as an image ({first_line}); use NIfTI (.nii/.nii.gz), NRRD, MHA "
            "or a DICOM series folder"
        ) from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{label}: expected a 3D scalar volume, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel"
        )
    return check_finite(Volume(sitk.GetArrayFromImage(image), _ijk_to_ras_from_sitk(image), label))
