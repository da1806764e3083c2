"""The modules' widgets on their first clicks, run on slicer-core with a stand-in Qt (``fake_qt``: widgets from the
real .ui files, timers fired by hand) and everything else real: opening renders nothing, a change renders, the
rig's own markup as isocentre gives a message instead of a loop, the export runs in a background process with
Render off meanwhile, an empty folder field means no folder, and XraySeg Infer keeps its model after the scene
is closed and segments in a background process."""

from __future__ import annotations

import time
import types

import pytest

slicer = pytest.importorskip("slicer")

import fake_qt  # noqa: E402
from slicer_module_stubs import load_module  # noqa: E402
from test_infer_slicer import add_radiograph, phantom_drr, tiny_model  # noqa: E402,F401
from test_mrml_adapter import add_segmentation, add_volume, ct_ijk_to_ras, phantom_arrays  # noqa: E402


def open_module(name, app, monkeypatch, cache_path=None):
    """The module file with a fake Qt, and what its dialogs and status bar would have shown."""
    shown = {"errors": [], "status": []}
    monkeypatch.setattr(slicer.util, "loadUI", fake_qt.load_ui)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", fake_qt.child_widget_variables)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: shown["errors"].append(text))
    monkeypatch.setattr(slicer.util, "showStatusMessage", lambda text, *a: shown["status"].append(text))
    fake_app = types.SimpleNamespace(applicationLogic=lambda: app.app_logic, majorVersion=5, minorVersion=12,
                                     setOverrideCursor=lambda cursor: None, restoreOverrideCursor=lambda: None,
                                     processEvents=lambda: None, layoutManager=lambda: None,
                                     cachePath=str(cache_path) if cache_path else "", connect=lambda *a: None)
    monkeypatch.setattr(slicer, "app", fake_app, raising=False)
    return load_module(name, monkeypatch, {"qt": fake_qt.qt_module()}), shown


def fire_until(timer, done, timeout_s=300.0):
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        timer.fire()
        time.sleep(0.05)
    assert done(), "the background run did not finish"


@pytest.mark.slow
def test_sim_widget_first_clicks(app, monkeypatch, tmp_path):
    hu, masks = phantom_arrays()
    ct = add_volume(app.scene, hu, ct_ijk_to_ras(), "CT")
    bones = add_segmentation(app.scene, masks, ct_ijk_to_ras())
    module, shown = open_module("XraySegSim", app, monkeypatch)
    widget = module.XraySegSimWidget()
    widget.setup()
    p, ui, sim = widget._parameterNode, widget.ui, widget.logic.sim
    assert p.inputVolume is ct and sim.has_geometry(), shown  # the set-up is placed ...
    assert sim.node("drr") is None and not widget.previewTimer.active and not widget.fullTimer.active  # ... unrendered
    assert ui.renderButton.enabled and not ui.exportDatasetButton.enabled  # the empty folder field is no folder

    p.inputLabels, p.viewPreset, p.detectorSize = bones, "carm-ap", 64
    assert widget.fullTimer.active  # a change schedules the preview and the full render
    widget.previewTimer.fire()
    widget.fullTimer.fire()
    assert sim.node("drr") is not None and sim.last_result.line_integral.shape[1] == 64

    p.isocenterMode, p.isocenterMarkup = "Markup point", sim.node("source")  # the rig's own point: no loop
    assert any("part of the X-ray set-up" in text for text in shown["status"])
    p.isocenterMode = "CT centre"

    p.exportFolder, p.exportViewsPerCt, p.exportSize, p.exportPhysics = tmp_path, 3, 32, "none"
    p.exportViewPreset = "carm-ap"
    assert ui.exportDatasetButton.enabled
    ui.exportDatasetButton.click()
    assert widget._export is not None and not ui.renderButton.enabled and ui.cancelExportButton.enabled
    widget.fullTimer.stop()
    p.laoAngle = 12.0  # no preview while the export runs
    assert not widget.fullTimer.active
    fire_until(widget.exportTimer, lambda: widget._export is None)
    assert ui.exportStatusLabel.text.startswith("3 samples") and ui.openExportFolderButton.enabled
    assert ui.renderButton.enabled and shown["errors"] == []
    assert len(list((tmp_path / "Dataset501_XraySeg" / "imagesTr").iterdir())) == 3
    widget.cleanup()  # as Slicer does on exit: no observer outlives the widget


@pytest.mark.slow
def test_infer_widget_keeps_its_model_after_scene_close_and_segments_in_background(app, monkeypatch, tmp_path,
                                                                                    tiny_model):
    from XraySegInferLib.models import import_model

    import_model(tiny_model, tmp_path / "XraySegInfer")  # the cache of the module's logic (slicer.app.cachePath)
    image, truth, geometry = phantom_drr()
    add_radiograph(app.scene, image, geometry.detector_ijk_to_ras())
    module, shown = open_module("XraySegInfer", app, monkeypatch, cache_path=tmp_path)
    widget = module.XraySegInferWidget()
    widget.setup()
    ui = widget.ui
    assert widget._parameterNode.modelId and ui.runButton.enabled
    assert not ui.batchRunButton.enabled  # empty folder fields are no folders

    widget.onSceneStartClose(None, None)
    app.scene.Clear(0)
    node = add_radiograph(app.scene, image, geometry.detector_ijk_to_ras())
    widget.onSceneEndClose(None, None)
    assert widget._parameterNode.inputVolume is node and widget._parameterNode.modelId and ui.runButton.enabled

    ui.runButton.click()
    assert widget._segmentation is not None and not ui.runButton.enabled and ui.cancelButton.enabled
    fire_until(widget.segmentTimer, lambda: widget._segmentation is None)
    output = widget._parameterNode.outputSegmentation
    classes = widget.logic.model(widget._parameterNode.modelId).class_names  # the model shown first (bundled)
    assert output is not None and output.GetSegmentation().GetNumberOfSegments() == len(classes)
    assert "bones segmented" in ui.statusLabel.text and ui.runButton.enabled and shown["errors"] == []
    assert truth.shape[1:] == image.shape  # the phantom's truth is on the radiograph's own pixels
    widget.cleanup()  # as Slicer does on exit: no observer outlives the widget
