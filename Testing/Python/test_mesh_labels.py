"""Bone meshes as labels: exact voxelisation of closed surfaces on any CT grid, names from files, overlaps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import grid_volume, write_image

from XraySegSimLib.errors import InputError
from XraySegSimLib.mesh_labels import load_mesh_labels, read_mesh, voxelize_meshes


def _sphere(radius: float, center, resolution: int = 200):
    import vtk

    source = vtk.vtkSphereSource()
    source.SetRadius(radius)
    source.SetCenter(*center)
    source.SetThetaResolution(resolution)
    source.SetPhiResolution(resolution)
    source.Update()
    return source.GetOutput()


def _box(lengths, center):
    import vtk

    source = vtk.vtkCubeSource()
    source.SetXLength(lengths[0])
    source.SetYLength(lengths[1])
    source.SetZLength(lengths[2])
    source.SetCenter(*center)
    tri = vtk.vtkTriangleFilter()
    tri.SetInputConnection(source.GetOutputPort())
    tri.Update()
    return tri.GetOutput()


def _write(poly, path, header: str | None = None):
    import vtk

    writers = {".stl": vtk.vtkSTLWriter, ".ply": vtk.vtkPLYWriter, ".vtp": vtk.vtkXMLPolyDataWriter,
               ".vtk": vtk.vtkPolyDataWriter}
    writer = writers[path.suffix]()
    writer.SetFileName(str(path))
    writer.SetInputData(poly)
    if header is not None:
        writer.SetHeader(header)
    writer.Write()
    return path


def _oblique_grid(shape=(70, 80, 90), spacing=0.8):
    a, b = math.radians(25.0), math.radians(17.0)  # about two axes: no grid plane is parallel to a box face
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])
    rx = np.array([[1.0, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    rotation = rz @ rx
    volume = grid_volume(np.zeros(shape, np.int16), spacing, center_ras=(2.0, -3.0, 4.0), rotation=rotation)
    volume.ijk_to_ras[:3, :3] = volume.ijk_to_ras[:3, :3] @ np.diag([1.0, 0.9, 1.2])  # anisotropic too
    return volume


def test_sphere_mesh_gives_the_sphere_volume_on_an_oblique_grid():
    ct = _oblique_grid()
    radius = 18.0
    result = voxelize_meshes({"sphere": _sphere(radius, (4.0, -1.0, 6.0))}, ct)
    voxel_mm3 = abs(np.linalg.det(ct.ijk_to_ras[:3, :3]))
    volume = result.voxels["sphere"] * voxel_mm3
    exact = 4.0 / 3.0 * math.pi * radius ** 3
    assert abs(volume / exact - 1.0) < 0.01, (volume, exact)
    assert result.names == {1: "sphere"} and result.overlap_voxels == 0 and not result.notes
    # Every labelled voxel centre lies within the sphere (plus the polygon's sagitta), none far inside is missed.
    k, j, i = np.nonzero(result.labels.array == 1)
    ras = np.stack([i, j, k], 1) @ ct.ijk_to_ras[:3, :3].T + ct.ijk_to_ras[:3, 3]
    assert np.linalg.norm(ras - [4.0, -1.0, 6.0], axis=1).max() <= radius + 1e-6


def test_mesh_folder_names_from_files_and_mapping_values_round_trip(tmp_path):
    ct = _oblique_grid()
    folder = tmp_path / "meshes"
    folder.mkdir()
    _write(_sphere(10.0, (-12.0, 0.0, 0.0)), folder / "lunate.stl")
    _write(_box((16.0, 12.0, 20.0), (12.0, 2.0, -3.0)), folder / "capitate.ply")
    result = load_mesh_labels(folder, ct)
    assert result.names == {1: "capitate", 2: "lunate"}  # sorted file names, values 1..N
    voxel_mm3 = abs(np.linalg.det(ct.ijk_to_ras[:3, :3]))
    assert abs(result.voxels["capitate"] * voxel_mm3 / (16 * 12 * 20) - 1) < 0.01
    assert abs(result.voxels["lunate"] * voxel_mm3 / (4 / 3 * math.pi * 1000) - 1) < 0.01
    mapping = tmp_path / "meshes.csv"
    mapping.write_text("file,name,value\nmeshes/lunate.stl,os_lunatum,7\nmeshes/capitate.ply,os_capitatum,3\n")
    mapped = load_mesh_labels(mapping, ct)
    assert mapped.names == {7: "os_lunatum", 3: "os_capitatum"}
    assert np.array_equal(mapped.labels.array == 7, result.labels.array == 2)
    assert np.array_equal(mapped.labels.array == 3, result.labels.array == 1)


def test_overlapping_meshes_stay_separate_classes_in_the_projection():
    from XraySegSimLib import views
    from XraySegSimLib.labels import LabelClasses
    from XraySegSimLib.projector import DrrProjector

    ct = grid_volume(np.full((60, 60, 60), -1000, np.int16), 1.0)
    big, small = _sphere(20.0, (0.0, 0.0, 0.0), 120), _sphere(6.0, (8.0, 0.0, 0.0), 120)
    result = voxelize_meshes({"big": big, "small": small}, ct)
    voxel_count_small = int(np.count_nonzero(voxelize_meshes({"small": small}, ct).labels.array))
    # The small mesh keeps all of its voxels (it is inside the big one): the big one loses them.
    assert result.voxels["small"] == voxel_count_small and result.overlap_voxels == voxel_count_small
    ct.array[result.labels.array > 0] = 1000
    classes = LabelClasses.from_values(result.names)
    drr = DrrProjector(ct, result.labels, classes).render(views.from_preset("wrist-pa", (0, 0, 0), 64))
    masks = drr.masks()
    assert masks[1].sum() > 0 and np.all(masks[0][masks[1]])  # the small bone projects inside the big one


def test_lps_header_is_flipped_to_ras_and_bad_input_is_refused(tmp_path):
    path = _write(_sphere(5.0, (10.0, 20.0, 30.0), 40), tmp_path / "bone.stl", header="SPACE=LPS made by a test")
    poly = read_mesh(path)
    assert np.allclose(np.array(poly.GetCenter()), (-10.0, -20.0, 30.0), atol=0.2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no mesh files"):
        load_mesh_labels(tmp_path / "empty", _oblique_grid())
    with pytest.raises(InputError, match="not a mesh file"):
        read_mesh(tmp_path / "bone.txt")


def test_render_and_export_accept_a_mesh_folder_as_labels(tmp_path):
    from XraySegInferLib.entry import main

    ct = grid_volume(np.zeros((50, 50, 50), np.int16), 1.0)
    ct_path = write_image(ct.array, ct.ijk_to_ras, tmp_path / "ct.nii.gz")
    folder = tmp_path / "meshes"
    folder.mkdir()
    _write(_sphere(8.0, (-9.0, 0.0, 0.0), 60), folder / "scaphoid.vtp")
    _write(_sphere(7.0, (9.0, 0.0, 0.0), 60), folder / "lunate.vtk")
    assert main(["render", "--ct", str(ct_path), "--labels", str(folder), "--view", "wrist-pa", "--size", "48",
                 "--out", str(tmp_path / "render")]) == 0
    from XraySegSimLib.seg_nrrd import read_seg_nrrd

    seg = read_seg_nrrd(tmp_path / "render" / "labels.seg.nrrd")
    assert sorted(seg.names.values()) == ["lunate", "scaphoid"]
    assert main(["export", "--ct", str(ct_path), "--labels", str(folder), "--classes", "scaphoid; lunate",
                 "--view", "wrist-pa", "--views-per-ct", "1", "--size", "32", "--test-fraction", "0", "--quiet",
                 "--no-previews", "--physics", "none", "--out", str(tmp_path / "export")]) == 0
    import nrrd

    root = next((tmp_path / "export").glob("Dataset*"))
    assert [c["name"] for c in json.loads((root / "classes.json").read_text())["classes"]] == ["scaphoid", "lunate"]
    masks, _ = nrrd.read(str(next((root / "masksTr").glob("*.nrrd"))), index_order="C")
    assert masks.shape == (2, 32, 32) and np.all((masks > 0).reshape(2, -1).sum(1) > 20)  # both bones seen


def test_model_nodes_and_closed_surface_segments_with_parent_transforms():
    """Real slicer-core scene: a model under a translation and a segment from a closed surface."""
    import slicer
    import vtk

    from XraySegSimLib.mesh_labels_mrml import labels_from_nodes

    scene = slicer.vtkMRMLScene()
    ct = grid_volume(np.zeros((60, 60, 60), np.int16), 1.0)
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "hamate")
    model.SetAndObservePolyData(_sphere(8.0, (0.0, 0.0, 0.0), 120))
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 12.0)  # 12 mm towards R
    shift.SetMatrixTransformToParent(matrix)
    model.SetAndObserveTransformNodeID(shift.GetID())
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.GetSegmentation().SetSourceRepresentationName("Closed surface")
    segmentation.AddSegmentFromClosedSurfaceRepresentation(_sphere(6.0, (-12.0, 0.0, 0.0), 120), "pisiform")
    result = labels_from_nodes(scene, [model.GetID(), segmentation.GetID()], ct)
    assert result.names == {1: "hamate", 2: "pisiform"}
    for value, radius, centre in ((1, 8.0, 12.0), (2, 6.0, -12.0)):
        mask = result.labels.array == value
        assert abs(mask.sum() / (4 / 3 * math.pi * radius ** 3) - 1) < 0.02
        assert abs(ct.centroid_ras(mask)[0] - centre) < 0.05
