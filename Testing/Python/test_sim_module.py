"""The XraySeg Sim module file on slicer-core: its repeated choices match the library, its own self-test
(XraySegSimTest) passes with stand-ins for the Qt-only parts, the realistic-physics preview, and the batch export
from the scene (a dataset with the segments as classes, cancel and resume, bad input refused)."""

from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402

from XraySegSimLib import InputError  # noqa: E402
from XraySegSimLib.mrml_adapter import array_from_vtk_matrix  # noqa: E402
from test_mrml_adapter import SEGMENTS, inputs, node_ids, sim  # noqa: E402,F401 (inputs, sim: fixtures)


# ---- the module's own self-test (XraySegSimTest), with stand-ins for the Qt-only parts ----------------------------


def test_module_choices_match_the_library():
    """XraySegSim.py repeats the isocentre modes (to import light); they must equal the adapter's."""
    import ast
    from pathlib import Path
    from XraySegSimLib.mrml_adapter import ISOCENTER_MODES
    tree = ast.parse((Path(__file__).resolve().parents[2] / "XraySegSim" / "XraySegSim.py").read_text())
    (assigned,) = [n for n in tree.body if isinstance(n, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "ISOCENTER_MODES" for t in n.targets)]
    assert tuple(ast.literal_eval(assigned.value)) == ISOCENTER_MODES


def test_module_self_test_passes_on_a_headless_scene(app, monkeypatch):
    """Runs XraySegSimTest (the test Slicer runs inside the application: render, drag, isocentre on a segment
    and on a point, terminology) on slicer-core, with the Qt-only imports stubbed and the parameter node held by
    a wrapper that applies Slicer's parameterNodeWrapper rules on a real scripted module node."""
    import types

    from slicer_module_stubs import load_module
    view = app.slice_view("Red", size=(200, 150))
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(applicationLogic=lambda: app.app_logic), raising=False)
    modules = {name.lower(): types.SimpleNamespace(logic=lambda logic=logic: logic) for name, logic in app.logics.items()}
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(**modules), raising=False)  # used by slicer.util
    module = load_module("XraySegSim", monkeypatch)
    monkeypatch.setattr(app.scene, "Clear", lambda *args: None, raising=False)  # keep the views' nodes
    test = module.XraySegSimTest("runTest")
    test.test_render_synthetic_ct()
    assert view.node.GetSliceVisible()
    for node in [app.scene.GetNthNode(i) for i in range(app.scene.GetNumberOfNodes())]:
        if node.GetAttribute("XraySegSim.Role"):
            app.scene.RemoveNode(node)
    test.test_isocenter_on_segment_and_point()


# ---- realistic physics in the preview, and the batch export from the scene ------------------------------------


def test_module_physics_choices_match_library():
    """XraySegSim.py repeats the physics preset names (to import light); they must match physics.PRESETS."""
    import ast
    from pathlib import Path

    from XraySegSimLib import physics

    tree = ast.parse((Path(__file__).resolve().parents[2] / "XraySegSim" / "XraySegSim.py").read_text())
    assigned = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}
    assert tuple(ast.literal_eval(assigned["PHYSICS_PRESETS"])) == tuple(physics.PRESETS)


def test_physics_preview_shows_a_radiograph_in_0_1_on_the_same_detector(inputs, sim):
    from XraySegSimLib.mrml_adapter import QUANTITY_ATTRIBUTE, physics_preset_for

    ct, segmentation = inputs
    plain = sim.render(ct, segmentation)
    node = sim.node("drr")
    matrix_plain = _ijk_to_ras(node)
    assert physics_preset_for("carm-ap", "auto") == "pelvis-ap" and physics_preset_for("chest-pa", "none") is None
    with pytest.raises(InputError, match="unknown physics preset"):
        physics_preset_for("chest-pa", "knee-ap")
    realistic = sim.render(ct, segmentation, physics="pelvis-ap", seed=3)
    assert sim.node("drr") is node  # the same node, updated
    from XraySegSimLib.mrml_adapter import _image_array

    image = np.array(_image_array(node.GetImageData()))[0]
    assert image.dtype == np.float32 and image.shape == plain.line_integral.shape
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.5
    np.testing.assert_array_equal(image, sim.last_radiograph)
    body = plain.line_integral > 1e-3
    assert np.corrcoef(image[body], plain.line_integral[body])[0, 1] > 0.8  # dense is bright, as the DRR
    np.testing.assert_allclose(_ijk_to_ras(node), matrix_plain, atol=1e-9)  # geometry unchanged
    np.testing.assert_allclose(_ijk_to_ras(node), realistic.geometry.detector_ijk_to_ras(), atol=1e-9)
    assert node.GetDisplayNode().GetWindowLevelMin() == 0.0 and node.GetDisplayNode().GetWindowLevelMax() == 1.0
    assert node.GetAttribute(QUANTITY_ATTRIBUTE).startswith("radiograph")
    np.testing.assert_array_equal(realistic.masks(), plain.masks())  # labels do not depend on the physics
    # Off again: the line integral, from the projector without materials (the cache is keyed on the flag).
    again = sim.render(ct, segmentation)
    assert again.material_g_cm2 is None and realistic.material_g_cm2 is not None
    np.testing.assert_allclose(np.array(_image_array(node.GetImageData()))[0], plain.line_integral, rtol=1e-6)
    assert node.GetAttribute(QUANTITY_ATTRIBUTE) == "line integral"


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return array_from_vtk_matrix(matrix)


