"""Layer 2: MRML scene <-> XraySegInferLib. Qt-free; every function takes the scene and nodes explicitly.

It runs inside the Slicer application and headless on the ``slicer-core`` wheel (the tests). Nothing here touches
``slicer.mrmlScene``, ``slicer.app`` or ``qt`` (the DICOM database is looked up only when the application has one).

::

    radiograph = radiograph_from_node(volume_node)      # checks: one component, one slice; photometric; spacing
    result = segment_radiograph(scene, volume_node, predictor, progress=cb, cancel=cb)
    result.segmentation   # vtkMRMLSegmentationNode on the radiograph's exact IJK->RAS (same parent transform)
    result.table          # vtkMRMLTableNode: segment, area (mm2), pixels, mean confidence
    show_in_slice_view(slice_node, composite_node, volume_node)   # the image plane, as the image is read

Input rules (each refusal is an ``InputError`` that says what to choose instead, raised before any node is made):
a scalar volume node (not a label map, not a colour/vector image) with a single slice along K. A 3D CT is
refused. The photometric interpretation comes from the node attribute ``XraySeg.Photometric`` if set, else the
DICOM database (tag 0028,0004 of the node's first instance), else the display's colour table (Slicer shows
MONOCHROME1 images with "InvertedGrey"), else MONOCHROME2. The pixel spacing is the node's, except for DICOM
nodes whose database entry has ImagerPixelSpacing (0018,1164), which wins as in ``reader.read_dicom``, and
for PNG/JPEG/BMP files (which carry none: Slicer gives them 1 mm), where the model's training field of view is
assumed and said so in the notes. The output grid is always the node's own IJK->RAS.

Outputs are made inside ``node_transaction``: if anything fails (or the run is cancelled), no new node remains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk

from XraySegSimLib.errors import InputError
from XraySegSimLib.mrml_adapter import (_image_array, _image_data, array_from_vtk_matrix, node_transaction,
                                        vtk_matrix_from_array, world_matrix)

from .reader import PILLOW_SUFFIXES, Radiograph
from .runner import ClassResult, class_results, run_prediction

ROLE_ATTRIBUTE = "XraySegInfer.Role"
MODEL_ATTRIBUTE = "XraySegInfer.Model"
SOURCE_ATTRIBUTE = "XraySegInfer.SourceVolume"
PHOTOMETRIC_ATTRIBUTE = "XraySeg.Photometric"
FILL_OPACITY = 0.5
TABLE_COLUMNS = ("Segment", "Area (mm2)", "Pixels", "Mean confidence")


# ---- input --------------------------------------------------------------------------------------------------


def _describe(node) -> str:
    return f"'{node.GetName()}'"


def dicom_value(node, tag: str) -> str:
    """A tag ("gggg,eeee") of the node's first DICOM instance from Slicer's DICOM database ("" if none)."""
    uids = node.GetAttribute("DICOM.instanceUIDs")
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return ""
    try:
        return str(database.fileValue(database.fileForInstance(uids.split()[0]), tag) or "").strip()
    except Exception:  # noqa: BLE001 - not in the database (e.g. loaded from a file): no value
        return ""


def photometric_of_node(node) -> str:
    """MONOCHROME1 (dense = dark) or MONOCHROME2 (dense = bright): see the module docstring for the order."""
    value = node.GetAttribute(PHOTOMETRIC_ATTRIBUTE)
    if value in ("MONOCHROME1", "MONOCHROME2"):
        return value
    value = dicom_value(node, "0028,0004")
    if value in ("MONOCHROME1", "MONOCHROME2"):
        return value
    display = node.GetDisplayNode()
    if display is not None and "InvertedGrey" in (display.GetColorNodeID() or ""):
        return "MONOCHROME1"
    return "MONOCHROME2"


def _file_of(node) -> str:
    storage = node.GetStorageNode()
    return storage.GetFileName() or "" if storage is not None else ""


def radiograph_from_node(node) -> Radiograph:
    """The node's pixels as a :class:`Radiograph` (world IJK->RAS, parent transforms included). Refuses what is
    not a radiograph with a message saying what to choose."""
    what = "choose a radiograph: a single-slice scalar volume (DICOM CR/DX, PNG/JPEG, NRRD, or an XraySegSim DRR)"
    if node is None:
        raise InputError(f"no input image: {what}")
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{_describe(node)} is a label map, not a radiograph; {what}")
    if node.IsA("vtkMRMLVectorVolumeNode") or not node.IsA("vtkMRMLScalarVolumeNode"):
        image = node.GetImageData() if hasattr(node, "GetImageData") else None
        components = image.GetNumberOfScalarComponents() if image is not None else "several"
        raise InputError(
            f"{_describe(node)} is a colour (RGB) or vector image with {components} components per pixel; a "
            "radiograph has one. Convert it to gray first (module 'Vector to Scalar Volume'), then choose the "
            "gray volume")
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"{_describe(node)} holds no image data; {what}")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(
            f"{_describe(node)} is a colour (RGB) image with {image.GetNumberOfScalarComponents()} components per "
            "pixel; a radiograph has one. Convert it to gray first (module 'Vector to Scalar Volume')")
    cols, rows, slices = image.GetDimensions()
    if slices != 1:
        if min(cols, rows, slices) > 1:
            raise InputError(
                f"{_describe(node)} is a 3D volume of {cols}x{rows}x{slices} voxels (a CT or MR?), not a radiograph; "
                f"{what}. To make a radiograph from a CT use the XraySeg Sim module")
        raise InputError(f"{_describe(node)} is a single slice along I or J ({cols}x{rows}x{slices}); XraySeg "
                         "Infer expects the image in the I-J plane (one slice along K). Reformat or reload it")
    if min(cols, rows) < 8:
        raise InputError(f"{_describe(node)}: an image of {cols}x{rows} pixels is too small to segment")
    pixels = _image_array(image)[0].astype(np.float32)
    if not np.isfinite(pixels).all():
        raise InputError(f"{_describe(node)} contains NaN or infinite pixels")
    if float(pixels.max() - pixels.min()) == 0.0:
        raise InputError(f"{_describe(node)} is a constant image (every pixel {pixels.flat[0]:g}); nothing to segment")
    local = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(local)
    ijk_to_ras = world_matrix(node) @ array_from_vtk_matrix(local)
    spacing = (float(np.linalg.norm(ijk_to_ras[:3, 1])), float(np.linalg.norm(ijk_to_ras[:3, 0])))
    source = "volume node"
    filename = _file_of(node)
    if Path(filename.lower()).suffix in PILLOW_SUFFIXES:
        spacing, source = None, "absent"  # Slicer gives such images 1 mm pixels; they carry no spacing
    elif node.GetAttribute("DICOM.instanceUIDs"):
        # As reader.read_dicom: ImagerPixelSpacing (at the detector, like our training DRRs) over PixelSpacing.
        source = "DICOM (as loaded by Slicer)"
        imager = dicom_value(node, "0018,1164")
        try:
            row_mm, col_mm = (float(v) for v in imager.split("\\"))
            if row_mm > 0 and col_mm > 0:
                spacing, source = (row_mm, col_mm), "DICOM ImagerPixelSpacing"
        except ValueError:
            pass
    return Radiograph(pixels, photometric_of_node(node), spacing, source, ijk_to_ras,
                      Path(filename) if filename else None,
                      metadata={"node": node.GetName(), "node_id": node.GetID()})


# ---- outputs ------------------------------------------------------------------------------------------------


def _local_ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return array_from_vtk_matrix(matrix)


def create_segmentation_node(scene, volume_node, masks: np.ndarray, results: list[ClassResult], name: str):
    """A segmentation on ``volume_node``'s grid: one segment (and one layer, so overlaps survive) per class, with
    its name, colour and terminology; under the same parent transform as the volume."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.SetAttribute(ROLE_ATTRIBUTE, "segmentation")
    node.SetAttribute(SOURCE_ATTRIBUTE, volume_node.GetID())
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetOpacity2DFill(FILL_OPACITY)
    display.SetVisibility2D(True)
    display.SetVisibility3D(False)  # flat: shown in the slice views
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    image_to_world = vtk_matrix_from_array(_local_ijk_to_ras(volume_node))
    segmentation = node.GetSegmentation()
    was_modifying = node.StartModify()
    for mask, result in zip(masks, results):
        labelmap = slicer.vtkOrientedImageData()
        labelmap.ShallowCopy(_image_data(np.asarray(mask, np.uint8)[None], vtk.VTK_UNSIGNED_CHAR))
        labelmap.SetImageToWorldMatrix(image_to_world)
        segment = slicer.vtkSegment()
        segment.SetName(result.name)
        segment.SetColor(*result.color)
        if result.terminology:
            segment.SetTerminology(result.terminology)
        segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), labelmap)
        segmentation.AddSegment(segment, segmentation.GenerateUniqueSegmentID(result.name))
    node.EndModify(was_modifying)
    return node


