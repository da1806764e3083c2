"""Reading real (and simulated) radiographs: DICOM CR/DX/DR, PNG/JPEG/TIFF, NRRD/NIfTI/MHA 2D images.

Every reader returns a :class:`Radiograph`: the raw pixel values after the modality LUT (rescale slope and
intercept) and the VOI LUT where the file has one, the photometric interpretation ("MONOCHROME1": dense is dark,
"MONOCHROME2": dense is bright), the pixel spacing in mm as (row_mm, column_mm) with where it came from, and a
4x4 IJK->RAS placement for writing results back on the same grid. ``Radiograph.normalized(...)`` applies THE
shared normalisation, :func:`XraySegSimLib.physics.normalize_radiograph`, so real and simulated images are
brought to the same [0, 1] MONOCHROME2 range the networks were trained on.

Pixel spacing (DICOM): ImagerPixelSpacing (0018,1164) first, because our training images (DRRs) are sampled at
the detector; then PixelSpacing (0028,0030); then NominalScannedPixelSpacing (0018,2010). When none is present
``spacing_mm`` is None and ``spacing_source`` is "absent"; the predictor then falls back (with a warning) to an
explicit ``--spacing`` or the model's training field of view.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import RadiographReadError

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic", ""}
# Smallest side a radiograph may have: below it there is no anatomy to segment (a network trained on 256+ px
# tiles returns noise), so such an image is refused rather than "segmented".
MIN_SIDE_PIXELS = 16  # (pydicom's own CR test file is 16x16)
PILLOW_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
ITK_SUFFIXES = {".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd"}


class SpacingWarning(UserWarning):
    """The file does not say its pixel spacing; a fallback is used."""


@dataclass
class Radiograph:
    """One 2D radiograph as read from a file (see module docstring)."""

    pixels: np.ndarray  # (rows, cols) float32, after modality and VOI LUTs
    photometric: str = "MONOCHROME2"
    spacing_mm: tuple[float, float] | None = None  # (row_mm, column_mm)
    spacing_source: str = "absent"
    ijk_to_ras: np.ndarray | None = None  # 4x4, voxel (i, j, 0) -> RAS; None: plain image
    path: Path | None = None
    window_center_width: tuple[float, float] | None = None  # the file's own linear VOI window, if any
    metadata: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.pixels.shape)  # type: ignore[return-value]

    def normalized(self, window_percentiles: tuple[float, float] = (0.5, 99.5), gamma: float = 1.0,
                   use_file_window: bool = False) -> np.ndarray:
        """THE shared normalisation: float32 in [0, 1], MONOCHROME2 (dense = bright)."""
        from XraySegSimLib.physics import normalize_radiograph

        window = self.window_center_width if use_file_window else None
        return normalize_radiograph(self.pixels, self.photometric, tuple(window_percentiles), window, gamma,
                                    "MONOCHROME2")

    def placement(self, spacing_mm: tuple[float, float] | None = None) -> np.ndarray:
        """IJK->RAS of this image: the file's own, or a plain one with ``spacing_mm`` (row, col)."""
        if self.ijk_to_ras is not None:
            return np.array(self.ijk_to_ras, float)
        row_mm, col_mm = spacing_mm or self.spacing_mm or (1.0, 1.0)
        # As Slicer places a plain 2D image: the LPS-aligned grid (i -> L, j -> P) with the pixel spacing.
        return np.array([[-col_mm, 0, 0, 0], [0, -row_mm, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_radiograph(path: str | Path, photometric: str | None = None) -> Radiograph:
    """Read a radiograph from DICOM, PNG/JPEG/TIFF or NRRD/NIfTI/MHA (2D, or a single-slice 3D volume).

    ``photometric`` overrides what the file says (for PNG/JPEG, which carry no such tag, MONOCHROME2 is
    assumed: dense is bright). Raises :class:`RadiographReadError` with what is wrong."""
    path = Path(path)
    if not path.exists():
        raise RadiographReadError(f"radiograph not found: {path}")
    if path.is_dir():
        raise RadiographReadError(f"{path} is a folder; give one radiograph file (DICOM, PNG, JPEG, TIFF, NRRD, "
                                  "NIfTI)")
    suffix = _suffix(path)
    if suffix in PILLOW_SUFFIXES:
        image = _read_pillow(path)
    elif suffix in ITK_SUFFIXES:
        image = _read_itk(path)
    elif suffix in DICOM_SUFFIXES or _looks_like_dicom(path):
        image = read_dicom(path)
    else:
        raise RadiographReadError(
            f"{path}: unknown file type '{suffix}'; use DICOM (.dcm or no suffix), PNG, JPEG, TIFF, NRRD, NIfTI "
            "or MHA")
    if photometric is not None:
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise RadiographReadError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
        image.photometric = photometric
    check_radiograph_pixels(image.pixels, str(path))
    return image


def check_radiograph_pixels(pixels: np.ndarray, where: str) -> None:
    """Refuse what cannot be a radiograph: fewer than ``MIN_SIDE_PIXELS`` along a side, non-finite pixels, or a
    constant image (nothing to segment; the normalisation would divide by zero)."""
    rows, cols = pixels.shape[:2]
    if min(rows, cols) < MIN_SIDE_PIXELS:
        raise RadiographReadError(f"{where}: an image of {cols}x{rows} pixels is too small to be a radiograph (at "
                                  f"least {MIN_SIDE_PIXELS} pixels a side); give the full-resolution image")
    finite = np.isfinite(pixels)
    if not finite.all():
        raise RadiographReadError(f"{where}: {int((~finite).sum())} pixels are NaN or infinite; give an image with "
                                  "finite pixel values")
    low, high = float(pixels.min()), float(pixels.max())
    if high - low <= 1e-6 * max(1.0, abs(high)):
        raise RadiographReadError(f"{where}: a constant image (every pixel {low:g}); there is nothing to segment")


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
        return head[128:132] == b"DICM"
    except OSError:
        return False


# ---- DICOM ------------------------------------------------------------------------------------------------------


def _dicom_spacing(ds) -> tuple[tuple[float, float] | None, str]:
    for keyword in ("ImagerPixelSpacing", "PixelSpacing", "NominalScannedPixelSpacing"):
        value = ds.get(keyword)
        if value is not None:
            try:
                row_mm, col_mm = (float(v) for v in value)
            except (TypeError, ValueError):
                continue
            if row_mm > 0 and col_mm > 0:
                return (row_mm, col_mm), keyword
    return None, "absent"


def read_dicom(path: str | Path) -> Radiograph:
    """DICOM CR/DX/DR (any single-frame grayscale image): modality LUT (RescaleSlope/Intercept or Modality
    LUT Sequence), then the VOI LUT Sequence if present (a linear Window Center/Width is kept aside:
    ``window_center_width``); MONOCHROME1 is kept as such and inverted by the normalisation."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    not_dicom = (f"{path}: not a DICOM file (no 'DICM' marker and no DICOM elements); give a DICOM radiograph, "
                 "or a PNG/JPEG/TIFF/NRRD with its own suffix")
    try:
        ds = pydicom.dcmread(str(path))
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(str(path), force=True)
            # A forced read of a text file "succeeds" with junk: it must hold at least one real DICOM element.
            if not any(tag in ds for tag in ("SOPClassUID", "Modality", "PixelData", "Rows", "StudyInstanceUID")):
                raise RadiographReadError(not_dicom)
        except RadiographReadError:
            raise
        except Exception:  # noqa: BLE001 - any parser failure means: not readable DICOM
            raise RadiographReadError(not_dicom) from None
    except Exception as error:  # noqa: BLE001
        raise RadiographReadError(f"{path}: not a readable DICOM file ({error})") from error
    modality = ds.get("Modality", "?")
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = ds.get("SOPClassUID")
        sop_name = getattr(sop, "name", sop) if sop is not None else "unknown SOP class"
        raise RadiographReadError(
            f"{path}: the DICOM file has no pixel data (Modality {modality}, {sop_name}); it is not an image. "
            "Give the radiograph's image file (CR, DX or DR), not a report, plan, structure set or DICOMDIR")
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut  # type: ignore
    try:
        array = ds.pixel_array
    except Exception as error:  # noqa: BLE001 - missing decoder, truncated data...
        raise RadiographReadError(
            f"{path}: cannot decode the pixel data (transfer syntax "
            f"{getattr(getattr(ds, 'file_meta', None), 'TransferSyntaxUID', '?')}): {error}. Install a decoder "
            "plugin for pydicom (e.g. pylibjpeg) or convert the file to uncompressed DICOM") from error
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        warnings.warn(f"{path}: {frames} frames; using the first", stacklevel=2)
        array = array[0]
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if array.ndim == 3 and array.shape[-1] in (3, 4):
            warnings.warn(f"{path}: colour image ({photometric}); converted to gray", stacklevel=2)
            if photometric.startswith("YBR"):
                from pydicom.pixels import convert_color_space

                array = convert_color_space(array, photometric, "RGB")
            array = array[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            photometric = "MONOCHROME2"
        else:
            raise RadiographReadError(f"{path}: unsupported photometric interpretation {photometric}")
    if array.ndim != 2:
        raise RadiographReadError(f"{path}: pixel data of shape {array.shape} is not a 2D image")
    modality_values = np.asarray(apply_modality_lut(array, ds))
    values = modality_values.astype(np.float32)
    window = None
    if "VOILUTSequence" in ds:  # a LUT is indexed by (integer) modality values
        if not np.issubdtype(modality_values.dtype, np.integer):
            modality_values = np.round(modality_values).astype(np.int64)
        values = np.asarray(apply_voi_lut(modality_values, ds, index=0, prefer_lut=True), dtype=np.float32)
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        center, width = ds.WindowCenter, ds.WindowWidth
        center = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        window = (center, width)
    spacing, source = _dicom_spacing(ds)
    if spacing is None:
        warnings.warn(f"{path}: no ImagerPixelSpacing / PixelSpacing / NominalScannedPixelSpacing; the pixel "
                      "spacing must come from --spacing or the model's field of view", SpacingWarning,
                      stacklevel=2)
    meta = {"modality": modality, "manufacturer": str(ds.get("Manufacturer", "")),
            "view_position": str(ds.get("ViewPosition", "")), "body_part": str(ds.get("BodyPartExamined", ""))}
    return Radiograph(values, photometric, spacing, source, None, path, window, meta)


# ---- PNG / JPEG / TIFF --------------------------------------------------------------------------------------------


def _read_pillow(path: Path) -> Radiograph:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
                array = np.asarray(image.convert("L"), np.float32)
            else:
                array = np.asarray(image, dtype=np.float32)
    except (UnidentifiedImageError, OSError) as error:
        raise RadiographReadError(f"{path}: not a readable image ({error})") from error
    if array.ndim == 3:
        array = array[..., :3].mean(axis=-1)
    warnings.warn(f"{path}: {path.suffix} files carry no pixel spacing; it must come from --spacing or the "
                  "model's field of view", SpacingWarning, stacklevel=3)
    return Radiograph(array.astype(np.float32), "MONOCHROME2", None, "absent", None, path)


# ---- NRRD / NIfTI / MHA --------------------------------------------------------------------------------------------


def _read_itk(path: Path) -> Radiograph:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise RadiographReadError(f"{path}: cannot read the image ({str(error).strip().splitlines()[-1]})") from error
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise RadiographReadError(f"{path}: {image.GetNumberOfComponentsPerPixel()} components per pixel; a "
                                  "radiograph has one")
    dim = image.GetDimension()
    size = image.GetSize()
    if dim == 3:
        if size[2] != 1:
            raise RadiographReadError(f"{path}: a 3D volume of {size[2]} slices is not a radiograph; give a 2D "
                                      "image or a single-slice volume")
    elif dim != 2:
        raise RadiographReadError(f"{path}: {dim}D image; a radiograph is 2D")
    array = sitk.GetArrayFromImage(image).astype(np.float32).reshape(size[1], size[0])
    spacing = image.GetSpacing()
    direction = np.array(image.GetDirection(), float).reshape(dim, dim)
    origin = np.array(image.GetOrigin(), float)
    m = np.eye(4)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    if dim == 3:
        m[:3, :3] = lps_to_ras @ direction @ np.diag(spacing)
        m[:3, 3] = lps_to_ras @ origin
    else:
        d3 = np.eye(3)
        d3[:2, :2] = direction
        m[:3, :3] = lps_to_ras @ d3 @ np.diag([spacing[0], spacing[1], 1.0])
        m[:3, 3] = lps_to_ras @ np.array([origin[0], origin[1], 0.0])
    return Radiograph(array, "MONOCHROME2", (float(spacing[1]), float(spacing[0])), "file", m, path)
