"""What the Slicer modules do on the first clicks, checked on slicer-core: the training-set export in a background
process (progress, cancel, a killed worker), the cached segment list of a label map, the rig's own markup refused
as isocentre, the start-up version check, and empty path fields meaning "no folder"."""

from __future__ import annotations

import os
import pathlib
import signal
import time

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402

from slicer_module_stubs import load_module  # noqa: E402
from test_mrml_adapter import add_segmentation, add_volume, carm, ct_ijk_to_ras, node_ids, phantom_arrays  # noqa: E402
from XraySegSimLib import InputError  # noqa: E402
from XraySegSimLib.export_process import ExportProcess  # noqa: E402
from XraySegSimLib.mrml_adapter import SegmentNameCache, XraySimScene, isocenter_ras, prepare_scene_export  # noqa: E402
from XraySegSimLib.slicer_version import MINIMUM_SLICER, slicer_version_problem  # noqa: E402


@pytest.fixture()
def inputs(app):
    hu, masks = phantom_arrays()
    return add_volume(app.scene, hu, ct_ijk_to_ras(), "CT"), add_segmentation(app.scene, masks, ct_ijk_to_ras())


def _wait_for_progress(run: ExportProcess, at_least: int = 1, timeout_s: float = 300.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = run.poll()
        if status.finished or status.done >= at_least:
            return status
        time.sleep(0.05)
    raise AssertionError("the export worker reported no progress")


def _partial_files(root: pathlib.Path) -> list:
    return list(root.rglob("*.part"))


@pytest.mark.slow
def test_background_export_cancel_and_killed_worker_leave_nothing_half_written(app, inputs, tmp_path):
    ct, segmentation = inputs
    options = dict(view="carm-ap", views_per_ct=1000, size=128, physics="none", seed=3)
    before = node_ids(app.scene)
    job = prepare_scene_export(app.scene, ct, segmentation, tmp_path / "cancel", **options)
    run = ExportProcess.start(job)
    first = _wait_for_progress(run)
    assert first.state == "running", first
    run.request_cancel()  # SIGTERM, as the Cancel button: returns at once, stops after the sample in flight
    assert run.poll().message.startswith("cancelling") or run.poll().finished
    status = run.wait(timeout=120)
    assert status.state == "cancelled" and 1 <= status.done < 1000, status
    assert "Resume" in status.message and node_ids(app.scene) == before
    images = sorted((job.root / "imagesTr").iterdir())
    assert len(images) == status.done and not _partial_files(job.root)
    for image in images:  # every written image has its sidecar: no half-written sample
        assert (job.root / "sidecars" / (image.name[: -len("_0000.nrrd")] + ".json")).is_file()

    killed = prepare_scene_export(app.scene, ct, segmentation, tmp_path / "killed", **options)
    run = ExportProcess.start(killed)
    _wait_for_progress(run)
    os.killpg(run.pid, signal.SIGKILL)  # as the system's out-of-memory killer would
    status = run.wait(timeout=120)
    assert status.state == "failed" and "killed (SIGKILL)" in status.message and "memory" in status.message
    assert not _partial_files(killed.root) and node_ids(app.scene) == before


@pytest.mark.slow
def test_a_cancelled_export_killed_after_its_grace_time_says_so(app, inputs, tmp_path):
    """grace_s = 0: the first poll after Cancel kills the worker; the message says it was our kill (not the
    system's out-of-memory killer) and the finished samples are kept, none half-written."""
    ct, segmentation = inputs
    job = prepare_scene_export(app.scene, ct, segmentation, tmp_path / "grace", view="carm-ap", views_per_ct=1000,
                               size=128, physics="none", seed=3)
    run = ExportProcess.start(job, grace_s=0.0)
    _wait_for_progress(run)
    run.request_cancel()
    status = run.wait(timeout=120)
    assert status.state == "cancelled", status
    assert status.message.startswith("cancelled; the export worker had not stopped 0 s after Cancel and was killed "
                                     f"after {status.done}/1000 samples")
    assert "memory" not in status.message and "tick Resume" in status.message and not _partial_files(job.root)


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix" or not pathlib.Path("/proc").is_dir(), reason="process groups, /proc")
def test_background_export_dies_with_a_crashed_slicer(app, inputs, tmp_path):
    """A parent (standing in for a Slicer that crashes) starts the panel's export worker and exits without
    cancelling once a sample is written: no process of the worker's group is left a few seconds later."""
    import json

    from test_background import group_left_after, run_and_abandon

    ct, segmentation = inputs
    job = prepare_scene_export(app.scene, ct, segmentation, tmp_path / "orphan", view="carm-ap", views_per_ct=1000,
                               size=128, physics="none", seed=3)
    job_json = tmp_path / "job.json"
    job_json.write_text(json.dumps(job.to_dict()))
    worker = run_and_abandon(
        "import json\n"
        "from XraySegSimLib.export_process import ExportProcess\n"
        "from XraySegSimLib.scene_export import SceneExportJob\n"
        f"job = SceneExportJob.from_dict(json.loads(Path({str(job_json)!r}).read_text()))\n"
        "run = ExportProcess.start(job)", "list((Path(job.root) / 'sidecars').glob('*.json'))")
    assert group_left_after(worker) == []
    assert 1 <= len(list((job.root / "sidecars").glob("*.json"))) < 1000  # it stopped; what it finished stays


def test_label_map_segment_names_are_scanned_again_only_when_it_changes(app, inputs):
    ct, _ = inputs
    hu, masks = phantom_arrays()
    values = (masks[0] + 2 * masks[1]).astype(np.uint8)  # 1, 2 and 3 where the two bones overlap
    labelmap = add_volume(app.scene, values, ct_ijk_to_ras(), "Labels", "vtkMRMLLabelMapVolumeNode",
                          vtk.VTK_UNSIGNED_CHAR)
    cache = SegmentNameCache()
    first = cache.names(labelmap)
    assert len(first) == 3 and cache.names(labelmap) is first  # the same scan, not a new one
    array = slicer.util.arrayFromVolume(labelmap)
    array[array == 3] = 0
    slicer.util.arrayFromVolumeModified(labelmap)
    assert cache.names(labelmap) is not first and cache.names(labelmap) == first[:2]
    assert cache.names(None) == []


def test_the_rigs_own_markup_is_refused_as_isocentre(app, inputs):
    ct, _ = inputs
    sim = XraySimScene(app.scene)
    sim.set_geometry(carm(ct))
    with pytest.raises(InputError, match="part of the X-ray set-up"):
        isocenter_ras("Markup point", ct, sim.node("source"))
    own = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Aim")
    own.AddControlPoint(vtk.vtkVector3d(1.0, 2.0, 3.0), "aim")
    np.testing.assert_allclose(isocenter_ras("Markup point", ct, own), (1.0, 2.0, 3.0))


def test_start_up_version_check():
    assert MINIMUM_SLICER == (5, 10)
    assert slicer_version_problem(5, 12, True) is None and slicer_version_problem(5, 13, True) is None
    assert "5.10 or newer" in slicer_version_problem(5, 8, False)
    assert "SetTerminology" in slicer_version_problem(5, 10, False)
    assert hasattr(slicer.vtkSegment, "SetTerminology")  # this slicer-core passes


@pytest.mark.parametrize("module_name", ["XraySegSim", "XraySegInfer"])
def test_empty_path_fields_mean_no_folder(module_name, monkeypatch):
    module = load_module(module_name, monkeypatch)
    assert module.chosenFolder(pathlib.Path()) is None and module.chosenFolder("") is None
    assert module.chosenFolder(pathlib.Path("/data/out")) == pathlib.Path("/data/out")


def test_sim_logic_refuses_an_export_without_a_folder(app, inputs, monkeypatch):
    module = load_module("XraySegSim", monkeypatch)
    logic = module.XraySegSimLogic()
    p = logic.getParameterNode()
    p.inputVolume, p.inputLabels = inputs
    with pytest.raises(InputError, match="output folder"):
        logic.startExport(p)  # the empty folder field is Path("."): never Slicer's working directory
