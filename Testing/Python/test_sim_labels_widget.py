"""XraySeg Sim's "Label bones in CT" / "Transfer labels from atlas" buttons and the export panel's sim-to-real
options, on slicer-core with the stand-in Qt of ``fake_qt`` (widgets from the real .ui, timers fired by hand):
the button without a 3D model is off and says why; with one, the background run's segmentation becomes the
input labels; Cancel adds nothing; the virtual patients and randomisation level reach the background export."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from test_label_jobs import tiny_ct_model  # noqa: E402
from test_module_widgets import fire_until, open_module  # noqa: E402,F401
from test_mrml_adapter import add_segmentation, add_volume, ct_ijk_to_ras, node_ids, phantom_arrays  # noqa: E402
from XraySegSimLib import InputError  # noqa: E402
from XraySegSimLib.mrml_adapter import prepare_scene_export  # noqa: E402
from XraySegSimLib.scene_export import SceneExportJob  # noqa: E402


def open_sim(app, monkeypatch, model_dir):
    monkeypatch.setenv("XRAYSEG_CT_MODEL", str(model_dir))
    module, shown = open_module("XraySegSim", app, monkeypatch)
    widget = module.XraySegSimWidget()
    widget.setup()
    return widget, shown


def test_label_bones_is_off_without_a_model_and_cancel_adds_nothing(app, monkeypatch, tmp_path):
    hu, masks = phantom_arrays()
    add_volume(app.scene, hu, ct_ijk_to_ras(), "CT")
    widget, shown = open_sim(app, monkeypatch, tmp_path / "missing")
    ui = widget.ui
    assert not ui.labelBonesButton.enabled and "Resources/Models/femur" in ui.labelBonesButton.toolTip
    assert ui.transferLabelsButton.enabled and not ui.cancelLabelsButton.enabled
    p = widget._parameterNode
    p.atlasVolume = add_volume(app.scene, hu, ct_ijk_to_ras(), "Atlas CT")
    p.atlasLabels = add_segmentation(app.scene, masks, ct_ijk_to_ras())
    before = node_ids(app.scene)
    ui.transferLabelsButton.click()
    job = widget._labelJob
    assert job is not None and ui.cancelLabelsButton.enabled and not ui.transferLabelsButton.enabled
    ui.cancelLabelsButton.click()
    assert widget._labelJob is None and ui.labelsStatusLabel.text.startswith("Cancelled")
    assert node_ids(app.scene) == before and not job.work.exists() and p.inputLabels is None
    assert ui.transferLabelsButton.enabled and shown["errors"] == []
    ui.transferLabelsButton.click()  # closing the module (Slicer's exit) with a run going stops it
    running = widget._labelJob
    widget.cleanup()
    assert running.poll().state == "cancelled" and not running.work.exists() and node_ids(app.scene) == before


@pytest.mark.slow
def test_label_bones_sets_the_input_labels(app, monkeypatch, tmp_path):
    hu, _ = phantom_arrays()
    ct = add_volume(app.scene, hu, ct_ijk_to_ras(), "CT")
    widget, shown = open_sim(app, monkeypatch, tiny_ct_model(tmp_path / "model"))
    ui, p = widget.ui, widget._parameterNode
    assert ui.labelBonesButton.enabled
    ui.labelBonesButton.click()
    assert widget._labelJob is not None and not ui.labelBonesButton.enabled
    fire_until(widget.labelJobTimer, lambda: widget._labelJob is None)
    assert shown["errors"] == [], shown
    labels = p.inputLabels
    assert labels is not None and labels.GetName() == "CT bones", ui.labelsStatusLabel.text
    assert labels.GetSegmentation().GetNthSegment(0).GetName() == "femur_left"
    assert "1 segments, now the bone labels" in ui.labelsStatusLabel.text and ui.labelBonesButton.enabled
    assert widget.logic.segmentNames(labels) == ["femur_left"] and p.inputVolume is ct
    widget.cleanup()  # as Slicer does on exit: no observer outlives the widget


def test_export_panel_options_reach_the_background_job(app, monkeypatch, tmp_path):
    """The parameter node's virtual patients and randomisation level are in the job the worker process reads
    (JSON round trip); a bad level is refused with nothing written."""
    hu, masks = phantom_arrays()
    ct = add_volume(app.scene, hu, ct_ijk_to_ras(), "CT")
    bones = add_segmentation(app.scene, masks, ct_ijk_to_ras())
    widget, _ = open_sim(app, monkeypatch, tmp_path / "missing")
    p = widget._parameterNode
    p.inputLabels, p.exportFolder = bones, tmp_path / "out"
    p.exportVirtualPatients, p.exportDomainRandomisation = 3, "strong"
    options = widget.logic._exportOptions(p)
    assert (options["virtual_patients"], options["domain_randomisation"]) == (3, "strong")
    job = prepare_scene_export(app.scene, ct, bones, options.pop("out"), **options)
    again = SceneExportJob.from_dict(job.to_dict())
    assert (again.config.virtual_patients, again.config.domain_randomisation) == (3, "strong")
    assert np.isclose(again.config.test_fraction, p.exportTestFraction)
    with pytest.raises(InputError, match="domain-randomisation"):
        prepare_scene_export(app.scene, ct, bones, tmp_path / "bad", domain_randomisation="extreme")
    with pytest.raises(InputError, match="virtual patients"):
        prepare_scene_export(app.scene, ct, bones, tmp_path / "bad", virtual_patients=-1)
    assert not (tmp_path / "bad").exists()
    widget.cleanup()


def test_export_panel_suppress_contrast_reaches_the_written_ct(app, monkeypatch, tmp_path):
    """A TotalSegmentator label map (default colours): its bones are the classes, its heart seeds the contrast
    suppression; the CT written for the worker has the enhanced heart at blood HU and the spine unchanged."""
    import vtk

    from test_contrast import HEART, SPINE, _chest
    from XraySegSimLib import read_volume

    volume, labels, parts = _chest()
    ct = add_volume(app.scene, volume.array.astype(np.int16), volume.ijk_to_ras, "Contrast CT")
    label_map = add_volume(app.scene, labels, volume.ijk_to_ras, "CT labels", "vtkMRMLLabelMapVolumeNode",
                           vtk.VTK_UNSIGNED_CHAR)
    widget, _ = open_sim(app, monkeypatch, tmp_path / "missing")
    p = widget._parameterNode
    p.inputLabels, p.exportFolder, p.exportSuppressContrast = label_map, tmp_path / "out", True
    options = widget.logic._exportOptions(p)
    assert options["suppress_contrast"] is True
    job = prepare_scene_export(app.scene, ct, label_map, options.pop("out"), **options)
    report = job.mapping.spec["slicer_scene"]["contrast_suppression"]
    assert job.mapping.names == ("vertebrae_T6",) and report["median_hu_before"] == 350.0
    written = read_volume(job.input_paths["ct"]).array
    assert (written[parts["heart"] & ~parts["spine"]] == 40).mean() > 0.9
    np.testing.assert_array_equal(written[parts["spine"]], 900)
    assert (labels == HEART).any() and (labels == SPINE).any()
    widget.cleanup()
