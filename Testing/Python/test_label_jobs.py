"""The Sim module's long CT work in a background process (issue 14 item 6, issue 10 item 2), on slicer-core scenes:
the argv of "Label bones in CT" and "Transfer labels from atlas", the result loaded as a segmentation on the CT
grid (oblique, left-handed, under a transform), real tiny runs of ``xrayseg ct-segment`` and ``xrayseg
label-transfer`` in a child process, and cancel / a killed worker adding no node and leaving no file."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402

from conftest import write_image  # noqa: E402
from test_mrml_adapter import add_segmentation, add_volume, ct_ijk_to_ras, node_ids, phantom_arrays  # noqa: E402
from XraySegSimLib.background import parse_fraction  # noqa: E402
from XraySegSimLib.errors import InputError, XraySegError  # noqa: E402
from XraySegSimLib.label_jobs import (  # noqa: E402
    ClassEntry, ct_model_problem, load_labels_result, start_ct_labelling, start_label_transfer, structure_entry)
from XraySegSimLib.scene_inputs import labels_from_segmentation, segment_ids  # noqa: E402


def tiny_ct_model(folder, structure="femur_left", **card):
    """A 3D package with a tiny compact V-Net (random weights, seeded): what the child loads and runs; ``card``:
    more card fields (e.g. metal_suppression)."""
    import torch
    from XraySegInferLib.ct_networks import build_ct_network
    from XraySegInferLib.ct_package import save_ct_package

    torch.manual_seed(0)
    architecture = {"name": "vnet-compact", "base_channels": 4, "depth": 2}
    return save_ct_package(folder, build_ct_network(architecture, 2),
                           {"name": "tiny", "structure": structure, "architecture": architecture,
                            "spacing_mm": [5.0, 5.0, 5.0], "patch_size": [16, 16, 16], **card})


def left_handed_ijk_to_ras() -> np.ndarray:
    """The oblique CT grid with its i axis reversed (det < 0): NIfTI readers flip such a grid on reading."""
    matrix = ct_ijk_to_ras()
    matrix[:3, 3] += matrix[:3, 0] * (48 - 1)
    matrix[:3, 0] *= -1
    return matrix


def test_progress_lines_and_structure_terminology():
    assert parse_fraction(" 45% affine") == (0.45, "affine")
    assert parse_fraction("segmenting:  40%|####      | 4/10 [00:01<00:02]")[0] == pytest.approx(0.4)
    assert parse_fraction("labels:   /tmp/x/labels.nii.gz") is None
    left = structure_entry("femur_left")
    assert left.terminology.split("~")[2] == "SCT^71341001^Femur" and "SCT^7771000^Left" in left.terminology
    proximal = structure_entry("proximal femur (right)")
    assert proximal.terminology.split("~")[2:4] == ["SCT^71341001^Femur", "SCT^24028007^Right"]
    assert structure_entry("sphere").terminology is None


def test_ct_model_problem_says_why(tmp_path):
    assert "Resources/Models/femur" in ct_model_problem(None)
    assert "not a readable model card" in ct_model_problem(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"format": "xrayseg-model/1"}))
    assert "not a 3D CT model card" in ct_model_problem(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"format": "xrayseg-ct-model/1"}))
    assert ct_model_problem(tmp_path) is None


@pytest.mark.parametrize("handed", ["right", "left"])
def test_result_file_loads_as_segments_on_the_ct_grid(app, tmp_path, handed):
    """An asymmetric label file on the CT's (oblique; left-handed: flipped by NIfTI) grid: exported back onto the
    CT grid, each segment is exactly its value's voxels; names, colours, terminology from the classes; the CT's
    parent transform is kept; values without a class are dropped; a file on another grid adds no node."""
    hu, _ = phantom_arrays()
    matrix = ct_ijk_to_ras() if handed == "right" else left_handed_ijk_to_ras()
    ct = add_volume(app.scene, hu, matrix, "CT")
    shift = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    moved = vtk.vtkMatrix4x4()
    moved.SetElement(0, 3, 12.5)
    shift.SetMatrixTransformToParent(moved)
    ct.SetAndObserveTransformNodeID(shift.GetID())
    labels = np.zeros(hu.shape, np.uint8)
    labels[3:9, 5:20, 2:11] = 1  # off-centre along every axis: a flip or a transpose would move it
    labels[20:30, 30:38, 30:46] = 2
    labels[0, 0, 0:5] = 9  # no class: dropped
    write_image(labels, matrix, tmp_path / "labels.nii.gz")
    classes = [ClassEntry(1, "femur_left", (1.0, 0.0, 0.0), structure_entry("femur_left").terminology),
               ClassEntry(2, "pelvis", (0.0, 0.0, 1.0))]
    segmentation = load_labels_result(app.scene, tmp_path / "labels.nii.gz", ct, classes, "result")
    assert segmentation.GetTransformNodeID() == shift.GetID()
    segments = [segmentation.GetSegmentation().GetSegment(i) for i in segment_ids(segmentation)]
    assert [s.GetName() for s in segments] == ["femur_left", "pelvis"]
    assert segments[0].GetTerminology() == classes[0].terminology
    np.testing.assert_allclose(segments[1].GetColor(), (0.0, 0.0, 1.0))
    volume, _ = labels_from_segmentation(app.scene, segmentation, ct)
    expected = np.where(labels == 9, 0, labels)
    assert np.array_equal(volume.array, expected)
    other = ct_ijk_to_ras()
    other[:3, 3] += 7.0
    write_image(labels, other, tmp_path / "elsewhere.nii.gz")
    before = node_ids(app.scene)
    with pytest.raises(InputError, match="voxel for voxel"):
        load_labels_result(app.scene, tmp_path / "elsewhere.nii.gz", ct, classes, "wrong")
    assert node_ids(app.scene) == before


def test_cancel_and_killed_worker_add_no_node_and_leave_no_file(app, tmp_path):
    hu, _ = phantom_arrays()
    ct = add_volume(app.scene, hu, ct_ijk_to_ras(), "CT")
    model = tiny_ct_model(tmp_path / "model")
    before = node_ids(app.scene)
    job = start_ct_labelling(app.scene, ct, model)
    argv = job.run.stages[0]
    assert argv[1:4] == ["-m", "XraySegInferLib.child", "ct-segment"]
    assert argv[argv.index("--model") + 1] == str(model.resolve()) and argv[4].endswith("ct.nii.gz")
    assert job.poll().state == "running"
    status = job.cancel()
    assert status.state == "cancelled"
    assert not job.work.exists() and node_ids(app.scene) == before
    with pytest.raises(XraySegError, match="cancelled"):
        job.finish(app.scene)
    killed = start_ct_labelling(app.scene, ct, model)
    time.sleep(1.0)  # the child is importing torch
    os.killpg(killed.run._process.pid, signal.SIGKILL)
    status = killed.wait(60)
    assert status.state == "failed" and "killed (SIGKILL)" in status.message
    with pytest.raises(XraySegError, match="killed"):
        killed.finish(app.scene)
    assert not killed.work.exists() and node_ids(app.scene) == before
    assert list(tmp_path.glob(".*partial*")) == []
    with pytest.raises(InputError, match="not a readable model card"):
        start_ct_labelling(app.scene, ct, tmp_path / "no-model")
    assert node_ids(app.scene) == before


@pytest.mark.slow
def test_ct_labelling_real_run(app, tmp_path):
    """xrayseg ct-segment in a child process on the scene's CT (under a transform): one segment named by the
    card's structure, Femur (left) coded, on the CT's transform; it agrees voxel for voxel with the same model
    run in this process (which labels the whole phantom: its weights are untrained)."""
    from XraySegInferLib.ct_package import load_ct_package
    from XraySegInferLib.ct_segment import segment_ct

    hu, _ = phantom_arrays()
    ct = add_volume(app.scene, hu, ct_ijk_to_ras(), "CT")
    model = tiny_ct_model(tmp_path / "model")
    job = start_ct_labelling(app.scene, ct, model)
    status = job.wait(600)
    assert status.state == "succeeded", status.message
    segmentation = job.finish(app.scene)
    assert not job.work.exists()
    segment = segmentation.GetSegmentation().GetNthSegment(0)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1 and segment.GetName() == "femur_left"
    assert "SCT^71341001^Femur" in segment.GetTerminology()
    volume, _ = labels_from_segmentation(app.scene, segmentation, ct)
    write_image(hu, ct_ijk_to_ras(), tmp_path / "ct.nii.gz")
    reference = segment_ct(tmp_path / "ct.nii.gz", load_ct_package(model), tmp_path / "reference")
    import SimpleITK as sitk
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "reference" / "labels.nii.gz")))
    assert int((volume.array > 0).sum()) == reference["voxels"] > 0
    assert np.array_equal(volume.array > 0, expected > 0)


def test_ct_labelling_passes_on_the_runs_doubt_about_a_femur(app, tmp_path):
    """A proximal-femur model whose output volume no femur has (this untrained one labels the whole phantom):
    the job still loads the labels, and carries ct-segment's one-line warning for the panel to show, and what it
    did with the CT's metal."""
    hu, _ = phantom_arrays()
    hu = hu.copy()
    hu[10, 10, 10:13] = 3000  # an implant: three voxels the model's metal suppression reads as 150 HU
    ct = add_volume(app.scene, hu, ct_ijk_to_ras(), "CT")
    job = start_ct_labelling(app.scene, ct, tiny_ct_model(tmp_path / "model", structure="proximal_femur",
                                                          metal_suppression={"above_hu": 2000, "fill_hu": 150}))
    status = job.wait(600)
    assert status.state == "succeeded", status.message
    assert job.finish(app.scene) is not None
    assert job.warning is not None and job.warning.startswith("implausible femur volume")
    assert job.metal_note == "metal: 3 voxels above 2000 HU read as 150 HU"


