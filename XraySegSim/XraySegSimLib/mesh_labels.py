"""Bone surface meshes as labels: voxelise closed meshes onto a CT grid with exact inside tests.

Input: a folder of meshes (``.stl``, ``.obj``, ``.ply``, ``.vtk``, ``.vtp``), one structure per file, named by
the file name (``scaphoid.stl`` -> ``scaphoid``), or a mapping file (CSV ``file,name[,value]`` or JSON
``{"meshes": [{"file": ..., "name": ..., "value": ...}]}``; relative paths from the mapping's folder).

Coordinates: mesh points are RAS millimetres. Files whose header says ``SPACE=LPS`` (what 3D Slicer writes in
its STL/OBJ/VTK comments) are flipped to RAS; ``scale`` converts other units (e.g. 1000 for metres).

Voxelisation: every CT voxel centre is tested against the closed surface (``vtkPolyDataToImageStencil``:
exact point-in-polygon on each scan line of the voxel centres), in the CT's own IJK frame, so oblique grids
need no resampling. Voxel values are 1..N in the order of the meshes (or the mapping's values).

Overlaps: a label map holds one value per voxel. Where meshes overlap in 3D, the voxel goes to the smaller
mesh (a small carpal is not eaten by a large neighbour); the count is reported. Overlaps in the *projection*
are unaffected: the projector keeps overlapping 2D masks (a pixel may belong to several classes).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import InputError
from .volume import Volume

MESH_SUFFIXES = (".stl", ".obj", ".ply", ".vtk", ".vtp")
MAPPING_SUFFIXES = (".csv", ".json")


@dataclass
class MeshLabels:
    """A label map voxelised from meshes, its {value: name} table, and what happened on the way."""

    labels: Volume
    names: dict[int, str]
    voxels: dict[str, int] = field(default_factory=dict)  # voxels per structure after overlap resolution
    overlap_voxels: int = 0
    notes: list[str] = field(default_factory=list)


def is_mesh_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in MESH_SUFFIXES


def is_mesh_labels_source(path: str | Path) -> bool:
    """True for a folder holding mesh files, or a .csv/.json mapping whose rows name mesh files."""
    p = Path(path)
    if p.is_dir():
        return any(is_mesh_file(f) for f in p.iterdir() if f.is_file())
    if p.is_file() and p.suffix.lower() in MAPPING_SUFFIXES:
        try:
            return bool(read_mesh_mapping(p))
        except InputError:
            return False
    return False


def _header_says_lps(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(512)
    return b"SPACE=LPS" in head.upper()


def read_mesh(path: str | Path, scale: float = 1.0, lps: bool | None = None):
    """Read one mesh file as triangulated ``vtkPolyData`` in RAS mm (see the module docstring for units)."""
    import vtk

    p = Path(path)
    suffix = p.suffix.lower()
    readers = {".stl": vtk.vtkSTLReader, ".obj": vtk.vtkOBJReader, ".ply": vtk.vtkPLYReader,
               ".vtk": vtk.vtkPolyDataReader, ".vtp": vtk.vtkXMLPolyDataReader}
    if suffix not in readers:
        raise InputError(f"{p}: not a mesh file; use one of {', '.join(MESH_SUFFIXES)}")
    if not p.is_file():
        raise InputError(f"mesh file not found: {p}")
    reader = readers[suffix]()
    reader.SetFileName(str(p))
    reader.Update()
    poly = reader.GetOutput()
    if poly is None or poly.GetNumberOfPoints() == 0 or poly.GetNumberOfCells() == 0:
        raise InputError(f"{p}: the mesh is empty or unreadable; export it as a closed surface")
    flip = _header_says_lps(p) if lps is None else lps
    return transform_polydata(poly, np.diag([-scale if flip else scale, -scale if flip else scale, scale, 1.0]))


def transform_polydata(poly, matrix: np.ndarray):
    """``poly`` with its points mapped by the 4x4 ``matrix``, triangulated (a new vtkPolyData)."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

    triangles = vtk.vtkTriangleFilter()
    triangles.SetInputData(poly)
    triangles.Update()
    out = vtk.vtkPolyData()
    out.DeepCopy(triangles.GetOutput())
    points = vtk_to_numpy(out.GetPoints().GetData()).astype(float)
    moved = points @ np.asarray(matrix, float)[:3, :3].T + np.asarray(matrix, float)[:3, 3]
    vtk_points = vtk.vtkPoints()
    vtk_points.SetData(numpy_to_vtk(np.ascontiguousarray(moved), deep=True))
    out.SetPoints(vtk_points)
    return out


