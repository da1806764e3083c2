"""Layer 2, the X-ray set-up (rig) in the scene: a pose transform, the source point and detector plane markups
under it, and the beam model, all tagged with ``XraySegSim.Role`` so a later session finds them again.

* ``pose`` -- a linear transform node: the tube / C-arm pose. Dragging it (its 3D handles, or the Transforms
  module) moves the whole set-up: ``geometry() == base_geometry().transformed(pose_matrix())``.
* ``source`` -- a point list markup with one point; ``detector`` -- a plane markup (centre, axes, size in mm);
  ``frustum`` -- a model: lines from the source to the detector corners and the detector outline. All three sit
  under ``pose`` and hold the *base* (untransformed) set-up. Moving the source point or the detector plane on its
  own changes the set-up too (:meth:`XrayRig.observe_rig` reports it and redraws the beam).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import slicer
import vtk

from .errors import GeometryError, InputError
from .geometry import XrayGeometry
from .scene_nodes import _nodes, array_from_vtk_matrix, node_transaction, vtk_matrix_from_array

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



def slice_to_ras_for_detector(geometry: XrayGeometry) -> np.ndarray:
    """SliceToRAS that shows the detector as the image is read: screen right = column axis, screen down = row
    axis, centred on the detector."""
    x, y = geometry.column_axis, -geometry.row_axis
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, np.cross(x, y), geometry.detector_center
    return m



class XrayRig:
    """The rig nodes of one X-ray set-up in an MRML scene (created on first use, found again by their role)."""

    def __init__(self, scene, name: str = "X-ray") -> None:
        self.scene = scene
        self.name = name
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

    @property
    def placing(self) -> bool:
        """True while :meth:`set_geometry` moves the rig's markups (not a user's drag)."""
        return self._placing

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

    # ---- files ----
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
