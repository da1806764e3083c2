"""Slicer model nodes and segmentations (closed-surface representation) as mesh labels (layer 2, no Qt).

Every surface is taken in world RAS: the node's parent transforms (linear or not) are applied, as Slicer
shows it. Model nodes are named by their node name, segments by their segment name; the voxelisation is
:func:`.mesh_labels.voxelize_meshes` (exact inside tests on the reference grid, overlaps to the smaller mesh).
"""

from __future__ import annotations

from typing import Iterable

from .errors import InputError
from .mesh_labels import MeshLabels, voxelize_meshes
from .volume import Volume


def _in_world(poly, node):
    """``poly`` (in ``node``'s coordinates) moved by the node's parent transforms into world RAS."""
    import vtk

    parent = node.GetParentTransformNode()
    if parent is None:
        out = vtk.vtkPolyData()
        out.DeepCopy(poly)
        return out
    import slicer

    to_world = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(parent, None, to_world)
    moved = vtk.vtkTransformPolyDataFilter()
    moved.SetTransform(to_world)
    moved.SetInputData(poly)
    moved.Update()
    return moved.GetOutput()


def surfaces_from_nodes(nodes: Iterable) -> dict[str, object]:
    """{name: vtkPolyData in world RAS} from model nodes and segmentation nodes (each segment's closed surface,
    created from the binary labelmap when the segmentation has none)."""
    surfaces: dict[str, object] = {}
    for node in nodes:
        if node is None:
            continue
        if node.IsA("vtkMRMLModelNode"):
            poly = node.GetPolyData()
            if poly is None or poly.GetNumberOfPoints() == 0:
                raise InputError(f"model '{node.GetName()}' has no surface; load or create its mesh first")
            surfaces[node.GetName()] = _in_world(poly, node)
        elif node.IsA("vtkMRMLSegmentationNode"):
            import vtk

            node.CreateClosedSurfaceRepresentation()
            segmentation = node.GetSegmentation()
            for index in range(segmentation.GetNumberOfSegments()):
                segment_id = segmentation.GetNthSegmentID(index)
                poly = vtk.vtkPolyData()
                node.GetClosedSurfaceRepresentation(segment_id, poly)
                if poly.GetNumberOfPoints():
                    surfaces[segmentation.GetSegment(segment_id).GetName()] = _in_world(poly, node)
        else:
            raise InputError(f"node '{node.GetName()}' is neither a model nor a segmentation; choose those")
    if not surfaces:
        raise InputError("no surfaces: choose model nodes or segmentations with segments")
    return surfaces


def labels_from_nodes(scene, node_ids: Iterable[str], reference: Volume) -> MeshLabels:
    """Voxelise the surfaces of the nodes ``node_ids`` in ``scene`` onto the reference (CT) grid."""
    nodes = [scene.GetNodeByID(node_id) for node_id in node_ids]
    missing = [i for i, n in zip(node_ids, nodes) if n is None]
    if missing:
        raise InputError(f"no node {', '.join(missing)} in the scene")
    return voxelize_meshes(surfaces_from_nodes(nodes), reference)
