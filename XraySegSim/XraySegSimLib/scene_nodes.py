"""Layer 2, small MRML helpers shared by the scene adapters: matrices, node lists, all-or-nothing node creation,
world transforms, voxels of vtkImageData. Qt-free; nothing here touches ``slicer.mrmlScene`` or ``slicer.app``."""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import vtk
from vtk.util import numpy_support

from .errors import InputError


def array_from_vtk_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A vtkMatrix4x4 as a 4x4 numpy array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def vtk_matrix_from_array(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A 4x4 array-like as a vtkMatrix4x4."""
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


__all__ = ["array_from_vtk_matrix", "node_transaction", "vtk_matrix_from_array", "world_matrix"]