def create_table_node(scene, results: list[ClassResult], name: str, attributes: dict | None = None):
    """Per-class areas (mm2), pixel counts and the model's mean confidence inside each mask."""
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    node.SetAttribute(ROLE_ATTRIBUTE, "table")
    for key, value in (attributes or {}).items():
        node.SetAttribute(key, str(value))
    table = node.GetTable()
    names = vtk.vtkStringArray()
    names.SetName(TABLE_COLUMNS[0])
    area, pixels, confidence = vtk.vtkDoubleArray(), vtk.vtkIntArray(), vtk.vtkDoubleArray()
    for array, title in zip((area, pixels, confidence), TABLE_COLUMNS[1:]):
        array.SetName(title)
    for result in results:
        names.InsertNextValue(result.name)
        area.InsertNextValue(result.area_mm2)
        pixels.InsertNextValue(result.pixels)
        confidence.InsertNextValue(result.mean_confidence)
    for array in (names, area, pixels, confidence):
        table.AddColumn(array)
    node.SetColumnUnitLabel(TABLE_COLUMNS[1], "mm2")
    node.SetColumnDescription(TABLE_COLUMNS[3], "mean foreground probability of the model inside the segment")
    node.Modified()
    return node


def table_rows(table_node) -> list[dict]:
    """The table node as a list of {column: value} (numbers as float), for scripts and tests."""
    table = table_node.GetTable()
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c in range(table.GetNumberOfColumns()):
            value = table.GetValue(r, c)
            row[table.GetColumnName(c)] = value.ToString() if value.IsString() else value.ToDouble()
        rows.append(row)
    return rows


