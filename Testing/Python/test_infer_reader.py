"""Reading radiographs: DICOM (MONOCHROME1, rescale, VOI, spacing, no pixel data), PNG, NRRD (XraySegInferLib.reader)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from XraySegInferLib.errors import RadiographReadError
from XraySegInferLib.reader import SpacingWarning, read_radiograph

pydicom = pytest.importorskip("pydicom")
TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
CR_FILE = TEST_FILES / "dicomdirtests" / "77654033" / "CR1" / "6154"  # pydicom's own CR, MONOCHROME1


def write_dicom(path: Path, array: np.ndarray, photometric: str = "MONOCHROME2", modality: str = "DX",
                slope: float | None = None, intercept: float | None = None, imager_spacing=None, pixel_spacing=None,
                window=None, voi_lut: np.ndarray | None = None, pixels: bool = True) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    if pixels:
        ds.Rows, ds.Columns = array.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = np.ascontiguousarray(array.astype(np.uint16)).tobytes()
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept or 0, "US"
    if imager_spacing:
        ds.ImagerPixelSpacing = list(imager_spacing)
    if pixel_spacing:
        ds.PixelSpacing = list(pixel_spacing)
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.add_new(0x00283006, "US", [int(v) for v in voi_lut])  # LUTData as US (16-bit entries)
        ds.VOILUTSequence = Sequence([item])
    ds.save_as(str(path), enforce_file_format=True)
    return path


def ramp(rows: int = 32, cols: int = 40) -> np.ndarray:
    rng = np.random.default_rng(1)
    return (np.add.outer(np.arange(rows) * 30, np.arange(cols) * 7) + rng.integers(0, 20, (rows, cols))).astype(np.uint16)


def test_monochrome1_inverts(tmp_path):
    data = ramp()
    mono1 = read_radiograph(write_dicom(tmp_path / "m1.dcm", data, "MONOCHROME1", imager_spacing=(0.2, 0.3)))
    mono2 = read_radiograph(write_dicom(tmp_path / "m2.dcm", data, "MONOCHROME2", imager_spacing=(0.2, 0.3)))
    assert mono1.photometric == "MONOCHROME1" and mono2.photometric == "MONOCHROME2"
    n1, n2 = mono1.normalized(), mono2.normalized()
    assert n1.min() == 0 and n1.max() == 1
    np.testing.assert_allclose(n1, 1 - n2, atol=1e-5)
    # MONOCHROME1: high stored values are dark (less dense), so bright = low stored value after normalising.
    assert n1[0, 0] > n1[-1, -1]


def test_rescale_and_spacing(tmp_path):
    data = ramp()
    image = read_radiograph(write_dicom(tmp_path / "r.dcm", data, slope=2.0, intercept=-100.0,
                                        imager_spacing=(0.15, 0.175), pixel_spacing=(0.14, 0.16)))
    np.testing.assert_allclose(image.pixels, data * 2.0 - 100.0)
    assert image.spacing_mm == pytest.approx((0.15, 0.175)) and image.spacing_source == "ImagerPixelSpacing"
    only_pixel = read_radiograph(write_dicom(tmp_path / "p.dcm", data, pixel_spacing=(0.14, 0.16)))
    assert only_pixel.spacing_mm == pytest.approx((0.14, 0.16)) and only_pixel.spacing_source == "PixelSpacing"


def test_missing_spacing_warns(tmp_path):
    with pytest.warns(SpacingWarning, match="no ImagerPixelSpacing"):
        image = read_radiograph(write_dicom(tmp_path / "n.dcm", ramp()))
    assert image.spacing_mm is None and image.spacing_source == "absent"


def test_voi_lut_and_window(tmp_path):
    data = ramp()
    lut = (np.arange(2048) ** 2 // 64).astype(np.uint16)  # a non-linear vendor LUT
    image = read_radiograph(write_dicom(tmp_path / "v.dcm", data, voi_lut=lut, imager_spacing=(0.2, 0.2)))
    np.testing.assert_array_equal(image.pixels, lut[np.clip(data, 0, 2047)])
    windowed = read_radiograph(write_dicom(tmp_path / "w.dcm", data, window=(800, 1200), imager_spacing=(0.2, 0.2)))
    assert windowed.window_center_width == (800.0, 1200.0)
    with_window = windowed.normalized(use_file_window=True)
    expected = np.clip((data - 200.0) / 1200.0, 0, 1)
    np.testing.assert_allclose(with_window, expected, atol=1e-6)


def test_pydicom_cr_monochrome1_file():
    if not CR_FILE.is_file():
        pytest.skip("pydicom's CR test file is not installed")
    image = read_radiograph(CR_FILE)
    assert image.photometric == "MONOCHROME1" and image.metadata["modality"] == "CR"
    assert image.spacing_mm == pytest.approx((0.1, 0.1)) and image.spacing_source == "ImagerPixelSpacing"
    ds = pydicom.dcmread(str(CR_FILE))
    np.testing.assert_allclose(image.pixels, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
                               rtol=1e-6)
    normalized = image.normalized()
    assert np.corrcoef(normalized.ravel(), image.pixels.ravel())[0, 1] < -0.99  # inverted


def test_dicom_without_pixel_data_is_a_clear_error(tmp_path):
    no_pixels = write_dicom(tmp_path / "sr.dcm", ramp(), modality="SR", pixels=False)
    with pytest.raises(RadiographReadError, match="no pixel data"):
        read_radiograph(no_pixels)
    plan = TEST_FILES / "rtplan.dcm"
    if plan.is_file():
        with pytest.raises(RadiographReadError, match="no pixel data.*RTPLAN"):
            read_radiograph(plan)


def test_bad_inputs(tmp_path):
    with pytest.raises(RadiographReadError, match="not found"):
        read_radiograph(tmp_path / "missing.dcm")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(RadiographReadError, match="not a readable image"):
        read_radiograph(tmp_path / "junk.png")


def test_png_8_and_16_bit(tmp_path):
    from PIL import Image

    data = ramp()
    Image.fromarray((data // 8).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(data.astype(np.uint16)).save(tmp_path / "b.png")
    with pytest.warns(SpacingWarning):
        eight = read_radiograph(tmp_path / "a.png")
    with pytest.warns(SpacingWarning):
        sixteen = read_radiograph(tmp_path / "b.png")
    np.testing.assert_array_equal(eight.pixels, data // 8)
    np.testing.assert_array_equal(sixteen.pixels, data)
    assert eight.spacing_mm is None and eight.photometric == "MONOCHROME2"
    with pytest.warns(SpacingWarning):
        assert read_radiograph(tmp_path / "a.png", photometric="MONOCHROME1").photometric == "MONOCHROME1"


def test_nrrd_2d_and_single_slice_3d(tmp_path):
    import SimpleITK as sitk

    data = ramp().astype(np.float32)
    flat = sitk.GetImageFromArray(data)
    flat.SetSpacing((0.3, 0.2))  # (column, row)
    sitk.WriteImage(flat, str(tmp_path / "flat.nrrd"))
    image = read_radiograph(tmp_path / "flat.nrrd")
    np.testing.assert_array_equal(image.pixels, data)
    assert image.spacing_mm == pytest.approx((0.2, 0.3))
    volume = sitk.GetImageFromArray(data[None])
    volume.SetSpacing((0.3, 0.2, 1.0))
    sitk.WriteImage(volume, str(tmp_path / "slice.nii.gz"))
    single = read_radiograph(tmp_path / "slice.nii.gz")
    np.testing.assert_array_equal(single.pixels, data)
    assert single.spacing_mm == pytest.approx((0.2, 0.3))
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([data, data])), str(tmp_path / "two.nrrd"))
    with pytest.raises(RadiographReadError, match="2 slices"):
        read_radiograph(tmp_path / "two.nrrd")
