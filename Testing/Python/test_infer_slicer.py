"""XraySegInfer in a real MRML scene (slicer-core, headless): a radiograph volume node (oblique or not) in, a
segmentation node on its exact grid and a table node out; bad inputs, cancel, a model whose classes do not match its
card; and the fixtures and helpers (tiny model, predictor, phantom DRRs) the other Infer tests import. The overlay
view and batch: test_infer_outputs.py; models, device, dependencies and the module file: test_infer_models.py.

The model is a tiny U-Net trained here on phantom DRRs (XraySegInferLib.synthetic: three 'bones' that overlap in
projection) in ~5 s on one thread, cached in .cache/xrayseg/test-models/ (keyed by the training code), so later
runs skip the training. The bundled chest model, when present, gets its own slow test.
"""

from __future__ import annotations

import hashlib
import json
import shutil
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
