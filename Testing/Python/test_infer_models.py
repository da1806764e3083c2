"""XraySegInfer's models and module: the catalog, the bundled model, imported packages and nnU-Net results folders,
the cache; device fallback, dependencies asked for once; the module file imports nothing heavy, and its own
self-test passes; the bundled chest model, when present, on a sample CT's DRR through the scene."""

from __future__ import annotations

import ast
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
torch = pytest.importorskip("torch")

from XraySegInferLib.errors import ModelPackageError  # noqa: E402
from XraySegInferLib.synthetic import CLASS_NAMES  # noqa: E402
from test_infer_slicer import (  # noqa: E402,F401 (tiny_model: fixtures)
    BUNDLED, MODULE_FILE, REPO, add_radiograph, dice, segment_arrays, tiny_model)


# ---- models: catalog, bundled, import, cache ----------------------------------------------------------------


def test_catalog_bundled_lookup_import_zip_and_clear_cache(tmp_path, tiny_model, monkeypatch):
    from XraySegInferLib import models

    catalog = models.read_catalog()
    assert catalog and all({"id", "version", "sha256", "classes", "url"} <= set(c) for c in catalog)
    # Bundled: the first package under a Models folder (here $XRAYSEG_MODELS), matched to the catalog by name.
    bundled_dir = tmp_path / "Models"
    shutil.copytree(tiny_model, bundled_dir / "phantom")
    monkeypatch.setenv("XRAYSEG_MODELS", str(bundled_dir))
    entry = models.catalog_entry_for_package(bundled_dir / "phantom", "phantom-bones")
    (found,) = models.bundled_models([entry])
    assert found.kind == "bundled" and found.id == "phantom-bones" and found.class_names == list(CLASS_NAMES)
    models.check_against_catalog(found)
    found.catalog = dict(entry, sha256="0" * 64)
    with pytest.raises(ModelPackageError, match="SHA-256"):
        models.check_against_catalog(found)
    # Search order: installed layout (<module>/Resources/Models) before the repository's Resources/Models.
    dirs = models.model_search_dirs()
    assert dirs[1] == REPO / "XraySegInfer" / "Resources" / "Models" and dirs[2] == REPO / "Resources" / "Models"
    # Import a zip of the package; it lands in the cache, checked; clearing removes it.
    archive = tmp_path / "phantom.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for file in tiny_model.iterdir():
            handle.write(file, f"phantom/{file.name}")
    cache = tmp_path / "cache"
    imported = models.import_model(archive, cache)
    assert imported.kind == "imported" and (imported.path / "model.safetensors").is_file()
    assert imported.path.parent == cache / "models"
    assert [(e.kind, e.path) for e in models.available_models(cache)] == [("bundled", bundled_dir / "phantom"),
                                                                           ("imported", imported.path)]
    models.load_entry(imported, "cpu")
    # A corrupt zip is refused, and leaves the cache as it was.
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(ModelPackageError, match="not a readable zip"):
        models.import_model(tmp_path / "broken.zip", cache)
    assert sorted(p.name for p in (cache / "models").iterdir()) == [imported.path.name]
    assert models.clear_cache(cache) == 1 and models.imported_models(cache) == []


def test_nnunet_results_folder_is_registered_in_place(tmp_path):
    from XraySegInferLib import models

    results = tmp_path / "Dataset901_Phantom" / "nnUNetTrainer__nnUNetPlans__2d"
    (results / "fold_0").mkdir(parents=True)
    (results / "plans.json").write_text("{}")
    (results / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "spine": [1, 3], "sternum": [2, 3]}}))
    entry = models.import_model(results, tmp_path / "cache")
    assert entry.kind == "nnunet" and entry.path == results.resolve() and entry.class_names == ["spine", "sternum"]
    assert models.clear_cache(tmp_path / "cache") == 1


