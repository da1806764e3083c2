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
  segment (and one layer, so overlaps survive) per class, with the input's names and colours.

Rendering::

    sim = XraySimScene(scene)
    sim.set_geometry(views.from_preset("chest-pa", volume_from_node(ct_node).center_ras, size=512))
    result = sim.render(ct_node, seg_node)            # DrrResult; creates or updates the drr/labels nodes
    result = sim.render(ct_node, seg_node, size=128)  # preview while dragging (same detector, fewer pixels)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .errors import InputError
from .geometry import XrayGeometry
from .labels import LabelClass, LabelClasses
from .projector import DrrProjector, DrrResult
from .volume import Volume

ROLE_ATTRIBUTE = "XraySegSim.Role"
RIG_ATTRIBUTE = "XraySegSim.Rig"
BASE_GEOMETRY_ATTRIBUTE = "XraySegSim.BaseGeometry"
ROLES = ("pose", "source", "detector", "frustum", "drr", "labels")
NODE_CLASSES = {"pose": "vtkMRMLLinearTransformNode", "source": "vtkMRMLMarkupsFiducialNode",
                "detector": "vtkMRMLMarkupsPlaneNode", "frustum": "vtkMRMLModelNode",
                "drr": "vtkMRMLScalarVolumeNode", "labels": "vtkMRMLSegmentationNode"}
NODE_NAMES = {"pose": "X-ray pose", "source": "X-ray source", "detector": "X-ray detector",
              "frustum": "X-ray beam", "drr": "X-ray DRR", "labels": "X-ray labels"}
BEAM_COLOR = (1.0, 0.85, 0.2)


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
        display = labels_node.GetDisplayNode()
        color_node = display.GetColorNode() if display is not None else None
        classes = classes_from_color_node(color_node, np.unique(labels.array))
    return labels, classes


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


def radiograph_window(line_integral: np.ndarray) -> tuple[float, float]:
    """Display range of a DRR (dense = bright): 0.5..99.5 percentiles of the rays that cross the body,
    the rule of ``overlay.drr_to_uint8``."""
    body = line_integral[line_integral > 1e-3]
    if body.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(body, [0.5, 99.5])
    return float(low), float(max(high, low + 1e-6))


def pixels_keeping_aspect(geometry: XrayGeometry, size: int | tuple[int, int]) -> tuple[int, int]:
    """(columns, rows) for ``size`` pixels along the detector's longer side (a tuple is returned as is)."""
    if not isinstance(size, (int, np.integer)):
        return int(size[0]), int(size[1])
    width, height = geometry.detector_size_mm
    pixel = max(width, height) / int(size)
    return max(1, round(width / pixel)), max(1, round(height / pixel))


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
        self._projector: DrrProjector | None = None
        self._projector_key: tuple | None = None

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
        with node_transaction(self.scene):
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

    # ---- rendering ----
    def projector(self, ct_node, labels_node=None, classes: LabelClasses | None = None,
                  threads: int | None = None) -> DrrProjector:
        """A projector for these inputs, rebuilt only when a node, its voxels or its transform changed."""
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
        key = (stamp(ct_node), stamp(labels_node), classes, threads)
        if self._projector is None or key != self._projector_key:
            ct = volume_from_node(ct_node)
            labels, label_classes = labels_from_node(self.scene, labels_node, ct_node, classes)
            self._projector = DrrProjector(ct, labels, label_classes, threads=threads)
            self._projector_key = key
        return self._projector

    def render(self, ct_node, labels_node=None, size: int | tuple[int, int] | None = None,
               classes: LabelClasses | None = None, threads: int | None = None,
               geometry: XrayGeometry | None = None) -> DrrResult:
        """Render the current set-up (or ``geometry``) and show it in the output nodes.

        ``size`` renders the same detector with other pixels (a preview while dragging): (columns, rows), or
        an int for the longer side, square pixels kept. Nothing is created
        or changed in the scene when the inputs or the set-up are refused (InputError / GeometryError)."""
        geometry = self.geometry() if geometry is None else geometry
        if size is not None:
            geometry = geometry.with_size(pixels_keeping_aspect(geometry, size))
        result = self.projector(ct_node, labels_node, classes, threads).render(geometry)
        with node_transaction(self.scene):
            self._show_drr(result)
            self._show_labels(result)
        self.last_result = result
        return result

    def _show_drr(self, result: DrrResult):
        node = self.node("drr")
        if node is None:
            node = self._new_node("drr")
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
            display.AutoWindowLevelOff()
        was_modifying = node.StartModify()
        node.SetAndObserveImageData(_image_data(result.line_integral[None].astype(np.float32), vtk.VTK_FLOAT))
        node.SetIJKToRASMatrix(vtk_matrix_from_array(result.geometry.detector_ijk_to_ras()))
        node.GetDisplayNode().SetWindowLevelMinMax(*radiograph_window(result.line_integral))
        node.EndModify(was_modifying)
        return node

    def _show_labels(self, result: DrrResult):
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
        for mask, cls in zip(result.masks(), result.classes.classes):
            labelmap = slicer.vtkOrientedImageData()
            labelmap.ShallowCopy(_image_data(mask[None].astype(np.uint8), vtk.VTK_UNSIGNED_CHAR))
            labelmap.SetImageToWorldMatrix(image_to_world)
            segment = slicer.vtkSegment()
            segment.SetName(cls.name)
            segment.SetColor(*cls.color)
            # Each segment keeps its own labelmap (its own layer), so overlapping classes stay overlapping.
            segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(),
                                      labelmap)
            segmentation.AddSegment(segment, segmentation.GenerateUniqueSegmentID(cls.name))
        node.EndModify(was_modifying)
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
