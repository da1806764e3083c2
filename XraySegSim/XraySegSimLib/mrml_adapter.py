"""Layer 2: MRML scene <-> XraySegSimLib. Qt-free; every function takes the scene and nodes explicitly.

It runs wherever ``slicer`` (MRML) does: inside the Slicer application, and headless on the ``slicer-core``
wheel (the tests). Nothing here touches ``slicer.mrmlScene``, ``slicer.app`` or ``qt``.

Inputs (any orientation; parent transforms honoured when linear)::

    ct = volume_from_node(ct_node)                        # Volume in world RAS (parent transforms applied)
    labels, classes = labels_from_node(scene, seg_or_labelmap_node, ct_node)   # on the CT grid

The X-ray set-up in the scene (:class:`XraySimScene`), all nodes tagged with the attribute
``XraySegSim.Role`` so a later session finds them again:

* ``pose`` -- a linear transform node: the tube / C-arm pose. Dragging it (its 3D handles, or the Transforms
  module) moves the whole set-up: ``geometry() == base_geometry().transformed(pose_matrix())``.
* ``source`` -- a point list markup with one point; ``detector`` -- a plane markup (centre, axes, size in mm);
  ``frustum`` -- a model: lines from the source to the detector corners and the detector outline. All three
  sit under ``pose`` and hold the *base* (untransformed) set-up. Moving the source point or the detector plane
  on its own changes the set-up too; call :meth:`XraySimScene.update_frustum` after that.
* ``drr`` -- the DRR, a single-slice scalar volume whose IJK->RAS is ``geometry.detector_ijk_to_ras()``, so it
  lies on the detector in 3D; ``labels`` -- the projected labels, a segmentation on the same grid, one
  segment (and one layer, so overlaps survive) per class, with the input's names, colours and terminology;
  ``labels3d`` -- a model that shows the projected labels in 3D: one coloured quad per labelled pixel (the
  class with the longest path), just in front of the detector.

Isocentre (the point the view is aimed at)::

    isocenter_ras("Segment centre", ct_node, labels_node=bones, segment="femur_left")
    isocenter_ras("Markup point", ct_node, markup=point_list_node)     # its first control point
    isocenter_ras("CT centre", ct_node)

Label maps whose colour table is one of Slicer's defaults are read as TotalSegmentator v1 label maps: names,
colours and SNOMED CT terminology of the bones come from ``Resources/ColorTables/TotalSegmentatorV1Bones.csv``
(a Slicer colour table file); other values are ignored. A label map with its own colour table keeps it.

Rendering::

    sim = XraySimScene(scene)
    sim.set_geometry(views.from_preset("chest-pa", volume_from_node(ct_node).center_ras, size=512))
    result = sim.render(ct_node, seg_node)            # DrrResult; creates or updates the drr/labels nodes
    result = sim.render(ct_node, seg_node, size=128)  # preview while dragging (same detector, fewer pixels)
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .errors import GeometryError, InputError
from .geometry import XrayGeometry
from .labels import LabelClass, LabelClasses
from .projector import DrrProjector, DrrResult
from .volume import Volume

ROLE_ATTRIBUTE = "XraySegSim.Role"
RIG_ATTRIBUTE = "XraySegSim.Rig"
BASE_GEOMETRY_ATTRIBUTE = "XraySegSim.BaseGeometry"
QUANTITY_ATTRIBUTE = "XraySegSim.Quantity"  # on the DRR node: what its voxels hold
ROLES = ("pose", "source", "detector", "frustum", "drr", "labels", "labels3d")
NODE_CLASSES = {"pose": "vtkMRMLLinearTransformNode", "source": "vtkMRMLMarkupsFiducialNode",
                "detector": "vtkMRMLMarkupsPlaneNode", "frustum": "vtkMRMLModelNode",
                "drr": "vtkMRMLScalarVolumeNode", "labels": "vtkMRMLSegmentationNode",
                "labels3d": "vtkMRMLModelNode"}
NODE_NAMES = {"pose": "X-ray pose", "source": "X-ray source", "detector": "X-ray detector",
              "frustum": "X-ray beam", "drr": "X-ray DRR", "labels": "X-ray labels", "labels3d": "X-ray labels 3D"}
BEAM_COLOR = (1.0, 0.85, 0.2)
LABELS_3D_OFFSET_MM = 0.5  # the 3D label quads float this far in front of the detector (towards the source)
LABELS_3D_OPACITY = 0.6

ISOCENTER_MODES = ("CT centre", "Markup point", "Segment centre")
RESOURCES = Path(__file__).resolve().parents[1] / "Resources"
TOTALSEGMENTATOR_TABLE = RESOURCES / "ColorTables" / "TotalSegmentatorV1Bones.csv"
TERMINOLOGY_TAG = "TerminologyEntry"
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


# ---- small MRML helpers -------------------------------------------------------------------------------------


def array_from_vtk_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def vtk_matrix_from_array(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r][c]))
    return matrix


def _nodes(scene, class_name: str = "vtkMRMLNode") -> list:
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


@contextlib.contextmanager
def node_transaction(scene, keep: bool = True) -> Iterator[None]:
    """Nodes added to ``scene`` inside the block are removed if it raises (so no half-made node remains),
    and always removed when ``keep`` is False (temporary nodes)."""
    before = {node.GetID() for node in _nodes(scene)}
    failed = True
    try:
        yield
        failed = False
    finally:
        if failed or not keep:
            for node in reversed(_nodes(scene)):
                if node.GetID() not in before and node.GetScene() is scene:
                    scene.RemoveNode(node)


def world_matrix(node) -> np.ndarray:
    """4x4 from the node's coordinates to world RAS (identity when it has no parent transform)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(
            f"{node.GetName()}: lies under the non-linear transform '{parent.GetName()}'; harden it first "
            "(Transforms module > Apply transform) or use a linear transform")
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return array_from_vtk_matrix(matrix)


def _image_array(image_data) -> np.ndarray:
    """Voxels of a single-component vtkImageData as a [k, j, i] numpy view."""
    dims = image_data.GetDimensions()
    return numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars()).reshape(dims[::-1])


def _image_data(array: np.ndarray, vtk_type: int) -> vtk.vtkImageData:
    """A vtkImageData (origin 0, spacing 1; placement is the node's business) holding a copy of [k, j, i]."""
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True,
                                                               array_type=vtk_type))
    return image