def study_item(scene, volume_node) -> int:
    """Subject hierarchy item the results go under: the input's study (walking up from its parent), else the
    input's own parent (the scene, or a folder)."""
    sh = scene.GetSubjectHierarchyNode()
    item = sh.GetItemByDataNode(volume_node)
    if not item:
        item = sh.CreateItem(sh.GetSceneItemID(), volume_node)
    parent = sh.GetItemParent(item)
    walker = parent
    while walker and walker != sh.GetSceneItemID():
        if sh.GetItemLevel(walker) == "Study":
            return walker
        walker = sh.GetItemParent(walker)
    return parent or sh.GetSceneItemID()


def place_under(scene, parent_item: int, nodes) -> None:
    sh = scene.GetSubjectHierarchyNode()
    for node in nodes:
        item = sh.GetItemByDataNode(node)
        if not item:
            sh.CreateItem(parent_item, node)
        else:
            sh.SetItemParent(item, parent_item)


@dataclass
class SegmentationResult:
    segmentation: object
    table: object
    prediction: object
    classes: list[ClassResult]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def segment_radiograph(scene, volume_node, predictor, progress=None, cancel=None,
                       spacing_mm: tuple[float, float] | None = None, name: str | None = None,
                       model_label: str = "", device_note: str = "") -> SegmentationResult:
    """Run ``predictor`` (``inference.Predictor`` or the nnU-Net adapter) on ``volume_node`` and add the
    segmentation and table nodes under the input's study. ``progress(fraction, message)`` and ``cancel()`` as in
    :func:`runner.run_prediction`; on cancel or error nothing is added."""
    import time

    started = time.perf_counter()
    radiograph = radiograph_from_node(volume_node)
    prediction, notes = run_prediction(predictor, radiograph, spacing_mm, progress, cancel)
    return add_prediction_nodes(scene, volume_node, prediction, notes, getattr(predictor, "card", None), name,
                                model_label, device_note, time.perf_counter() - started)