def mesh_volume_mm3(poly) -> float:
    """Enclosed volume of a closed triangulated surface (divergence theorem, vtkMassProperties)."""
    import vtk

    props = vtk.vtkMassProperties()
    props.SetInputData(poly)
    props.Update()
    return float(props.GetVolume())


def edge_count(poly, boundary: bool = True, non_manifold: bool = True) -> int:
    """Number of boundary and/or non-manifold edges of ``poly``."""
    import vtk

    edges = vtk.vtkFeatureEdges()
    edges.SetInputData(poly)
    edges.SetBoundaryEdges(boundary)
    edges.SetNonManifoldEdges(non_manifold)
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.Update()
    return int(edges.GetOutput().GetNumberOfCells())


def open_edge_count(poly) -> int:
    """Boundary plus non-manifold edges: 0 for a closed (watertight) surface."""
    return edge_count(poly)


def triangle_polydata(points: np.ndarray, cells: np.ndarray):
    """``vtkPolyData`` of triangles from points (N, 3) and vertex indices (M, 3) (deep copies)."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray

    poly = vtk.vtkPolyData()
    vtk_points = vtk.vtkPoints()
    vtk_points.SetData(numpy_to_vtk(np.ascontiguousarray(points), deep=True))
    poly.SetPoints(vtk_points)
    polys = vtk.vtkCellArray()
    offsets = np.arange(0, 3 * len(cells) + 1, 3, dtype=np.int64)
    polys.SetData(numpy_to_vtkIdTypeArray(offsets, deep=True),
                  numpy_to_vtkIdTypeArray(np.ascontiguousarray(cells.ravel()), deep=True))
    poly.SetPolys(polys)
    return poly


def oriented_closed(poly, hole_size: float):
    """``vtkPolyDataNormals`` (updated) of ``poly`` cleaned, holes up to ``hole_size`` filled, triangulated and
    consistently oriented: the common first stage before subdividing a coarse model mesh."""
    import vtk

    clean = vtk.vtkCleanPolyData()
    clean.SetInputData(poly)
    fill = vtk.vtkFillHolesFilter()
    fill.SetInputConnection(clean.GetOutputPort())
    fill.SetHoleSize(hole_size)
    tri = vtk.vtkTriangleFilter()
    tri.SetInputConnection(fill.GetOutputPort())
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(tri.GetOutputPort())
    normals.ConsistencyOn()
    normals.SplittingOff()
    normals.Update()
    return normals


def inside_block(poly, reference: Volume) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """(box, mask): the reference voxel centres inside the closed mesh ``poly`` (RAS mm), as a boolean block
    [k, j, i] over ``box`` (k, j, i slices of the reference grid), the mesh's bounding box clipped to the grid."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    nk, nj, ni = reference.array.shape
    in_ijk = transform_polydata(poly, reference.ras_to_ijk)
    points = vtk_to_numpy(in_ijk.GetPoints().GetData())
    low = np.maximum(np.floor(points.min(0)).astype(int) - 1, 0)
    high = np.minimum(np.ceil(points.max(0)).astype(int) + 1, [ni - 1, nj - 1, nk - 1])
    if np.any(high < low):
        return (slice(0, 0),) * 3, np.zeros((0, 0, 0), bool)
    stencil = vtk.vtkPolyDataToImageStencil()
    stencil.SetInputData(in_ijk)
    stencil.SetOutputOrigin(0.0, 0.0, 0.0)
    stencil.SetOutputSpacing(1.0, 1.0, 1.0)
    stencil.SetOutputWholeExtent(int(low[0]), int(high[0]), int(low[1]), int(high[1]), int(low[2]), int(high[2]))
    stencil.SetTolerance(0.0)  # voxel centres exactly on the surface count as outside: no bias either way
    to_image = vtk.vtkImageStencilToImage()
    to_image.SetInputConnection(stencil.GetOutputPort())
    to_image.SetInsideValue(1)
    to_image.SetOutsideValue(0)
    to_image.SetOutputScalarTypeToUnsignedChar()
    to_image.Update()
    image = to_image.GetOutput()
    dims = image.GetDimensions()
    block = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0]).astype(bool)
    box = (slice(int(low[2]), int(low[2]) + dims[2]), slice(int(low[1]), int(low[1]) + dims[1]),
           slice(int(low[0]), int(low[0]) + dims[0]))
    return box, block


