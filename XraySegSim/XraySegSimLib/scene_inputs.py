"""Layer 2, inputs from the scene: the CT and its bone labels (segmentation or label map) as the projector takes
them, with names, colours and terminology, and the isocentre (CT centre, markup point, segment centre).

Label maps whose colour table is one of Slicer's defaults are read as TotalSegmentator v1 label maps: names,
colours and SNOMED CT terminology of the bones come from ``Resources/ColorTables/TotalSegmentatorV1Bones.csv``
(a Slicer colour table file); other values are ignored. A label map with its own colour table keeps it.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
from pathlib import Path
from typing import Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .errors import InputError
from .labels import LabelClass, LabelClasses
from .scene_nodes import _image_array, array_from_vtk_matrix, node_transaction, world_matrix
from .scene_rig import ROLE_ATTRIBUTE
from .volume import Volume

ISOCENTER_MODES = ("CT centre", "Markup point", "Segment centre")
RESOURCES = Path(__file__).resolve().parents[1] / "Resources"
TOTALSEGMENTATOR_TABLE = RESOURCES / "ColorTables" / "TotalSegmentatorV1Bones.csv"
TERMINOLOGY_TAG = "TerminologyEntry"
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


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
    if markup_node.GetAttribute(ROLE_ATTRIBUTE):
        # Aiming at the rig's own source point would move that point, which re-aims the view, and so on.
        raise InputError(f"{markup_node.GetName()} is part of the X-ray set-up; choose a point list of your own for "
                         "the isocentre (Markups module: add a point list and place a point)")
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


def _content_stamp(labels_node) -> tuple | None:
    """Changes whenever what :func:`segment_names` reads changes: the node, its segments or voxels, its colours."""
    if labels_node is None:
        return None
    if labels_node.IsA("vtkMRMLSegmentationNode"):
        segmentation = labels_node.GetSegmentation()
        segments = [segmentation.GetSegment(sid) for sid in segment_ids(labels_node)]
        return (labels_node.GetID(), segmentation.GetMTime(), tuple(s.GetMTime() for s in segments))
    image, color = labels_node.GetImageData(), _color_node_of(labels_node)
    return (labels_node.GetID(), image.GetMTime() if image is not None else 0,
            (color.GetID(), color.GetMTime()) if color is not None else None)


class SegmentNameCache:
    """:func:`segment_names`, scanned again only when the labels change: a label map's scan is a ``np.unique``
    over the whole volume (0.4 s at 512x512x400), too slow for every slider tick of the live preview."""

    def __init__(self) -> None:
        self._stamp: tuple | None = None
        self._names: list[str] = []

    def names(self, labels_node) -> list[str]:
        stamp = _content_stamp(labels_node)
        if stamp is None:
            return []
        if stamp != self._stamp:
            self._names, self._stamp = segment_names(labels_node), stamp
        return self._names


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
