"""XraySegInfer in a real MRML scene (slicer-core, headless): a radiograph volume node (oblique or not) in, a
segmentation node on its exact grid and a table node out; bad inputs, cancel, batch with resume, models (catalog,
import, cache), device fallback, dependencies asked once, the module's self-test, and an offscreen slice view
with the overlay (Testing/Artifacts/; `make screenshots` copies it into the README's pictures).

The model is a tiny U-Net trained here on phantom DRRs (XraySegInferLib.synthetic: three 'bones' that overlap in
projection) in ~5 s on one thread, cached in .cache/xrayseg/test-models/ (keyed by the training code), so later
runs skip the training. The bundled chest model, when present, gets its own slow test.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
torch = pytest.importorskip("torch")
import vtk  # noqa: E402

from XraySegInferLib.errors import ModelPackageError  # noqa: E402
from XraySegInferLib.inference import Predictor  # noqa: E402
from XraySegInferLib.synthetic import CLASS_NAMES, COLORS, phantom_ct, render_views  # noqa: E402
from XraySegSimLib import InputError  # noqa: E402
from XraySegSimLib.mrml_adapter import _image_data, array_from_vtk_matrix, vtk_matrix_from_array  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODULE_FILE = REPO / "XraySegInfer" / "XraySegInfer.py"
BUNDLED = REPO / "Resources" / "Models" / "chest"
ARCH = {"name": "UNet", "channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 0, "norm": "instance"}
TRAIN = dict(architecture=ARCH, patch_size=64, batch_size=8, steps=150, val_every=50, learning_rate=1e-2,
             augment={"probability": 0.3, "blur_probability": 0.1}, threads=1, seed=0)
# Mean Dice over the three phantom bones on a phantom CT the model never saw, from the segmentation NODE's
# labelmaps (seen: 0.77-0.84 on four unseen phantoms after 150 CPU steps).
DICE_FLOOR = 0.70
SNOMED = {"spine": "421060004", "clavicle_left": "51299004", "sternum": "56873002"}


# ---- fixtures -----------------------------------------------------------------------------------------------------


def _training_key() -> str:
    lib = REPO / "XraySegInfer" / "XraySegInferLib"
    digest = hashlib.sha256(json.dumps(TRAIN, sort_keys=True).encode())
    for name in ("training.py", "synthetic.py", "networks.py", "transforms.py", "package.py", "dataset.py"):
        digest.update((lib / name).read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny phantom-bone model package (trained once, then cached)."""
    from XraySegInferLib.package import load_package
    from XraySegInferLib.synthetic import make_dataset
    from XraySegInferLib.training import TrainConfig, train

    cached = REPO / ".cache" / "xrayseg" / "test-models" / _training_key() / "model"
    if cached.is_dir():
        try:
            load_package(cached)
            return cached
        except ModelPackageError:
            shutil.rmtree(cached.parent, ignore_errors=True)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("tiny")
        dataset = make_dataset(root / "data", n_cts=4, views_per_ct=4, size=64, test_cts=0, seed=0)
        result = train(dataset, root / "run", TrainConfig(**TRAIN), progress=False, log=lambda *a: None)
    finally:
        torch.set_num_threads(before)
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = cached.parent / ".model.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(result.package, staging)
    staging.rename(cached)
    return cached


@pytest.fixture(scope="session")
def predictor(tiny_model):
    return Predictor.from_package(tiny_model, "cpu")


def phantom_drr(size=64, angles=(12.0, -6.0), seed=1234):
    """A simulated radiograph of an unseen phantom: (image in [0, 1], true masks (3, H, W), geometry)."""
    ct, labels = phantom_ct(np.random.default_rng(seed))
    ((image, masks, spacing, geometry),) = render_views(ct, labels, [angles], size=size)
    return image, masks.astype(bool), geometry


