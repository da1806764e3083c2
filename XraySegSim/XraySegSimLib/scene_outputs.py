"""Layer 2, rendering into the scene: :class:`XraySimScene` (the rig of ``scene_rig`` plus its output nodes).

* ``drr`` -- the DRR, a single-slice scalar volume whose IJK->RAS is ``geometry.detector_ijk_to_ras()``, so it lies
  on the detector in 3D; ``labels`` -- the projected labels, a segmentation on the same grid, one segment (and one
  layer, so overlaps survive) per class, with the input's names, colours and terminology; ``labels3d`` -- a model
  that shows the projected labels in 3D: one coloured quad per labelled pixel (the class with the longest path),
  just in front of the detector.

The projector (numba) is imported when the first render runs, not with this module.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .errors import InputError
from .geometry import XrayGeometry
from .labels import LabelClasses
from .scene_inputs import labels_from_node, segment_ids, terminology_for_classes, volume_from_node
from .scene_nodes import _image_data, node_transaction, vtk_matrix_from_array
from .scene_rig import QUANTITY_ATTRIBUTE, XrayRig, slice_to_ras_for_detector

if TYPE_CHECKING:
    from .projector import DrrProjector, DrrResult

# One render at a time in this process: numba's workqueue threading layer (the one macOS wheels fall back to)
# aborts the whole process when two parallel kernels run at once, and a live preview can fire while another
# render runs (timers, processEvents). Every render through the scene takes this lock.
RENDER_LOCK = threading.Lock()


class RenderBusy(InputError):
    """Another render is running in this process and the caller asked not to wait."""


LABELS_3D_OFFSET_MM = 0.5  # the 3D label quads float this far in front of the detector (towards the source)
LABELS_3D_OPACITY = 0.6


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



class XraySimScene(XrayRig):
    """One X-ray set-up in an MRML scene: pose transform, source and detector markups, beam model (``XrayRig``),
    and the DRR / projected-label output nodes (created on first use, found again by their role attribute)."""

    def __init__(self, scene, name: str = "X-ray") -> None:
        super().__init__(scene, name)
        self.last_result: DrrResult | None = None
        self.last_radiograph: np.ndarray | None = None  # the realistic image of the last render, if physics
        self._projector: DrrProjector | None = None
        self._projector_key: tuple | None = None
        self.device = "cpu"  # where new projectors trace: "cpu", "cuda" or "auto" (see DrrProjector)

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
        key = (stamp(ct_node), stamp(labels_node), classes, threads, bool(materials), self.device)
        if self._projector is None or key != self._projector_key:
            from .materials import MaterialModel
            from .projector import DrrProjector

            ct = volume_from_node(ct_node)
            labels, label_classes = labels_from_node(self.scene, labels_node, ct_node, classes)
            self._projector = DrrProjector(ct, labels, label_classes, threads=threads,
                                           materials=MaterialModel() if materials else None, device=self.device)
            self._projector_key = key
        return self._projector

    def render(self, ct_node, labels_node=None, size: int | tuple[int, int] | None = None,
               classes: LabelClasses | None = None, threads: int | None = None,
               geometry: XrayGeometry | None = None, physics: str | None = None, seed: int = 0,
               wait: bool = True) -> DrrResult:
        """Render the current set-up (or ``geometry``) and show it in the output nodes.

        ``size`` renders the same detector with other pixels (a preview while dragging): (columns, rows), or
        an int for the longer side, square pixels kept. ``physics``: a preset name of ``physics.PRESETS``
        (see :func:`physics_preset_for`) -- the projector then integrates the materials too, and the DRR node
        shows ``physics.simulate_radiograph(result, physics, rng=seed).image`` (float32 in [0, 1],
        MONOCHROME2, window 0..1; also kept in ``last_radiograph``) instead of the line integral. Nothing is
        created or changed in the scene when the inputs or the set-up are refused (InputError /
        GeometryError).

        Renders are serialised process-wide (``RENDER_LOCK``): a second caller waits, or with ``wait=False`` gets
        :class:`RenderBusy` at once and nothing changes (the GUI thread must never block on it)."""
        geometry = self.geometry() if geometry is None else geometry
        if size is not None:
            geometry = geometry.with_size(size)
        if not RENDER_LOCK.acquire(blocking=wait):
            raise RenderBusy("another render is running; try again when it has finished")
        try:
            result = self.projector(ct_node, labels_node, classes, threads,
                                    materials=physics is not None).render(geometry)
            image = None
            if physics is not None:
                from . import physics as physics_module

                image = physics_module.simulate_radiograph(result, physics, rng=int(seed)).image.astype(np.float32)
        finally:
            RENDER_LOCK.release()
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