# ---- device and dependencies ------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_device_falls_back_to_cpu_with_an_honest_note():
    from XraySegInferLib.dependencies import resolve_device

    device, note = resolve_device("CUDA")
    assert device == "cpu" and note.startswith("CUDA was chosen, but") and "CPU" in note
    device, note = resolve_device("Auto")
    assert device == "cpu" and note.startswith("No GPU")
    assert resolve_device("CPU") == ("cpu", "Running on the CPU (chosen).")


def test_missing_packages_are_asked_for_once_and_installed_with_pip():
    import importlib.metadata

    from XraySegInferLib.dependencies import Dependencies, DependencyError

    requirements = {"xrayseg_surely_missing_pkg": "xrayseg-surely-missing>=1"}
    questions, installs = [], []

    def pip_install(arguments):  # what slicer.util.pip_install gets, with the constraints it points to
        assert arguments[-2] == "-c"
        installs.append((arguments[:-2], Path(arguments[-1]).read_text().split()))

    declining = Dependencies(lambda text: questions.append(text) or False, pip_install, requirements)
    for _ in range(2):
        with pytest.raises(DependencyError, match="xrayseg-surely-missing"):
            declining.ensure()
    assert len(questions) == 1 and "xrayseg-surely-missing>=1" in questions[0] and installs == []
    accepting = Dependencies(lambda text: True, pip_install, requirements)
    with pytest.raises(DependencyError, match="did not install"):
        accepting.ensure()
    # torch, SimpleITK, numpy and requests are pinned to what is installed: pip cannot replace them.
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("torch", "SimpleITK", "numpy", "requests")]
    assert installs == [(["xrayseg-surely-missing>=1"], pins)]
    assert Dependencies(lambda t: 1 / 0, lambda r: 1 / 0).ensure() == []  # all present: no question
    with pytest.raises(ValueError, match="never install"):
        Dependencies(lambda t: True, pip_install, {"SimpleITK": "SimpleITK>=2.3"})


def test_module_imports_nothing_heavy_and_installs_nothing_at_import_time():
    tree = ast.parse(MODULE_FILE.read_text())
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
           for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert not top & {"torch", "monai", "numpy", "PyTorchUtils"}
    # The Lib imports at file scope are the Qt-free logic and the self-test mixin, which import nothing heavy
    # (test_slicer_startup.py imports them with torch, MONAI, numba... refused).
    lib = [n.module for n in tree.body
           if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("XraySegInferLib")]
    assert lib == ["XraySegInferLib.infer_logic", "XraySegInferLib.module_selftest"]
    selftest = ast.parse((MODULE_FILE.parent / "XraySegInferLib" / "module_selftest.py").read_text())
    assert {a.name.split(".")[0] for n in selftest.body if isinstance(n, ast.Import) for a in n.names} <= {"pathlib"}
    calls = [n for n in tree.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
    assert not calls, "module-level calls"
    from XraySegInferLib.dependencies import DEVICES

    assigned = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}
    assert tuple(ast.literal_eval(assigned["DEVICES"])) == DEVICES


# ---- the module's own self-test (XraySegInferTest) -------------------------------------------------------------


def test_module_self_test_passes_on_a_headless_scene(app, monkeypatch, tiny_model, tmp_path):
    """Runs XraySegInferTest (a DRR made in code, segmented through the module's Logic) on slicer-core with the
    Qt-only imports stubbed; the tiny model stands in for the one the self-test would train."""
    import types

    from slicer_module_stubs import load_module

    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(applicationLogic=lambda: app.app_logic), raising=False)
    monkeypatch.setenv("XRAYSEG_SELFTEST_MODEL", str(tiny_model))
    monkeypatch.setenv("XRAYSEG_INFER_CACHE", str(tmp_path / "cache"))
    module = load_module("XraySegInfer", monkeypatch)
    test = module.XraySegInferTest("runTest")
    test.test_segment_drr()
    logic = module.XraySegInferLogic()
    assert logic.cacheDir == tmp_path / "cache" and not (tmp_path / "cache").exists()  # the self-test used its own