# ---- inputs -------------------------------------------------------------------------------------------------


def volume_from_node(node, role: str = "CT") -> Volume:
    """A scalar volume node as a :class:`Volume` in world RAS: IJK->RAS composed with its (linear) parent
    transforms. Shares the node's voxels. Refuses missing data, vector images and single slices (for a CT)."""
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"the {role} must be a scalar volume node, got "
                         f"{'nothing' if node is None else node.GetClassName()}")
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"{node.GetName()}: the {role} volume holds no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"{node.GetName()}: the {role} must have one value per voxel, it has "
                         f"{image.GetNumberOfScalarComponents()} (colour or vector image)")
    dims = image.GetDimensions()
    if role == "CT" and min(dims) < 2:
        raise InputError(
            f"{node.GetName()}: is a single slice ({dims[0]}x{dims[1]}x{dims[2]} voxels), not a CT volume; "
            "choose a 3D CT with at least 2 voxels along every axis (a radiograph or DRR cannot be projected)")
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    return Volume(_image_array(image), world_matrix(node) @ array_from_vtk_matrix(ijk_to_ras), node.GetName())


def classes_from_color_node(color_node, values: Sequence[int]) -> LabelClasses:
    """One class per label value, named and coloured by a colour table (``label_<v>`` where it has no name)."""
    classes = []
    for value in sorted(int(v) for v in values if int(v) > 0):
        name, color = f"label_{value}", None
        if color_node is not None and value < color_node.GetNumberOfColors():
            name = color_node.GetColorName(value) or name
            rgba = [0.0, 0.0, 0.0, 0.0]
            color_node.GetColor(value, rgba)
            color = tuple(float(c) for c in rgba[:3])
        classes.append(LabelClass(name, (value,), color or LabelClasses.from_values([value]).classes[0].color))
    return LabelClasses(tuple(classes))


# ---- names, colours and terminology ------------------------------------------------------------------------


Code = tuple[str, str, str]  # (coding scheme, value, meaning), e.g. ("SCT", "51299004", "Clavicle")


def terminology_entry(category: Code, type_: Code, type_modifier: Code | None = None,
                      region: Code | None = None, region_modifier: Code | None = None) -> str:
    """A segment's ``TerminologyEntry`` tag in Slicer's format (context~category~type~modifier~anatomic
    context~region~region modifier, each code ``scheme^value^meaning``)."""
    def code(c: Code | None) -> str:
        return "^".join(c) if c else "^^"
    return "~".join([TERMINOLOGY_CONTEXT, code(category), code(type_), code(type_modifier), ANATOMIC_CONTEXT,
                     code(region), code(region_modifier)])


@dataclasses.dataclass(frozen=True)
class LabelTableEntry:
    """One row of a label table: value, name, colour (RGB 0..1) and terminology tag (None when uncoded)."""
    value: int
    name: str
    color: tuple[float, float, float]
    terminology: str | None


def read_label_table(path: str | Path = TOTALSEGMENTATOR_TABLE) -> dict[int, LabelTableEntry]:
    """{value: entry} from a Slicer colour table in CSV form (LabelValue, Name, Color_R/G/B (0..255), and
    Category_/Type_/TypeModifier_/Region_/RegionModifier_ CodingScheme/CodeValue/CodeMeaning); background
    (value 0) left out."""
    return dict(_read_label_table(str(path)))


@functools.lru_cache(maxsize=4)
def _read_label_table(path: str) -> tuple[tuple[int, LabelTableEntry], ...]:
    if not Path(path).is_file():
        raise InputError(f"label table not found: {path}")
    entries = []
    for row in csv.DictReader(Path(path).read_text().splitlines()):
        value = int(row["LabelValue"])
        if value <= 0:
            continue

        def code(prefix: str) -> Code | None:
            c = tuple((row.get(f"{prefix}_{f}") or "").strip() for f in ("CodingScheme", "CodeValue", "CodeMeaning"))
            return c if c[1] else None  # type: ignore[return-value]
        category, type_ = code("Category"), code("Type")
        terminology = None if not (category and type_) else terminology_entry(
            category, type_, code("TypeModifier"), code("Region"), code("RegionModifier"))
        color = tuple(int(row[f"Color_{c}"]) / 255 for c in "RGB")
        entries.append((value, LabelTableEntry(value, row["Name"].strip(), color, terminology)))  # type: ignore[arg-type]
    return tuple(entries)


def is_default_color_node(color_node) -> bool:
    """True for none, or one of the colour tables Slicer creates by itself (not a table the user loaded or
    made for this label map)."""
    return color_node is None or bool(color_node.GetSingletonTag())


def _color_node_of(labels_node):
    display = labels_node.GetDisplayNode()
    return display.GetColorNode() if display is not None else None


def classes_for_labelmap(labels_node, values: Sequence[int]) -> LabelClasses:
    """Classes of a label map with these values: from its own colour table, or -- when it has only one of
    Slicer's default tables and some values are TotalSegmentator v1 bones -- from the shipped bone table
    (names, colours; values not in the table are ignored)."""
    color_node = _color_node_of(labels_node)
    present = sorted(int(v) for v in values if int(v) > 0)
    if is_default_color_node(color_node):
        table = read_label_table()
        known = [v for v in present if v in table]
        if known:
            return LabelClasses(tuple(LabelClass(table[v].name, (v,), table[v].color) for v in known))
    return classes_from_color_node(color_node, present)


def _terminology_from_color_node(color_node, value: int) -> str | None:
    """The colour table's terminology of ``value`` as a segment tag (None where it has none)."""
    if color_node is None or not hasattr(color_node, "GetTerminologyAsString") or \
            value >= color_node.GetNumberOfColors():
        return None
    parts = (color_node.GetTerminologyAsString(value) or "").split("~")
    if len(parts) < 7 or parts[2].strip("^") == "":
        return None
    parts[0], parts[4] = parts[0] or TERMINOLOGY_CONTEXT, parts[4] or ANATOMIC_CONTEXT
    return "~".join(parts[:7])