def add_radiograph(scene, image, ijk_to_ras, name="Radiograph", class_name="vtkMRMLScalarVolumeNode",
                   vtk_type=vtk.VTK_FLOAT):
    node = scene.AddNewNodeByClass(class_name, name)
    array = image[None] if image.ndim == 2 else image
    node.SetAndObserveImageData(_image_data(array.astype(np.float32 if vtk_type == vtk.VTK_FLOAT else np.uint8),
                                            vtk_type))
    node.SetIJKToRASMatrix(vtk_matrix_from_array(ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    return node


def plain_placement(spacing_mm: float) -> np.ndarray:
    return np.diag([-spacing_mm, -spacing_mm, 1.0, 1.0])


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def segment_arrays(segmentation_node) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(masks (H, W) bool, ImageToWorld 4x4) of every segment, as stored in the node."""
    from vtk.util import numpy_support

    masks, matrices = [], []
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        image = segment.GetRepresentation("Binary labelmap")
        extent = image.GetExtent()
        dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
        array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
        assert extent[:4] == (0, dims[0] - 1, 0, dims[1] - 1)
        masks.append(array[0] == segment.GetLabelValue())
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        matrices.append(array_from_vtk_matrix(matrix))
    return masks, matrices


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


# ---- the segmentation node -----------------------------------------------------------------------------------


@pytest.mark.parametrize("placement", ["oblique detector", "plain image"])
def test_segmentation_lies_on_the_radiograph_grid_with_names_colours_terminology_and_dice(app, predictor, placement):
    from XraySegInferLib.mrml_adapter import SOURCE_ATTRIBUTE, segment_radiograph, table_rows

    image, truth, geometry = phantom_drr()
    ijk_to_ras = geometry.detector_ijk_to_ras() if placement == "oblique detector" else \
        plain_placement(geometry.spacing[0])
    assert placement == "plain image" or abs(ijk_to_ras[0, 0]) < 0.999 * geometry.spacing[0]  # really oblique
    scene = app.scene
    node = add_radiograph(scene, image, ijk_to_ras)
    sh = scene.GetSubjectHierarchyNode()
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Phantom patient"), "Phantom study")
    sh.CreateItem(study, node)
    result = segment_radiograph(scene, node, predictor)
    seg = result.segmentation
    masks, matrices = segment_arrays(seg)
    for matrix in matrices:
        np.testing.assert_allclose(matrix, ijk_to_ras, atol=1e-6)
    reference = seg.GetSegmentation().GetConversionParameter("Reference image geometry")
    np.testing.assert_allclose(np.array(reference.split(";")[:16], float).reshape(4, 4), ijk_to_ras, atol=1e-6)
    segments = [seg.GetSegmentation().GetNthSegment(i) for i in range(seg.GetSegmentation().GetNumberOfSegments())]
    assert [s.GetName() for s in segments] == list(CLASS_NAMES)
    for segment, color in zip(segments, COLORS):
        np.testing.assert_allclose(segment.GetColor(), color, atol=1e-6)
    for segment in segments:
        tag = segment.GetTerminology()
        assert f"SCT^{SNOMED[segment.GetName()]}^" in tag and tag.startswith("Segmentation category and type")
    assert "SCT^7771000^Left" in segments[1].GetTerminology()
    scores = [dice(m, t) for m, t in zip(masks, truth)]
    assert np.mean(scores) > DICE_FLOOR, f"Dice per class {scores}"
    assert seg.GetAttribute(SOURCE_ATTRIBUTE) == node.GetID()
    assert seg.GetDisplayNode().GetVisibility2D()
    # Table: areas in mm^2 = pixels x pixel area; confidence = mean probability inside the mask.
    rows = table_rows(result.table)
    pixel_area = geometry.spacing[0] * geometry.spacing[1]
    assert [r["Segment"] for r in rows] == list(CLASS_NAMES)
    for row, mask in zip(rows, masks):
        assert row["Pixels"] == mask.sum() and row["Area (mm2)"] == pytest.approx(mask.sum() * pixel_area, rel=1e-6)
        assert 0.5 < row["Mean confidence"] <= 1.0
    # Both outputs under the input's study.
    for output in (seg, result.table):
        assert sh.GetItemParent(sh.GetItemByDataNode(output)) == study


def test_parent_transform_is_kept_and_dicom_like_monochrome1_is_inverted(app, predictor):
    """Under a linear transform the segmentation sits under the same transform, on the same local grid. An image
    shown with Slicer's inverted grey (a MONOCHROME1 DICOM) is read as MONOCHROME1 and segments as well."""
    from XraySegInferLib.mrml_adapter import photometric_of_node, radiograph_from_node, segment_radiograph

    image, truth, geometry = phantom_drr()
    scene = app.scene
    node = add_radiograph(scene, (1.0 - image) * 4000, geometry.detector_ijk_to_ras())  # dense = dark
    node.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeInvertedGrey")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    moved = np.eye(4)
    moved[:3, 3] = (30.0, -12.0, 5.0)
    transform.SetMatrixTransformToParent(vtk_matrix_from_array(moved))
    node.SetAndObserveTransformNodeID(transform.GetID())
    assert photometric_of_node(node) == "MONOCHROME1"
    np.testing.assert_allclose(radiograph_from_node(node).ijk_to_ras, moved @ geometry.detector_ijk_to_ras())
    result = segment_radiograph(scene, node, predictor)
    assert result.segmentation.GetTransformNodeID() == transform.GetID()
    masks, matrices = segment_arrays(result.segmentation)
    np.testing.assert_allclose(matrices[0], geometry.detector_ijk_to_ras(), atol=1e-6)
    assert np.mean([dice(m, t) for m, t in zip(masks, truth)]) > DICE_FLOOR


def test_dicom_node_takes_photometric_and_imager_pixel_spacing_from_the_dicom_database(app, monkeypatch):
    """A CR loaded by Slicer's DICOM browser: the node has DICOM.instanceUIDs; the database gives the tags."""
    import types

    from XraySegInferLib.mrml_adapter import radiograph_from_node

    tags = {"0028,0004": "MONOCHROME1", "0018,1164": "0.5\\0.4"}
    database = types.SimpleNamespace(fileForInstance=lambda uid: f"/dicom/{uid}.dcm",
                                     fileValue=lambda path, tag: tags.get(tag, "") if path == "/dicom/1.2.3.dcm" else "")
    monkeypatch.setattr(slicer, "dicomDatabase", database, raising=False)
    node = add_radiograph(app.scene, np.random.default_rng(0).random((40, 50)), plain_placement(0.6))
    node.SetAttribute("DICOM.instanceUIDs", "1.2.3")
    radiograph = radiograph_from_node(node)
    assert radiograph.photometric == "MONOCHROME1"
    assert radiograph.spacing_mm == (0.5, 0.4) and radiograph.spacing_source == "DICOM ImagerPixelSpacing"
    np.testing.assert_allclose(radiograph.ijk_to_ras, plain_placement(0.6))  # the output grid stays the node's
    del tags["0018,1164"]
    assert radiograph_from_node(node).spacing_mm == (0.6, 0.6)


# ---- bad inputs, cancel -------------------------------------------------------------------------------------


def _ct(scene):
    return add_radiograph(scene, np.zeros((20, 30, 40), np.float32), np.eye(4), "CT")


def _rgb(scene):
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "Photo")
    image = vtk.vtkImageData()
    image.SetDimensions(32, 24, 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    node.SetAndObserveImageData(image)
    return node


def _rgb_in_scalar_node(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "PNG in colour")
    image = vtk.vtkImageData()
    image.SetDimensions(32, 24, 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    node.SetAndObserveImageData(image)
    return node


def _constant(scene):
    return add_radiograph(scene, np.full((32, 32), 7.0, np.float32), np.eye(4), "Blank")


@pytest.mark.parametrize("make, message", [
    (_ct, "is a 3D volume of 40x30x20 voxels"),
    (_rgb, "colour (RGB) or vector image with 3 components"),
    (_rgb_in_scalar_node, "colour (RGB) image with 3 components"),
    (_constant, "constant image"),
    (lambda scene: None, "no input image"),
])
def test_bad_input_gives_a_clear_message_and_no_new_node(app, predictor, make, message):
    from XraySegInferLib.mrml_adapter import segment_radiograph

    node = make(app.scene)
    before = node_ids(app.scene)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        segment_radiograph(app.scene, node, predictor)
    assert node_ids(app.scene) == before


class SlowNetwork:
    """The tiny network made as slow as a real one (0.1 s a batch), so a cancel can land mid-run."""

    def __init__(self, network):
        self.network = network

    def __call__(self, x):
        import time

        time.sleep(0.1)
        return self.network(x)


def test_cancel_mid_run_stops_within_the_network_and_adds_nothing(app, predictor, monkeypatch):
    """A 256 px image at the model's spacing runs in 7 sliding-window batches; cancel after the first."""
    from XraySegInferLib.mrml_adapter import segment_radiograph
    from XraySegInferLib.runner import Cancelled, expected_calls

    spacing = predictor.model.spacing_mm[0]
    rng = np.random.default_rng(0)
    node = add_radiograph(app.scene, rng.random((256, 256)).astype(np.float32), plain_placement(spacing))
    assert expected_calls(predictor, (256, 256), (spacing, spacing)) == 7
    monkeypatch.setattr(predictor, "network", SlowNetwork(predictor.network))
    network = predictor.network
    seen = []

    def progress(fraction, message):
        seen.append(fraction)

    before = node_ids(app.scene)
    with pytest.raises(Cancelled, match="nothing was created|no result was created"):
        segment_radiograph(app.scene, node, predictor, progress=progress, cancel=lambda: any(f > 0 for f in seen))
    assert node_ids(app.scene) == before
    assert predictor.network is network  # the progress wrapper is gone again
    # The same run without cancel reports every batch and ends at 1.
    seen.clear()
    segment_radiograph(app.scene, node, predictor, progress=progress)
    assert seen[-1] == 1.0 and seen == sorted(seen)


def test_model_whose_classes_do_not_match_its_card_is_refused(tmp_path, tiny_model, app):
    """Card edited to list 2 classes for a 3-output network: refused on import (cache untouched) and on load;
    a bundled package whose classes differ from its catalog entry is refused too."""
    from XraySegInferLib.models import ModelEntry, check_against_catalog, import_model, imported_models

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    card = json.loads((bad / "model.json").read_text())
    card["classes"] = card["classes"][:2]
    card["out_channels"] = 2
    from XraySegInferLib.package import update_card

    update_card(bad, card)  # sealed in its manifest: the check under test is the one of card against weights
    cache = tmp_path / "cache"
    before = node_ids(app.scene)
    with pytest.raises(ModelPackageError, match="3 output channels but the card lists 2 classes"):
        import_model(bad, cache)
    assert imported_models(cache) == [] and not [p for p in (cache / "models").iterdir()]
    with pytest.raises(ModelPackageError, match="output channels"):
        Predictor.from_package(bad, "cpu")
    assert node_ids(app.scene) == before
    entry = ModelEntry("chest-bones", "x", tiny_model, "bundled", class_names=list(CLASS_NAMES),
                       catalog={"id": "chest-bones", "classes": ["ribs_left", "ribs_right"]})
    with pytest.raises(ModelPackageError, match="not the catalog's"):
        check_against_catalog(entry)


# ---- the overlay in a slice view ----------------------------------------------------------------------------


def test_slice_view_shows_the_radiograph_with_the_overlay(app, predictor, artifacts_dir):
    from scipy import ndimage

    from XraySegInferLib.mrml_adapter import segment_radiograph, show_in_slice_view

    image, truth, geometry = phantom_drr(size=128)
    ijk_to_ras = geometry.detector_ijk_to_ras()
    node = add_radiograph(app.scene, image, ijk_to_ras)
    node.GetDisplayNode().AutoWindowLevelOff()
    node.GetDisplayNode().SetWindowLevelMinMax(0.0, 1.0)
    result = segment_radiograph(app.scene, node, predictor)
    view = app.slice_view("Red", size=(360, 360))
    show_in_slice_view(view.node, view.composite_node, node)
    path = artifacts_dir / "xrayseginfer_slice_view.png"
    rgb = view.capture(path).astype(int)
    assert path.stat().st_size < 100_000  # small enough for the README (make screenshots)
    # Screen pixel -> image pixel (i, j).
    xy_to_ras = array_from_vtk_matrix(view.node.GetXYToRAS())
    height, width = rgb.shape[:2]
    y, x = np.indices((height, width))
    xy = np.stack([x, height - 1 - y, np.zeros_like(x), np.ones_like(x)], -1).astype(float)
    ijk = (xy @ (np.linalg.inv(ijk_to_ras) @ xy_to_ras).T)[..., :2]
    ij = np.round(ijk).astype(int)
    inside = (ij[..., 0] >= 0) & (ij[..., 0] < 128) & (ij[..., 1] >= 0) & (ij[..., 1] < 128)
    assert inside.mean() > 0.9, "the radiograph should fill the view"
    masks = np.stack(segment_arrays(result.segmentation)[0])
    cores = np.stack([ndimage.binary_erosion(m, iterations=2) for m in masks])  # away from the outlines
    shown = np.zeros((3,) + rgb.shape[:2], bool)
    shown[:, inside] = cores[:, ij[inside][:, 1], ij[inside][:, 0]]
    others = np.zeros_like(shown[0])
    gray_only = inside.copy()
    gray_only[inside] = ~ndimage.binary_dilation(masks.any(0), iterations=2)[ij[inside][:, 1], ij[inside][:, 0]]
    spread = rgb[gray_only].max(-1) - rgb[gray_only].min(-1)
    assert np.median(spread) <= 2, "pixels away from the bones show the gray radiograph"
    for k, color in enumerate(COLORS):
        only = shown[k] & ~np.delete(shown, k, axis=0).any(0) & ~others
        assert only.sum() > 200, f"{CLASS_NAMES[k]}: too few screen pixels"
        tint = rgb[only].mean(0) - rgb[only].mean()  # the overlay's tint over the gray image
        expected = np.array(color) - np.mean(color)
        assert np.dot(tint, expected) / (np.linalg.norm(tint) * np.linalg.norm(expected)) > 0.9, \
            f"{CLASS_NAMES[k]} pixels are tinted {tint}, not like its colour {color}"


# ---- batch ----------------------------------------------------------------------------------------------------


def _write_nrrd(path: Path, image: np.ndarray, ijk_to_ras: np.ndarray) -> None:
    import SimpleITK as sitk

    itk = sitk.GetImageFromArray(image[None].astype(np.float32))
    lps = np.diag([-1.0, -1.0, 1.0]) @ ijk_to_ras[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    itk.SetSpacing(spacing.tolist())
    itk.SetDirection((lps[:, :3] / spacing).ravel().tolist())
    itk.SetOrigin(lps[:, 3].tolist())
    sitk.WriteImage(itk, str(path))


def test_batch_writes_seg_nrrd_and_summary_cancels_and_resumes(tmp_path, predictor, app):
    from XraySegInferLib.mrml_adapter import table_from_csv
    from XraySegInferLib.runner import run_batch

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    truths, placements = {}, {}
    for index, angles in enumerate([(0.0, 0.0), (15.0, -5.0), (-20.0, 8.0)]):
        image, truth, geometry = phantom_drr(angles=angles, seed=50 + index)
        placements[f"case{index}.nrrd"] = geometry.detector_ijk_to_ras()
        truths[f"case{index}.nrrd"] = truth
        _write_nrrd(folder / f"case{index}.nrrd", image, geometry.detector_ijk_to_ras())
    (folder / "broken.png").write_bytes(b"not a png")
    calls = []

    def cancel_after_first_file():
        return len(list(out.glob("*.seg.nrrd"))) >= 1

    report = run_batch(predictor, folder, out, progress=lambda f, m: calls.append(f), cancel=cancel_after_first_file)
    # Sorted: broken.png fails (reported, the batch goes on), case0 is written, then the cancel lands.
    assert report.cancelled and report.done == ["case0.nrrd"] and list(report.failed) == ["broken.png"]
    assert calls == sorted(calls) and calls[-1] == 1.0
    assert sorted(p.name for p in out.glob("*.seg.nrrd")) == ["case0.seg.nrrd"]
    assert not list(out.glob(".*.part"))  # nothing half-written
    report = run_batch(predictor, folder, out, resume=True)
    assert not report.cancelled and report.skipped == ["case0.nrrd"]
    assert sorted(report.done) == ["case1.nrrd", "case2.nrrd"] and list(report.failed) == ["broken.png"]
    with open(report.summary_csv, newline="") as handle:
        rows = {r["file"]: r for r in csv.DictReader(handle)}
    assert rows["broken.png"]["status"] == "error" and "not a readable image" in rows["broken.png"]["message"]
    for name, truth in truths.items():
        row = rows[name]
        assert row["status"] == "ok" and row["output"] == name.replace(".nrrd", ".seg.nrrd")
        # The .seg.nrrd loads in Slicer on the radiograph's grid, with names, colours, terminology.
        storage = app.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
        storage.SetFileName(str(out / row["output"]))
        seg = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        assert storage.ReadData(seg)
        masks, matrices = segment_arrays(seg)
        np.testing.assert_allclose(matrices[0], placements[name], atol=1e-5)
        segment = seg.GetSegmentation().GetNthSegment(0)
        assert segment.GetName() == "spine" and "421060004" in segment.GetTerminology()
        assert np.mean([dice(m, t) for m, t in zip(masks, truth)]) > DICE_FLOOR
        spacing = np.linalg.norm(placements[name][:3, :2], axis=0)
        assert float(row["spine_area_mm2"]) == pytest.approx(masks[0].sum() * spacing.prod(), rel=1e-3)
        assert 0.5 < float(row["sternum_confidence"]) <= 1.0
    table = table_from_csv(app.scene, report.summary_csv)
    assert table.GetTable().GetNumberOfRows() == 4


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