def inside_mask(poly, reference: Volume) -> np.ndarray:
    """Boolean mask [k, j, i] over the whole reference grid of the voxel centres inside ``poly``."""
    mask = np.zeros(reference.array.shape, bool)
    box, block = inside_block(poly, reference)
    mask[box] = block
    return mask


def voxelize_meshes(meshes: Mapping[str, object], reference: Volume,
                    values: Mapping[str, int] | None = None) -> MeshLabels:
    """Voxelise {name: vtkPolyData (RAS mm)} onto ``reference``'s grid; values 1..N or ``values[name]``."""
    if not meshes:
        raise InputError("no meshes to voxelise; give a folder with .stl/.obj/.ply/.vtk/.vtp files")
    names = list(meshes)
    value_of = {n: int(values[n]) if values and n in values else i for i, n in enumerate(names, start=1)}
    if len(set(value_of.values())) != len(value_of) or min(value_of.values()) < 1:
        raise InputError("mesh label values must be distinct integers >= 1")
    dtype = np.uint8 if max(value_of.values()) < 256 else np.uint16
    out = np.zeros(reference.array.shape, dtype)
    owner_volume = np.zeros(reference.array.shape, np.float32)  # mesh volume of the voxel's current owner
    notes: list[str] = []
    overlap = 0
    for name in names:
        poly = meshes[name]
        holes = open_edge_count(poly)
        if holes:
            notes.append(f"mesh '{name}' is not closed ({holes} open edges): inside tests may leak along the "
                         "holes; close it (e.g. Slicer's Surface Toolbox, fill holes)")
        size = abs(mesh_volume_mm3(poly))
        box, mask = inside_block(poly, reference)
        current, owner = out[box], owner_volume[box]
        overlap += int(np.count_nonzero(mask & (current != 0)))
        wins = mask & ((current == 0) | (owner > size))  # overlapping voxels go to the smaller mesh
        current[wins] = value_of[name]
        owner[wins] = size
    table = {value_of[n]: n for n in names}
    counts = np.bincount(out.ravel(), minlength=max(table) + 1)
    voxels = {n: int(counts[value_of[n]]) for n in names}
    empty = [n for n, c in voxels.items() if c == 0]
    if empty:
        notes.append(f"meshes outside the CT or smaller than a voxel: {', '.join(empty[:8])}")
    if overlap:
        notes.append(f"{overlap} voxels lie inside several meshes; each went to the smaller mesh")
    return MeshLabels(Volume(out, reference.ijk_to_ras.copy(), "mesh labels"), table, voxels, overlap, notes)


def read_mesh_mapping(path: str | Path) -> list[tuple[Path, str, int | None]]:
    """Rows (mesh file, name, value or None) of a CSV ``file,name[,value]`` or a JSON mapping file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"mesh mapping file not found: {p}")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as error:
            raise InputError(f"{p}: not valid JSON ({error})") from None
        rows = data.get("meshes") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise InputError(f"{p}: needs {{\"meshes\": [{{\"file\": ..., \"name\": ...}}]}}")
    else:
        rows = list(csv.DictReader(p.read_text().splitlines()))
    out = []
    for row in rows:
        if not isinstance(row, dict) or not row.get("file"):
            raise InputError(f"{p}: every row needs a 'file' (and optionally 'name', 'value')")
        file = Path(str(row["file"]).strip())
        file = file if file.is_absolute() else p.parent / file
        if not is_mesh_file(file):
            raise InputError(f"{p}: {file.name} is not a mesh file ({', '.join(MESH_SUFFIXES)})")
        name = str(row.get("name") or "").strip() or file.stem
        value = row.get("value")
        out.append((file, name, int(value) if value not in (None, "") else None))
    return out


def load_mesh_labels(source: str | Path, reference: Volume, scale: float = 1.0) -> MeshLabels:
    """Voxelise a mesh folder (names from the file names, sorted) or a mapping file onto ``reference``."""
    p = Path(source)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and is_mesh_file(f))
        if not files:
            raise InputError(f"{p} holds no mesh files ({', '.join(MESH_SUFFIXES)})")
        rows: Sequence[tuple[Path, str, int | None]] = [(f, f.stem, None) for f in files]
    else:
        rows = read_mesh_mapping(p)
    names = [name for _, name, _ in rows]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"several meshes are named {', '.join(duplicates)}; rename the files or map the names")
    meshes = {name: read_mesh(file, scale) for file, name, _ in rows}
    given = {name: value for _, name, value in rows if value is not None}
    if given and len(given) != len(rows):
        raise InputError(f"{p}: give a value for every mesh or for none")
    return voxelize_meshes(meshes, reference, given or None)