# ---- the bundled chest model (when it is there) ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not (BUNDLED / "model.json").is_file(), reason="no bundled model in Resources/Models/chest yet")
def test_bundled_model_on_a_sample_ct_drr_through_the_scene(app, sample_chest_ct, artifacts_dir):
    """The bundled model, found as the module finds it, on a new oblique PA view of the sample chest CT (the
    physics chain of its training), through the scene: the segmentation node lies on the radiograph's grid with
    the card's names and colours, and its Dice against the exactly projected labels stays within 0.10 of the
    card's held-out mean (the rule of test_bundled_model.py)."""
    from XraySegInferLib.models import bundled_models, load_entry
    from XraySegInferLib.mrml_adapter import segment_radiograph
    from XraySegSimLib import DrrProjector, physics, read_volume, views
    from XraySegSimLib.export_inputs import load_mapping, names_table
    from XraySegSimLib.materials import MaterialModel

    entries = [e for e in bundled_models() if e.path.resolve() == BUNDLED.resolve()]
    assert entries, "the module does not find Resources/Models/chest"
    model = load_entry(entries[0], "cpu")
    ct, labels = read_volume(sample_chest_ct.ct_path), read_volume(sample_chest_ct.labels_path)
    classes = load_mapping(str(REPO / "tools" / "train-sample" / "classes.json")).classes_for(
        names_table("totalsegmentator"))
    assert classes.names == model.class_names
    projector = DrrProjector(ct, labels, classes, threads=2, materials=MaterialModel())
    isocenter = ct.centroid_ras(np.isin(labels.array, sorted(classes.values))) + np.array([-4.0, 0.0, 5.0])
    geometry = views.from_preset("chest-pa", isocenter, size=256, source_to_detector_mm=1750.0,
                                 source_to_isocenter_mm=1750.0 / 1.16, lao_deg=-3.0, cranial_deg=2.0)
    result = projector.render(geometry)
    image = physics.simulate_radiograph(result, "chest-pa", rng=777).image
    ijk_to_ras = geometry.detector_ijk_to_ras()
    node = add_radiograph(app.scene, image, ijk_to_ras)
    out = segment_radiograph(app.scene, node, model)
    masks, matrices = segment_arrays(out.segmentation)
    for matrix in matrices:
        np.testing.assert_allclose(matrix, ijk_to_ras, atol=1e-6)
    segments = out.segmentation.GetSegmentation()
    for index, cls in enumerate(model.card["classes"]):
        assert segments.GetNthSegment(index).GetName() == cls["name"]
        np.testing.assert_allclose(segments.GetNthSegment(index).GetColor(), cls["color"], atol=1e-6)
        assert cls["snomed"]["type"]["CodeValue"] in segments.GetNthSegment(index).GetTerminology()
    scores = [dice(m, t) for m, t in zip(masks, result.masks() > 0)]
    floor = model.card["metrics"]["held_out_views"]["mean_dice_over_classes"] - 0.10
    assert np.mean(scores) >= floor, dict(zip(model.class_names, np.round(scores, 3)))
    # The README's last picture of the round trip: the bundled model's segmentation in a Slicer slice view.
    from XraySegInferLib.mrml_adapter import show_in_slice_view

    node.GetDisplayNode().AutoWindowLevelOff()
    node.GetDisplayNode().SetWindowLevelMinMax(0.0, 1.0)
    view = app.slice_view("Red", size=(400, 400))
    show_in_slice_view(view.node, view.composite_node, node)
    path = artifacts_dir / "xrayseginfer_chest_bundled.png"
    rgb = view.capture(path).astype(int)  # the README picture (make screenshots)
    coloured = (rgb.max(-1) - rgb.min(-1)) > 30
    assert coloured.mean() > 0.1, "the overlay should cover the chest bones"