def test_export_from_scene_writes_a_dataset_with_the_segments_as_classes(app, inputs, tmp_path):
    from XraySegSimLib.mrml_adapter import export_training_set

    ct, segmentation = inputs
    before = node_ids(app.scene)
    calls = []
    report = export_training_set(app.scene, ct, segmentation, tmp_path, view="carm-ap", views_per_ct=2, size=48,
                                 physics="auto", seed=1, progress=lambda d, n, m: calls.append((d, n)))
    assert node_ids(app.scene) == before  # no node left behind by the conversion
    assert report.n_ok == 2 and not report.cancelled and not report.failed_cts
    dataset = json.loads((report.root / "dataset.json").read_text())
    assert [k for k in dataset["labels"] if k != "background"] == ["bone_a", "bone_b"]
    assert dataset["numTraining"] == 2 and dataset["xrayseg"]["view"] == "carm-ap"
    classes = json.loads((report.root / "classes.json").read_text())["classes"]
    assert [c["name"] for c in classes] == ["bone_a", "bone_b"]
    assert [c["label_names"] for c in classes] == [["bone_a"], ["bone_b"]]
    np.testing.assert_allclose(classes[0]["color_rgb"], SEGMENTS[0][1], atol=1e-6)
    counts = [d for d, _ in calls]
    assert counts == sorted(counts) and counts[-1] == 2 and all(n == 2 for _, n in calls)
    for view in range(2):
        sidecar = json.loads((report.root / "sidecars" / f"CT_v{view:04d}.json").read_text())
        assert sidecar["physics"]["preset"] == "pelvis-ap" and max(sidecar["size"]) == 48
        assert sidecar["projected_pixels"][0] > 0 and sidecar["projected_pixels"][1] > 0  # both bones seen
    assert not list((report.root / ".work" / "scene_inputs").glob("*.nrrd"))  # complete: copies removed


def test_export_from_scene_cancel_leaves_a_resumable_dataset(app, inputs, tmp_path, monkeypatch):
    import csv
    import time

    from XraySegSimLib.mrml_adapter import export_training_set
    from XraySegSimLib.projector import DrrProjector

    ct, segmentation = inputs
    render = DrrProjector.render

    def slow_render(self, geometry):  # 48 px samples take ~5 ms: slow them so the cancel lands mid-export
        time.sleep(0.03)  # (workers=1 renders in a thread of this process, so the patch applies)
        return render(self, geometry)

    monkeypatch.setattr(DrrProjector, "render", slow_render)
    calls = []
    options = dict(view="carm-ap", views_per_ct=40, size=48, physics="none", seed=2)
    report = export_training_set(app.scene, ct, segmentation, tmp_path, progress=lambda d, n, m: calls.append(d),
                                 cancel=lambda: bool(calls) and calls[-1] >= 1, **options)
    assert report.cancelled and 1 <= report.n_ok < 40
    rows = list(csv.DictReader((report.root / "manifest.csv").open()))
    assert len(rows) == 40 and {r["status"] for r in rows} <= {"ok", "cancelled", "incomplete"}
    assert sum(r["status"] == "ok" for r in rows) == report.n_ok
    images = sorted((report.root / "imagesTr").iterdir())
    assert len(images) == report.n_ok and not list(report.root.rglob("*.part"))
    for image in images:  # no half-written sample: every image has its sidecar
        assert (report.root / "sidecars" / (image.name[: -len("_0000.nrrd")] + ".json")).is_file()
    with pytest.raises(InputError, match="Resume"):  # an existing export is not overwritten silently
        export_training_set(app.scene, ct, segmentation, tmp_path, **options)
    resumed = export_training_set(app.scene, ct, segmentation, tmp_path, resume=True, **options)
    assert resumed.n_ok == 40 and sum(s.status == "skipped" for s in resumed.samples) == report.n_ok
    assert len(list((report.root / "imagesTr").iterdir())) == 40


def test_export_from_scene_refuses_bad_input_and_writes_nothing(app, inputs, tmp_path):
    from XraySegSimLib.mrml_adapter import export_training_set

    ct, segmentation = inputs
    cases = [(None, segmentation, tmp_path / "a", "choose a CT"),
             (ct, segmentation, "", "output folder"),
             (ct, None, tmp_path / "b", "labels"),
             (ct, segmentation, tmp_path / "c", "unknown physics")]
    for ct_node, labels_node, out, message in cases:
        with pytest.raises(InputError, match=message):
            export_training_set(app.scene, ct_node, labels_node, out, view="carm-ap", views_per_ct=1, size=32,
                                physics="knee" if "physics" in message else "none")
    empty = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Empty")
    with pytest.raises(InputError, match="no segments"):
        export_training_set(app.scene, ct, empty, tmp_path / "d", view="carm-ap", views_per_ct=1, size=32)
    assert not any(tmp_path.iterdir())