def terminology_for_classes(labels_node, classes: LabelClasses) -> list[str | None]:
    """The ``TerminologyEntry`` tag of each class (None: Slicer's default). A segmentation's class ``v`` is
    its segment ``v - 1`` (see :func:`classes_from_segmentation`), whose tag is copied as it is. A label
    map's class takes the terminology of its colour table entry, else of the shipped TotalSegmentator table
    (matched by name and value); classes that merge several values get none."""
    if labels_node is None:
        return [None] * len(classes)
    if labels_node.IsA("vtkMRMLSegmentationNode"):
        segmentation, ids = labels_node.GetSegmentation(), segment_ids(labels_node)
        tags = []
        for cls in classes.classes:
            segment = segmentation.GetSegment(ids[cls.values[0] - 1]) if 0 < cls.values[0] <= len(ids) else None
            tags.append(segment.GetTerminology() if segment is not None and len(cls.values) == 1 else None)
        return tags
    color_node, table = _color_node_of(labels_node), read_label_table()
    tags = []
    for cls in classes.classes:
        tag = None
        if len(cls.values) == 1:
            value = cls.values[0]
            if not is_default_color_node(color_node):
                tag = _terminology_from_color_node(color_node, value)
            if tag is None and value in table and table[value].name == cls.name:
                tag = table[value].terminology
        tags.append(tag)
    return tags


def segment_ids(segmentation_node) -> list[str]:
    ids = vtk.vtkStringArray()
    segmentation_node.GetSegmentation().GetSegmentIDs(ids)
    return [ids.GetValue(i) for i in range(ids.GetNumberOfValues())]


def classes_from_segmentation(segmentation_node) -> LabelClasses:
    """One class per segment, in the segmentation's order: label value i+1, the segment's name and colour."""
    segmentation = segmentation_node.GetSegmentation()
    return LabelClasses(tuple(
        LabelClass(segmentation.GetSegment(sid).GetName(), (index + 1,),
                   tuple(float(c) for c in segmentation.GetSegment(sid).GetColor()))
        for index, sid in enumerate(segment_ids(segmentation_node))))


def _bounds_text(bounds: Sequence[float]) -> str:
    return "R {:.0f}..{:.0f}, A {:.0f}..{:.0f}, S {:.0f}..{:.0f} mm".format(*bounds)


def labels_from_segmentation(scene, segmentation_node, ct_node) -> tuple[Volume, LabelClasses]:
    """Export every segment onto the CT grid (Segmentations logic, parent transforms honoured) as a label map
    with value i+1 for segment i. Where segments overlap in 3D the later one wins. The temporary nodes the
    export makes are removed. Raises InputError for an empty segmentation or one outside the CT."""
    ids = segment_ids(segmentation_node)
    name = segmentation_node.GetName()
    if not ids:
        raise InputError(f"{name}: the segmentation has no segments; add bone segments or choose other labels")
    ct = volume_from_node(ct_node)
    exported = vtk.vtkStringArray()
    for sid in ids:
        exported.InsertNextValue(sid)
    with node_transaction(scene, keep=False):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__xrayseg_export__")
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, exported, labelmap, ct_node):
            raise InputError(f"{name}: could not export its segments onto the CT grid")
        image = labelmap.GetImageData()
        array = None if image is None else np.array(_image_array(image))
    if array is None or array.shape != ct.array.shape:
        raise InputError(f"{name}: exporting the segments onto the CT grid gave no image of the CT's size")
    if not array.any():
        bounds = [0.0] * 6
        segmentation_node.GetRASBounds(bounds)
        if not np.all(np.isfinite(bounds)) or bounds[0] > bounds[1]:
            raise InputError(f"{name}: every segment is empty; paint or import bone segments first")
        ct_corners = ct.corners_ras()
        ct_bounds = [v for axis in range(3) for v in (ct_corners[:, axis].min(), ct_corners[:, axis].max())]
        raise InputError(
            f"{name}: its segments ({_bounds_text(bounds)}) do not overlap the CT '{ct.name}' "
            f"({_bounds_text(ct_bounds)}); check the segmentation belongs to this CT and their transforms")
    return Volume(array, ct.ijk_to_ras, name), classes_from_segmentation(segmentation_node)


def labels_from_node(scene, labels_node, ct_node, classes: LabelClasses | None = None
                     ) -> tuple[Volume | None, LabelClasses | None]:
    """Labels for the projector from a segmentation node or a label map volume node (or None: no labels).

    A segmentation gives one class per segment (names, colours). A label map must lie on the CT grid (same
    size and world IJK->RAS); its classes come from ``classes`` if given (e.g. TotalSegmentator bones),
    else from its colour table."""
    if labels_node is None:
        return None, None
    if labels_node.IsA("vtkMRMLSegmentationNode"):
        return labels_from_segmentation(scene, labels_node, ct_node)
    if not labels_node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"{labels_node.GetName()}: labels must be a segmentation or a label map volume, not "
                         f"a {labels_node.GetClassName()}")
    labels = volume_from_node(labels_node, role="label map")
    if classes is None:
        classes = classes_for_labelmap(labels_node, np.unique(labels.array))
    return labels, classes


# ---- isocentre ----------------------------------------------------------------------------------------------


def markup_point_ras(markup_node, index: int = 0) -> np.ndarray:
    """World RAS of a markup's control point (parent transforms applied)."""
    if markup_node is None or not markup_node.IsA("vtkMRMLMarkupsNode"):
        raise InputError("choose a markup point list for the isocentre")
    if markup_node.GetNumberOfControlPoints() <= index:
        raise InputError(f"{markup_node.GetName()}: has no control point {index + 1}; place a point first")
    position = [0.0, 0.0, 0.0]
    markup_node.GetNthControlPointPositionWorld(index, position)
    return np.array(position)


def segment_names(labels_node) -> list[str]:
    """Names a user can pick a segment by: the segments of a segmentation, or the classes of a label map
    that has voxels (see :func:`classes_for_labelmap`)."""
    if labels_node is None:
        return []
    if labels_node.IsA("vtkMRMLSegmentationNode"):
        segmentation = labels_node.GetSegmentation()
        return [segmentation.GetSegment(sid).GetName() for sid in segment_ids(labels_node)]
    image = labels_node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        return []
    return classes_for_labelmap(labels_node, np.unique(_image_array(image))).names