@pytest.mark.slow
def test_label_transfer_real_run_from_a_scene_atlas(app, tmp_path):
    """xrayseg label-transfer in a child process: the atlas (CT + segmentation of two bones) moved by 10 mm is the
    target; the transferred segments have the atlas's names and a Dice >= 0.8 with the atlas's labels moved with
    it."""
    hu, masks = phantom_arrays()
    atlas_ct = add_volume(app.scene, hu, ct_ijk_to_ras(), "Atlas CT")
    atlas_labels = add_segmentation(app.scene, masks, ct_ijk_to_ras())
    target_matrix = ct_ijk_to_ras()
    target_matrix[:3, 3] += (10.0, -5.0, 7.5)
    target = add_volume(app.scene, hu, target_matrix, "Target CT")
    with pytest.raises(InputError, match="atlas CT is the CT to label"):
        start_label_transfer(app.scene, atlas_ct, atlas_ct, atlas_labels)
    job = start_label_transfer(app.scene, target, atlas_ct, atlas_labels, bspline_iterations=5)
    argv = job.run.stages[-1]
    assert argv[3] == "label-transfer" and argv[argv.index("--labels") + 1] == "1,2"
    status = job.wait(600)
    assert status.state == "succeeded", status.message
    segmentation = job.finish(app.scene)
    names = [segmentation.GetSegmentation().GetSegment(i).GetName() for i in segment_ids(segmentation)]
    atlas_names = [atlas_labels.GetSegmentation().GetSegment(i).GetName() for i in segment_ids(atlas_labels)]
    assert names == atlas_names
    volume, _ = labels_from_segmentation(app.scene, segmentation, target)
    atlas, _ = labels_from_segmentation(app.scene, atlas_labels, atlas_ct)
    # The target holds the atlas's voxels on a moved grid: its labels must be the atlas's, index for index.
    for value in (1, 2):
        got, want = volume.array == value, atlas.array == value
        dice = 2 * (got & want).sum() / (got.sum() + want.sum())
        assert dice >= 0.8, (value, dice)