def add_prediction_nodes(scene, volume_node, prediction, notes: list[str], card: dict | None, name: str | None = None,
                         model_label: str = "", device_note: str = "", seconds: float = 0.0) -> SegmentationResult:
    """The segmentation and table nodes of a prediction on ``volume_node``'s grid (``prediction``: class_names,
    colors, masks (C, H, W), probabilities, spacing_mm, spacing_source), under the input's study; all or none."""
    notes = list(notes)
    if device_note:
        notes.insert(0, device_note)
    results = class_results(prediction, card)
    card_names = [c["name"] for c in (card or {}).get("classes", [])]
    if card_names and card_names != list(prediction.class_names):
        raise InputError(f"the model returned classes {prediction.class_names}, its card lists {card_names}")
    base = name or f"{volume_node.GetName()} bones"
    with node_transaction(scene):
        segmentation = create_segmentation_node(scene, volume_node, prediction.masks, results, base)
        segmentation.SetAttribute(MODEL_ATTRIBUTE, model_label)
        table = create_table_node(scene, results, f"{base} areas", {
            MODEL_ATTRIBUTE: model_label, "XraySegInfer.SpacingSource": prediction.spacing_source,
            "XraySegInfer.SpacingMm": f"{prediction.spacing_mm[0]:.6g} {prediction.spacing_mm[1]:.6g}",
            "XraySegInfer.Notes": " | ".join(notes)})
        place_under(scene, study_item(scene, volume_node), (segmentation, table))
    return SegmentationResult(segmentation, table, prediction, results, notes, seconds)


# ---- display ------------------------------------------------------------------------------------------------


def slice_to_ras_for_image(ijk_to_ras: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """SliceToRAS that shows a single-slice image as it is read (screen right = column axis, screen down = row
    axis), centred on it."""
    m = np.asarray(ijk_to_ras, float)
    x = m[:3, 0] / np.linalg.norm(m[:3, 0])
    v = m[:3, 1] - (m[:3, 1] @ x) * x  # orthogonal to x (a sheared grid is shown without the shear)
    y = -v / np.linalg.norm(v)
    rows, cols = shape
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2] = x, y, np.cross(x, y)
    out[:3, 3] = m[:3, :3] @ [(cols - 1) / 2, (rows - 1) / 2, 0] + m[:3, 3]
    return out


def show_in_slice_view(slice_node, composite_node, volume_node) -> None:
    """Turn a slice view onto the radiograph's plane, fit it, radiograph as background (segmentations show on
    top by their own display nodes)."""
    local = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(local)
    m = world_matrix(volume_node) @ array_from_vtk_matrix(local)
    cols, rows, _ = volume_node.GetImageData().GetDimensions()
    slice_node.GetSliceToRAS().DeepCopy(vtk_matrix_from_array(slice_to_ras_for_image(m, (rows, cols))))
    width, height = cols * np.linalg.norm(m[:3, 0]), rows * np.linalg.norm(m[:3, 1])
    view_w, view_h = slice_node.GetDimensions()[:2]
    scale = max(width / max(view_w, 1), height / max(view_h, 1))
    slice_node.SetFieldOfView(scale * view_w, scale * view_h, 1.0)
    slice_node.UpdateMatrices()
    composite_node.SetBackgroundVolumeID(volume_node.GetID())


def table_from_csv(scene, path: str | Path, name: str = "XraySegInfer batch summary"):
    """A table node with the batch summary CSV (all columns as text)."""
    import csv

    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    node.SetAttribute(ROLE_ATTRIBUTE, "batch summary")
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return node
    header, body = rows[0], rows[1:]
    for c, title in enumerate(header):
        array = vtk.vtkStringArray()
        array.SetName(title)
        for row in body:
            array.InsertNextValue(row[c] if c < len(row) else "")
        node.GetTable().AddColumn(array)
    node.Modified()
    return node


__all__ = ["SegmentationResult", "add_prediction_nodes", "create_segmentation_node", "create_table_node", "photometric_of_node",
           "place_under", "radiograph_from_node", "segment_radiograph", "show_in_slice_view", "slice_to_ras_for_image",
           "study_item", "table_from_csv", "table_rows"]