def _segment_mask_world(segmentation_node, segment_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(mask[k, j, i], IJK->world 4x4) of a segment's binary labelmap, parent transforms applied."""
    binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    segmentation = segmentation_node.GetSegmentation()
    if not segmentation.ContainsRepresentation(binary):
        segmentation_node.CreateBinaryLabelmapRepresentation()
    segment = segmentation.GetSegment(segment_id)
    image = segment.GetRepresentation(binary)
    if image is None or image.GetPointData().GetScalars() is None:
        return np.zeros((0, 0, 0), bool), np.eye(4)
    extent = image.GetExtent()
    dims = [extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3)]
    if min(dims) < 1:
        return np.zeros((0, 0, 0), bool), np.eye(4)
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    shift = np.eye(4)
    shift[:3, 3] = extent[0::2]  # array index 0 is IJK extent start
    return array == segment.GetLabelValue(), world_matrix(segmentation_node) @ array_from_vtk_matrix(matrix) @ shift


def segment_center_ras(labels_node, segment: str | int) -> np.ndarray:
    """World RAS centroid of a segment's voxels: a segmentation's segment (by ID or name), or a label map's
    class (by name, or label value)."""
    if labels_node is None:
        raise InputError("choose bone labels (a segmentation or a label map) to aim at one of their segments")
    name = labels_node.GetName()
    if labels_node.IsA("vtkMRMLSegmentationNode"):
        segmentation = labels_node.GetSegmentation()
        ids = segment_ids(labels_node)
        by_name: dict[str, str] = {}
        for sid in ids:  # the first segment of a name wins
            by_name.setdefault(segmentation.GetSegment(sid).GetName(), sid)
        sid = str(segment) if str(segment) in ids else by_name.get(str(segment))
        if sid is None:
            raise InputError(f"{name}: has no segment '{segment}'; choose one of: {', '.join(by_name) or 'none'}")
        mask, ijk_to_world = _segment_mask_world(labels_node, sid)
        label = segmentation.GetSegment(sid).GetName()
        if not mask.any():
            raise InputError(f"{name}: the segment '{label}' is empty; choose a segment with voxels")
        return Volume(mask, ijk_to_world, label).centroid_ras(mask)
    labels = volume_from_node(labels_node, role="label map")
    classes = classes_for_labelmap(labels_node, np.unique(labels.array))
    chosen = [c for c in classes.classes if c.name == str(segment) or str(segment) in {str(v) for v in c.values}]
    if not chosen:
        raise InputError(f"{name}: has no label '{segment}'; choose one of: {', '.join(classes.names) or 'none'}")
    return labels.centroid_ras(np.isin(labels.array, chosen[0].values))


def isocenter_ras(mode: str, ct_node, markup=None, labels_node=None, segment: str | int | None = None
                  ) -> np.ndarray:
    """The point the view is aimed at (world RAS): ``mode`` is one of :data:`ISOCENTER_MODES` -- the CT
    centre, the first control point of ``markup``, or the centroid of ``segment`` of ``labels_node``."""
    if mode == "Markup point":
        return markup_point_ras(markup)
    if mode == "Segment centre":
        if segment is None or str(segment) == "":
            raise InputError("choose the segment to aim the view at")
        return segment_center_ras(labels_node, segment)
    if mode != "CT centre":
        raise InputError(f"unknown isocentre placement '{mode}'; choose one of: {', '.join(ISOCENTER_MODES)}")
    return volume_from_node(ct_node).center_ras


# ---- the X-ray set-up in the scene --------------------------------------------------------------------------


def frustum_polydata(geometry: XrayGeometry) -> vtk.vtkPolyData:
    """Lines from the source to the 4 detector corners, and the detector outline."""
    points = vtk.vtkPoints()
    for p in [geometry.source, *geometry.corners_ras()]:
        points.InsertNextPoint(*p)
    lines = vtk.vtkCellArray()
    for corner in range(1, 5):
        lines.InsertNextCell(2, [0, corner])
    lines.InsertNextCell(5, [1, 2, 3, 4, 1])
    poly = vtk.vtkPolyData()
    poly.SetPoints(points)
    poly.SetLines(lines)
    return poly


def labels_3d_polydata(result: DrrResult, offset_mm: float = LABELS_3D_OFFSET_MM) -> vtk.vtkPolyData:
    """One quad per labelled detector pixel, with cell data ``colors`` (RGB uint8 of the pixel's class),
    ``offset_mm`` from the detector towards the source."""
    geometry = result.geometry
    label_image = result.label_image() if len(result.classes) else np.zeros(geometry.size[::-1], np.uint8)
    j, i = np.nonzero(label_image)
    du, dv = 0.5 * geometry.spacing[0] * geometry.column_axis, 0.5 * geometry.spacing[1] * geometry.row_axis
    centres = geometry.pixel_to_ras(i, j) - offset_mm * geometry.principal_direction
    corners = np.stack([centres - du - dv, centres + du - dv, centres + du + dv, centres - du + dv], 1)
    points = vtk.vtkPoints()
    points.SetData(numpy_support.numpy_to_vtk(corners.reshape(-1, 3).astype(np.float64), deep=True))
    cells = vtk.vtkCellArray()
    cells.SetData(numpy_support.numpy_to_vtkIdTypeArray(np.arange(0, 4 * len(i) + 1, 4, dtype=np.int64), deep=True),
                  numpy_support.numpy_to_vtkIdTypeArray(np.arange(4 * len(i), dtype=np.int64), deep=True))
    palette = np.array([(0.0, 0.0, 0.0)] + [c.color for c in result.classes.classes]) * 255
    colors = numpy_support.numpy_to_vtk(np.round(palette[label_image[j, i]]).astype(np.uint8), deep=True,
                                        array_type=vtk.VTK_UNSIGNED_CHAR)
    colors.SetName("colors")
    poly = vtk.vtkPolyData()
    poly.SetPoints(points)
    poly.SetPolys(cells)
    poly.GetCellData().AddArray(colors)
    poly.GetCellData().SetActiveScalars("colors")
    return poly


def radiograph_window(line_integral: np.ndarray) -> tuple[float, float]:
    """Display range of a DRR (dense = bright): ``overlay.display_range``, or 0..1 for an empty image."""
    from .overlay import display_range

    return display_range(line_integral) or (0.0, 1.0)


def slice_to_ras_for_detector(geometry: XrayGeometry) -> np.ndarray:
    """SliceToRAS that shows the detector as the image is read: screen right = column axis, screen down = row
    axis, centred on the detector."""
    x, y = geometry.column_axis, -geometry.row_axis
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, np.cross(x, y), geometry.detector_center
    return m