def test_sample_atlas_is_fetched_first_where_it_is_not_cached(app, tmp_path):
    """No atlas in the scene: the chest-ct sample, fetched by a first stage into the cache the transfer reads."""
    hu, _ = phantom_arrays()
    ct = add_volume(app.scene, hu, ct_ijk_to_ras(), "CT")
    job = start_label_transfer(app.scene, ct, cache_dir=tmp_path / "cache")
    try:
        fetch, transfer = job.run.stages
        assert fetch[3:5] == ["fetch-sample", "chest-ct"]
        assert job.run.env["XRAYSEG_CACHE"] == str((tmp_path / "cache").resolve())
        atlas_ct = transfer[transfer.index("--atlas-ct") + 1]
        assert atlas_ct.startswith(str((tmp_path / "cache").resolve())) and atlas_ct.endswith("cxr.nii.gz")
        assert "--labels" not in transfer  # the atlas's bones, by its TotalSegmentator values
        femur = next(e for e in job.classes if e.value == 75)
        assert femur.name == "femur_left" and "SCT^71341001^Femur" in femur.terminology
    finally:
        assert job.cancel().state == "cancelled"
    assert not job.work.exists() and list(tmp_path.glob(".*partial*")) == []
    with pytest.raises(InputError, match="both the atlas CT and its labels"):
        start_label_transfer(app.scene, ct, atlas_ct=ct)