class XraySimScene:
    """One X-ray set-up in an MRML scene: pose transform, source and detector markups, beam model, and the
    DRR / projected-label output nodes (created on first use, found again by their role attribute)."""

    def __init__(self, scene, name: str = "X-ray") -> None:
        self.scene = scene
        self.name = name
        self.last_result: DrrResult | None = None
        self.last_radiograph: np.ndarray | None = None  # the realistic image of the last render, if physics
        self._projector: DrrProjector | None = None
        self._projector_key: tuple | None = None
        self._placing = False  # set_geometry is moving the markups: not a user's drag

    # ---- nodes ----
    def node(self, role: str):
        """The node with this role, or None."""
        for node in _nodes(self.scene, NODE_CLASSES[role]):
            if node.GetAttribute(ROLE_ATTRIBUTE) == role and node.GetAttribute(RIG_ATTRIBUTE) == self.name:
                return node
        return None

    def _new_node(self, role: str):
        node = self.scene.AddNewNodeByClass(NODE_CLASSES[role], self.scene.GenerateUniqueName(NODE_NAMES[role]))
        node.SetAttribute(ROLE_ATTRIBUTE, role)
        node.SetAttribute(RIG_ATTRIBUTE, self.name)
        return node

    def _rig_nodes(self):
        """(pose, source, detector, frustum), created the first time."""
        pose = self.node("pose")
        if pose is None:
            pose = self._new_node("pose")
            pose.CreateDefaultDisplayNodes()
            pose.GetDisplayNode().SetEditorVisibility(True)  # drag handles in the 3D view
        source = self.node("source")
        if source is None:
            source = self._new_node("source")
            source.CreateDefaultDisplayNodes()
            source.AddControlPoint(vtk.vtkVector3d(0, 0, 0), "source")
        detector = self.node("detector")
        if detector is None:
            detector = self._new_node("detector")
            detector.CreateDefaultDisplayNodes()
            detector.SetSizeMode(slicer.vtkMRMLMarkupsPlaneNode.SizeModeAbsolute)
            detector.GetDisplayNode().SetFillVisibility(False)  # outline only: the DRR slice lies on it
            detector.GetDisplayNode().SetPropertiesLabelVisibility(False)  # no name text across the image
        frustum = self.node("frustum")
        if frustum is None:
            frustum = self._new_node("frustum")
            frustum.CreateDefaultDisplayNodes()
            frustum.GetDisplayNode().SetColor(*BEAM_COLOR)
            frustum.GetDisplayNode().SetLineWidth(2)
        for node in (source, detector, frustum):
            node.GetDisplayNode().SetVisibility2D(False)  # the slice view on the detector shows the image
            if node.GetTransformNodeID() != pose.GetID():
                node.SetAndObserveTransformNodeID(pose.GetID())
        return pose, source, detector, frustum

    # ---- geometry ----
    def set_geometry(self, geometry: XrayGeometry, keep_pose: bool = False) -> None:
        """Place the set-up. ``geometry`` becomes the base (untransformed) set-up; the pose is reset to identity
        unless ``keep_pose`` (then the scene shows ``geometry.transformed(pose)``, e.g. a slider change
        on top of a dragged C-arm)."""
        with node_transaction(self.scene), self._placing_markups():
            pose, source, detector, frustum = self._rig_nodes()
            pose.SetAttribute(BASE_GEOMETRY_ATTRIBUTE, json.dumps(geometry.to_dict()))
            if not keep_pose:
                pose.SetMatrixTransformToParent(vtk.vtkMatrix4x4())
            if geometry.isocenter is not None:
                pose.SetCenterOfTransformation(*geometry.isocenter)
            source.SetNthControlPointPosition(0, *geometry.source)
            was_modifying = detector.StartModify()
            detector.SetCenter(*geometry.detector_center)
            detector.SetAxes(geometry.column_axis, geometry.row_axis, geometry.normal)
            detector.SetSize(*geometry.detector_size_mm)
            detector.EndModify(was_modifying)
            frustum.SetAndObservePolyData(frustum_polydata(geometry))

    def has_geometry(self) -> bool:
        pose = self.node("pose")
        return pose is not None and bool(pose.GetAttribute(BASE_GEOMETRY_ATTRIBUTE))

    def base_geometry(self) -> XrayGeometry:
        """The set-up in the pose transform's own frame, as the markups now hold it (pixel count and
        isocentre from the last :meth:`set_geometry`)."""
        if not self.has_geometry():
            raise InputError("no X-ray set-up yet: choose a view preset or import a geometry first")
        pose, source, detector = self.node("pose"), self.node("source"), self.node("detector")
        if source is None or detector is None or source.GetNumberOfControlPoints() < 1:
            raise InputError("the X-ray source or detector markup was deleted: choose a view preset again")
        stored = XrayGeometry.from_dict(json.loads(pose.GetAttribute(BASE_GEOMETRY_ATTRIBUTE)))
        x, y, z = [0.0] * 3, [0.0] * 3, [0.0] * 3
        detector.GetAxes(x, y, z)
        width, height = detector.GetSize()
        cols, rows = stored.size
        return dataclasses.replace(
            stored, source=np.array(source.GetNthControlPointPosition(0)),
            detector_center=np.array(detector.GetCenter()), column_axis=np.array(x), row_axis=np.array(y),
            spacing=(width / cols, height / rows))

    def pose_matrix(self) -> np.ndarray:
        """4x4 pose of the set-up (the transform node to world)."""
        pose = self.node("pose")
        if pose is None:
            return np.eye(4)
        matrix = vtk.vtkMatrix4x4()
        pose.GetMatrixTransformToWorld(matrix)
        return array_from_vtk_matrix(matrix)

    def set_pose_matrix(self, matrix: np.ndarray) -> None:
        """Move the set-up as a drag in the 3D view does (matrix relative to the base set-up)."""
        self._rig_nodes()[0].SetMatrixTransformToParent(vtk_matrix_from_array(matrix))

    def geometry(self) -> XrayGeometry:
        """The current set-up in world RAS: the base set-up moved by the pose."""
        return self.base_geometry().transformed(self.pose_matrix())

    def update_frustum(self) -> None:
        """Redraw the beam after the source point or detector plane were moved on their own."""
        self._rig_nodes()[3].SetAndObservePolyData(frustum_polydata(self.base_geometry()))

    @contextlib.contextmanager
    def _placing_markups(self) -> Iterator[None]:
        was, self._placing = self._placing, True
        try:
            yield
        finally:
            self._placing = was

    def observe_rig(self, on_moved: Callable[[bool], None]) -> list[tuple[Any, int]]:
        """Watch the source and detector markups for a user dragging them on their own: each move redraws the
        beam and calls ``on_moved(False)``; the end of a drag calls ``on_moved(True)``. Moves made by
        :meth:`set_geometry` are not reported. Returns (node, observer tag) pairs for
        :meth:`unobserve_rig`."""
        def handler(final: bool):
            def callback(caller, event):
                if self._placing:
                    return
                try:
                    self.update_frustum()
                except (InputError, GeometryError):
                    pass  # an impossible set-up mid-drag: the render reports it
                on_moved(final)
            return callback
        tags = []
        for node in self._rig_nodes()[1:3]:
            for event, final in ((slicer.vtkMRMLMarkupsNode.PointModifiedEvent, False),
                                 (slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, True)):
                tags.append((node, node.AddObserver(event, handler(final))))
        return tags

    @staticmethod
    def unobserve_rig(tags: list[tuple[Any, int]]) -> None:
        for node, tag in tags:
            node.RemoveObserver(tag)

    # ---- rendering ----
    def projector(self, ct_node, labels_node=None, classes: LabelClasses | None = None,
                  threads: int | None = None, materials: bool = False) -> DrrProjector:
        """A projector for these inputs, rebuilt only when a node, its voxels or its transform changed, or
        when ``materials`` (integrate the material line integrals for the realistic physics) changes."""
        def stamp(node):
            if node is None:
                return None
            if node.IsA("vtkMRMLSegmentationNode"):
                segmentation = node.GetSegmentation()
                binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
                segments = [segmentation.GetSegment(sid) for sid in segment_ids(node)]
                representations = [s.GetRepresentation(binary) for s in segments]
                content = max([segmentation.GetMTime()] + [s.GetMTime() for s in segments]
                              + [r.GetMTime() for r in representations if r is not None])
            else:
                image = node.GetImageData()
                content = image.GetMTime() if image is not None else 0
            parent = node.GetParentTransformNode()
            return (node.GetID(), node.GetMTime(), content, parent.GetTransformToWorldMTime() if parent else 0)
        key = (stamp(ct_node), stamp(labels_node), classes, threads, bool(materials))
        if self._projector is None or key != self._projector_key:
            from .materials import MaterialModel

            ct = volume_from_node(ct_node)
            labels, label_classes = labels_from_node(self.scene, labels_node, ct_node, classes)
            self._projector = DrrProjector(ct, labels, label_classes, threads=threads,
                                           materials=MaterialModel() if materials else None)
            self._projector_key = key
        return self._projector

    def render(self, ct_node, labels_node=None, size: int | tuple[int, int] | None = None,
               classes: LabelClasses | None = None, threads: int | None = None,
               geometry: XrayGeometry | None = None, physics: str | None = None, seed: int = 0) -> DrrResult:
        """Render the current set-up (or ``geometry``) and show it in the output nodes.

        ``size`` renders the same detector with other pixels (a preview while dragging): (columns, rows), or
        an int for the longer side, square pixels kept. ``physics``: a preset name of ``physics.PRESETS``
        (see :func:`physics_preset_for`) -- the projector then integrates the materials too, and the DRR node
        shows ``physics.simulate_radiograph(result, physics, rng=seed).image`` (float32 in [0, 1],
        MONOCHROME2, window 0..1; also kept in ``last_radiograph``) instead of the line integral. Nothing is
        created or changed in the scene when the inputs or the set-up are refused (InputError /
        GeometryError)."""
        geometry = self.geometry() if geometry is None else geometry
        if size is not None:
            geometry = geometry.with_size(size)
        result = self.projector(ct_node, labels_node, classes, threads, materials=physics is not None).render(geometry)
        image = None
        if physics is not None:
            from . import physics as physics_module

            image = physics_module.simulate_radiograph(result, physics, rng=int(seed)).image.astype(np.float32)
        terminology = terminology_for_classes(labels_node, result.classes)
        with node_transaction(self.scene):
            self._show_drr(result, image)
            self._show_labels(result, terminology)
            self._show_labels_3d(result)
        self.last_result = result
        self.last_radiograph = image
        return result

    def _show_drr(self, result: DrrResult, radiograph: np.ndarray | None = None):
        node = self.node("drr")
        if node is None:
            node = self._new_node("drr")
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
            display.AutoWindowLevelOff()
        was_modifying = node.StartModify()
        shown = result.line_integral if radiograph is None else radiograph
        node.SetAndObserveImageData(_image_data(shown[None].astype(np.float32), vtk.VTK_FLOAT))
        node.SetIJKToRASMatrix(vtk_matrix_from_array(result.geometry.detector_ijk_to_ras()))
        node.GetDisplayNode().SetWindowLevelMinMax(
            *(radiograph_window(result.line_integral) if radiograph is None else (0.0, 1.0)))
        node.SetAttribute(QUANTITY_ATTRIBUTE, "line integral" if radiograph is None else
                          "radiograph in [0, 1], MONOCHROME2")
        node.EndModify(was_modifying)
        return node

    def _show_labels(self, result: DrrResult, terminology: Sequence[str | None] = ()):
        node = self.node("labels")
        if not len(result.classes):
            if node is not None:
                node.GetSegmentation().RemoveAllSegments()
            return node
        if node is None:
            node = self._new_node("labels")
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            display.SetOpacity2DFill(0.35)
            display.SetVisibility3D(False)  # it is flat: the 3D view shows the DRR on the detector instead
        segmentation = node.GetSegmentation()
        was_modifying = node.StartModify()
        segmentation.RemoveAllSegments()
        node.SetReferenceImageGeometryParameterFromVolumeNode(self.node("drr"))
        image_to_world = vtk_matrix_from_array(result.geometry.detector_ijk_to_ras())
        tags = list(terminology) + [None] * (len(result.classes) - len(terminology))
        for mask, cls, tag in zip(result.masks(), result.classes.classes, tags):
            labelmap = slicer.vtkOrientedImageData()
            labelmap.ShallowCopy(_image_data(mask[None].astype(np.uint8), vtk.VTK_UNSIGNED_CHAR))
            labelmap.SetImageToWorldMatrix(image_to_world)
            segment = slicer.vtkSegment()
            segment.SetName(cls.name)
            segment.SetColor(*cls.color)
            if tag:
                segment.SetTerminology(tag)
            # Each segment keeps its own labelmap (its own layer), so overlapping classes stay overlapping.
            segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(),
                                      labelmap)
            segmentation.AddSegment(segment, segmentation.GenerateUniqueSegmentID(cls.name))
        node.EndModify(was_modifying)
        return node

    def _show_labels_3d(self, result: DrrResult):
        """The projected labels in 3D: a quad per labelled pixel in its class colour (longest path),
        LABELS_3D_OFFSET_MM in front of the detector, so the labels show on the detector in the 3D view."""
        node = self.node("labels3d")
        if node is None:
            node = self._new_node("labels3d")
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            display.SetVisibility2D(False)
            display.SetScalarVisibility(True)
            display.SetActiveScalar("colors", vtk.vtkAssignAttribute.CELL_DATA)
            display.SetScalarRangeFlag(slicer.vtkMRMLDisplayNode.UseDirectMapping)
            display.SetOpacity(LABELS_3D_OPACITY)
            display.SetAmbient(1.0)
            display.SetDiffuse(0.0)
            display.SetSpecular(0.0)
            display.SetBackfaceCulling(False)
        node.SetAndObservePolyData(labels_3d_polydata(result))
        return node

    # ---- display ----
    def show_in_slice_view(self, slice_node, composite_node) -> None:
        """Turn a slice view onto the detector (read as a radiograph), DRR as background, labels overlaid."""
        drr = self.node("drr")
        if drr is None or self.last_result is None:
            raise InputError("render a DRR first")
        geometry = self.last_result.geometry
        slice_node.GetSliceToRAS().DeepCopy(vtk_matrix_from_array(slice_to_ras_for_detector(geometry)))
        width, height = geometry.detector_size_mm
        view_w, view_h = slice_node.GetDimensions()[:2]
        scale = max(width / max(view_w, 1), height / max(view_h, 1))  # fit the whole detector, keep aspect
        slice_node.SetFieldOfView(scale * view_w, scale * view_h, 1.0)
        slice_node.UpdateMatrices()
        composite_node.SetBackgroundVolumeID(drr.GetID())
        composite_node.SetForegroundVolumeID(None)
        composite_node.SetLabelVolumeID(None)
        labels = self.node("labels")
        if labels is not None:
            labels.GetDisplayNode().SetVisibility2D(True)

    # ---- files ----
    def export(self, out_dir: str | Path, ct_node=None, labels_node=None, **render_options) -> dict[str, Path]:
        """Write the current view (DRR, labels, geometry sidecar) with ``io.write_render_outputs``. With
        ``ct_node`` it renders at full resolution first; else it writes the last render."""
        from .io import write_render_outputs

        if ct_node is not None:
            self.render(ct_node, labels_node, **render_options)
        if self.last_result is None:
            raise InputError("nothing rendered yet: render a DRR before exporting")
        sidecar = {"slicer": {"pose_matrix": self.pose_matrix().tolist(),
                              "base_geometry": self.base_geometry().to_dict() if self.has_geometry() else None}}
        return write_render_outputs(self.last_result, out_dir, sidecar)

    def save_geometry(self, path: str | Path) -> Path:
        """The current (world) set-up as JSON (``XrayGeometry.to_dict``, ``P`` included), or as a 3x4 ``P``
        text file when ``path`` ends in ``.txt``."""
        path = Path(path)
        geometry = self.geometry()
        if path.suffix == ".txt":
            np.savetxt(path, geometry.projection_matrix(), header=(
                f"3x4 P, RAS mm -> pixel (i, j); detector {geometry.size[0]}x{geometry.size[1]} px, "
                f"spacing {geometry.spacing[0]:.6g} {geometry.spacing[1]:.6g} mm"))
        else:
            path.write_text(geometry.to_json())
        return path

    def load_geometry(self, path: str | Path, size: tuple[int, int] | None = None,
                      spacing: tuple[float, float] | None = None,
                      in_front: Sequence[float] | None = None) -> XrayGeometry:
        """Read a set-up saved by :meth:`save_geometry` (JSON, or a ``P`` text file with ``size`` and
        ``spacing``; ``in_front`` e.g. the CT centre fixes P's sign) and place it, pose reset."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"geometry file not found: {path}")
        if path.suffix == ".txt":
            if size is None or spacing is None:
                raise InputError("a projection matrix needs the detector size (pixels) and pixel spacing (mm)")
            geometry = XrayGeometry.from_projection_matrix(np.loadtxt(path), size, spacing, in_front)
        else:
            data: dict[str, Any] = json.loads(path.read_text())
            geometry = XrayGeometry.from_dict(data.get("geometry", data))  # a drr.json sidecar works too
        self.set_geometry(geometry)
        return geometry


# ---- realistic physics and batch export from the scene ------------------------------------------------------

def physics_preset_names() -> tuple[str, ...]:
    from . import physics

    return tuple(physics.PRESETS)


def physics_preset_for(view: str, choice: str | None) -> str | None:
    """The ``physics.PRESETS`` name for a preview or an export: ``"none"`` (or None) gives None, ``"auto"``
    the view's own preset (as ``xrayseg export --physics auto``: chest-lateral/chest-ap use chest-pa,
    lumbar-ap/carm-ap use pelvis-ap), a preset name itself. Raises InputError for an unknown name."""
    from .export import ExportConfig

    return ExportConfig(out="", view=view, physics=choice or "none").physics_preset()


def _write_volume_nrrd(path: Path, volume: Volume) -> None:
    """A 3D NRRD (LPS, as Slicer and SimpleITK write it) of a Volume [k, j, i], written atomically."""
    import nrrd

    from .io import RAS_TO_LPS, atomic_path

    matrix = np.asarray(volume.ijk_to_ras, float)
    header = {"space": "left-posterior-superior", "kinds": ["domain"] * 3, "encoding": "raw",
              "space directions": (RAS_TO_LPS @ matrix[:3, :3]).T, "space origin": RAS_TO_LPS @ matrix[:3, 3]}
    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), np.ascontiguousarray(volume.array), header, index_order="C")


def _fingerprint(ct: Volume, labels: Volume, classes: LabelClasses) -> str:
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for volume in (ct, labels):
        digest.update(str((volume.array.shape, volume.array.dtype.str)).encode())
        digest.update(np.ascontiguousarray(volume.ijk_to_ras, np.float64).tobytes())
        digest.update(np.ascontiguousarray(volume.array).data)
    digest.update(json.dumps([[c.name, list(c.values)] for c in classes.classes]).encode())
    return digest.hexdigest()


def _unique_names(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        n = seen.get(name, 0) + 1
        seen[name] = n
        out.append(name if n == 1 else f"{name}_{n}")
    return out


def export_training_set(scene, ct_node, labels_node, out: str | Path, view: str = "chest-pa",
                        views_per_ct: int = 10, size: int = 512, physics: str = "auto", seed: int = 0,
                        test_fraction: float = 0.2, workers: int = 1, resume: bool = False,
                        progress: Callable[[int, int, str], None] | None = None,
                        cancel: Callable[[], bool] | None = None, dataset_id: int = 501,
                        dataset_name: str = "XraySeg", keep_inputs: bool = False):
    """Batch-export randomised views of the scene's CT with its labels (``export.run_export``, nnU-Net v2
    layout under ``<out>/Dataset<ID>_<Name>``); returns its ``ExportReport``.

    The CT and its labels are converted as :meth:`XraySimScene.render` converts them (world RAS, parent
    transforms applied; a segmentation's segments or a label map's classes, with names and colours), then
    written atomically as NRRD (+ a names table) into the dataset's ``.work/scene_inputs/``, since the exporter
    reads its cases from files (its worker processes get paths, not arrays). The classes of the dataset are
    the input's segments (label maps: its classes), in order. ``progress(done, total, message)`` and
    ``cancel()`` are passed on: a cancelled export stops after the sample in flight and stays resumable
    (``resume=True`` with the same options and inputs; other inputs are refused). On a complete export the
    NRRD copies are removed unless ``keep_inputs``.

    Refused (InputError, nothing written): no CT, no output folder, no labels or no label classes, an unknown
    view or physics preset, fewer than 1 view or 8 pixels, an existing export in the folder without
    ``resume``."""
    import shutil

    from . import views as views_module
    from .export import ExportConfig, run_export
    from .export_inputs import CaseInput, ClassMapping, sanitize_id
    from .export_layout import DatasetLayout

    if ct_node is None:
        raise InputError("choose a CT volume to export from")
    if out is None or str(out).strip() in ("", "."):
        raise InputError("choose an output folder for the training set")
    if view not in views_module.PRESETS:
        raise InputError(f"unknown view '{view}'; choose one of: {', '.join(views_module.PRESET_NAMES)}")
    if int(views_per_ct) < 1 or int(size) < 8:
        raise InputError("the export needs at least 1 view per CT and at least 8 pixels")
    if not 0.0 <= float(test_fraction) <= 1.0:
        raise InputError(f"the test fraction must be in [0, 1], got {test_fraction}")
    physics_preset_for(view, physics)  # validates the physics choice
    if labels_node is None:
        raise InputError("choose the bone labels (a segmentation or a label map): a training set needs labels")
    ct = volume_from_node(ct_node)
    labels, classes = labels_from_node(scene, labels_node, ct_node)
    if labels is None or classes is None or not len(classes):
        raise InputError(f"{labels_node.GetName()}: holds no label classes to export")
    # Class i (in the input's order) becomes label value i + 1; values of no class (e.g. the organs of a
    # TotalSegmentator label map) become 0, so the exporter sees exactly the classes the preview shows.
    names = _unique_names(classes.names)
    lut = np.zeros(max(max(c.values) for c in classes.classes) + 1, np.uint16 if len(names) > 255 else np.uint8)
    for index, cls in enumerate(classes.classes, start=1):
        lut[list(cls.values)] = index
    raw = np.asarray(labels.array)
    compact = lut[np.clip(raw, 0, len(lut) - 1)] * (raw < len(lut))
    labels = Volume(compact.astype(lut.dtype, copy=False), labels.ijk_to_ras, labels.name)
    mapping = ClassMapping(tuple(names), tuple((i,) for i in range(1, len(names) + 1)),
                           tuple(tuple(float(x) for x in c.color) for c in classes.classes),
                           default_names={i: n for i, n in enumerate(names, start=1)},
                           spec={"slicer_scene": {"labels": labels_node.GetName(), "classes": names}})
    config = ExportConfig(out=str(out), dataset_id=int(dataset_id), dataset_name=dataset_name, view=view,
                          views_per_ct=int(views_per_ct), size=int(size), physics=physics, seed=int(seed),
                          test_fraction=float(test_fraction))
    layout = DatasetLayout.create(out, config.dataset_id, config.dataset_name)
    if layout.config.is_file() and not resume:
        raise InputError(f"{layout.root} already holds an export: tick 'Resume' to continue it, or choose another "
                         "output folder")
    created = not layout.root.exists()
    folder = layout.root / ".work" / "scene_inputs"
    record = layout.root / ".work" / "scene_inputs.json"
    fingerprint = _fingerprint(ct, labels, classes)
    if record.is_file():
        previous = json.loads(record.read_text()).get("fingerprint")
        if previous != fingerprint:
            raise InputError(f"{layout.root} holds an export of other inputs (CT, labels or classes changed): "
                             "choose another output folder")
    paths = {"ct": folder / "ct.nrrd", "labels": folder / "labels.nrrd", "names": folder / "names.csv"}
    try:
        if not (record.is_file() and all(p.is_file() for p in paths.values())):
            from .io import atomic_path, write_json

            _write_volume_nrrd(paths["ct"], ct)
            _write_volume_nrrd(paths["labels"], labels)
            with atomic_path(paths["names"]) as tmp:
                with open(tmp, "w", newline="") as handle:
                    writer = csv.writer(handle)
                    writer.writerow(["value", "name"])
                    for index, name in enumerate(names, start=1):
                        writer.writerow([index, name])
            write_json(record, {"fingerprint": fingerprint, "ct_node": ct_node.GetName(),
                                "labels_node": labels_node.GetName(), "classes": names})
        case = CaseInput(sanitize_id(ct_node.GetName() or "ct"), str(paths["ct"]), str(paths["labels"]),
                         str(paths["names"]))
        report = run_export([case], config, mapping, workers=max(1, int(workers)), resume=resume,
                            progress=progress, cancel=cancel)
    except InputError:
        if created and not layout.config.is_file():  # refused before anything was exported: leave nothing
            shutil.rmtree(layout.root, ignore_errors=True)
        raise
    if not keep_inputs and not report.cancelled and report.n_ok == len(report.samples) == config.views_per_ct:
        for path in paths.values():
            path.unlink(missing_ok=True)
    return report
