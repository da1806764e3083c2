"""XraySegSim in a real MRML scene (slicer-core, headless): inputs from nodes, the X-ray set-up as transform +
markups + beam model, DRR and projected-label output nodes on the detector, dragging, bad inputs; and the scene
helpers (phantom CT and segmentation, the C-arm set-up, the ``inputs`` and ``sim`` fixtures) the other scene tests
import. Pictures and files: test_mrml_views.py; isocentre: test_mrml_isocentre.py; terminology:
test_mrml_terminology.py; the module file and the export from the scene: test_sim_module.py."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402

from XraySegSimLib import GeometryError, InputError, LabelClasses, views  # noqa: E402
from XraySegSimLib.mrml_adapter import (  # noqa: E402
    XraySimScene, _image_data, array_from_vtk_matrix, volume_from_node, vtk_matrix_from_array)

SEGMENTS = (("bone_a", (0.9, 0.1, 0.1)), ("bone_b", (0.1, 0.9, 0.1)))
SHAPE = (32, 40, 48)  # k, j, i
SPACING = 2.5


def ct_ijk_to_ras() -> np.ndarray:
    """Oblique CT grid (rotated 20 deg about S), centred near the origin."""
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    m = np.eye(4)
    m[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) * SPACING
    m[:3, 3] = -m[:3, :3] @ (np.array(SHAPE[::-1]) - 1) / 2 + [5.0, -3.0, 2.0]
    return m


def phantom_arrays() -> tuple[np.ndarray, list[np.ndarray]]:
    """A water box with two overlapping-in-projection bone blocks (HU 1000)."""
    hu = np.full(SHAPE, -1000, np.int16)
    hu[4:28, 6:34, 6:42] = 0
    masks = [np.zeros(SHAPE, np.uint8) for _ in SEGMENTS]
    masks[0][12:20, 14:24, 12:22] = 1
    masks[1][12:20, 14:24, 18:30] = 1  # overlaps bone_a along i: in 3D and in an AP projection
    for mask in masks:
        hu[mask > 0] = 1000
    return hu, masks


def add_volume(scene, array, ijk_to_ras, name, class_name="vtkMRMLScalarVolumeNode", vtk_type=vtk.VTK_SHORT):
    node = scene.AddNewNodeByClass(class_name, name)
    node.SetAndObserveImageData(_image_data(array, vtk_type))
    node.SetIJKToRASMatrix(vtk_matrix_from_array(ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    return node


def add_segmentation(scene, masks, ijk_to_ras, name="Bones"):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    for (segment_name, color), mask in zip(SEGMENTS, masks):
        segment_id = node.GetSegmentation().AddEmptySegment(segment_name, segment_name, color)
        labelmap = slicer.vtkOrientedImageData()
        labelmap.ShallowCopy(_image_data(mask, vtk.VTK_UNSIGNED_CHAR))
        labelmap.SetImageToWorldMatrix(vtk_matrix_from_array(ijk_to_ras))
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            labelmap, node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, labelmap.GetExtent())
    return node


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def segment_array(segmentation_node, index) -> np.ndarray:
    segment = segmentation_node.GetSegmentation().GetNthSegment(index)
    image = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    extent = image.GetExtent()
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    from vtk.util import numpy_support
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
    return array == segment.GetLabelValue()


@pytest.fixture()
def inputs(app):
    hu, masks = phantom_arrays()
    ct = add_volume(app.scene, hu, ct_ijk_to_ras(), "CT")
    segmentation = add_segmentation(app.scene, masks, ct_ijk_to_ras())
    return ct, segmentation


def carm(ct_node, size=(64, 48), **kw) -> views.XrayGeometry:
    options = dict(source_to_detector_mm=500.0, source_to_isocenter_mm=320.0, detector_mm=(192.0, 144.0))
    options.update(kw)
    return views.from_preset("carm-ap", volume_from_node(ct_node).center_ras, size=size, **options)


@pytest.fixture()
def sim(app, inputs):
    simulation = XraySimScene(app.scene)
    simulation.set_geometry(carm(inputs[0]))
    return simulation


def detector_corners_of_node(volume_node) -> np.ndarray:
    """Outer corners of a single-slice volume node's pixel grid, in the order of XrayGeometry.corners_ras."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    m = array_from_vtk_matrix(matrix)
    cols, rows, _ = volume_node.GetImageData().GetDimensions()
    ijk = np.array([[-0.5, -0.5, 0, 1], [cols - 0.5, -0.5, 0, 1], [cols - 0.5, rows - 0.5, 0, 1],
                    [-0.5, rows - 0.5, 0, 1]])
    return (ijk @ m.T)[:, :3]


# ---- inputs ---------------------------------------------------------------------------------------------------


def test_ct_node_honours_linear_parent_transform_and_refuses_non_linear(app, inputs):
    ct, _ = inputs
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    pose = np.eye(4)
    pose[:3, :3] = views.carm_rotation(30, -10)
    pose[:3, 3] = [10.0, -20.0, 5.0]
    transform.SetMatrixTransformToParent(vtk_matrix_from_array(pose))
    ct.SetAndObserveTransformNodeID(transform.GetID())
    volume = volume_from_node(ct)
    np.testing.assert_allclose(volume.ijk_to_ras, pose @ ct_ijk_to_ras(), atol=1e-9)
    assert volume.array.shape == SHAPE

    grid = app.scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "Warp")
    ct.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(InputError, match="non-linear transform 'Warp'"):
        volume_from_node(ct)


def test_transformed_ct_renders_like_the_same_ct_moved_by_hand(app, inputs, sim):
    """A parent transform on the CT (and its segmentation) moves the anatomy: rendering the moved CT equals
    rendering the original with the set-up moved by the inverse transform."""
    ct, segmentation = inputs
    reference = sim.render(ct, segmentation)
    move = np.eye(4)
    move[:3, :3] = views.carm_rotation(15, 5)
    move[:3, 3] = [12.0, 4.0, -6.0]
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(vtk_matrix_from_array(move))
    for node in inputs:
        node.SetAndObserveTransformNodeID(transform.GetID())
    moved = sim.render(ct, segmentation, geometry=reference.geometry.transformed(move))
    np.testing.assert_allclose(moved.line_integral, reference.line_integral, atol=1e-4)
    np.testing.assert_array_equal(moved.masks(), reference.masks())


def test_segmentation_under_its_own_transform_is_exported_where_it_lies(app, inputs):
    """A segmentation moved by a parent transform (one voxel along the CT's i axis) lands one voxel over."""
    from XraySegSimLib.mrml_adapter import labels_from_node
    ct, segmentation = inputs
    step = np.eye(4)
    step[:3, 3] = ct_ijk_to_ras()[:3, 0]
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(vtk_matrix_from_array(step))
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    labels, classes = labels_from_node(app.scene, segmentation, ct)
    _, masks = phantom_arrays()
    expected = np.zeros(SHAPE, np.int64)
    expected[:, :, 1:][masks[0][:, :, :-1] > 0] = 1
    expected[:, :, 1:][masks[1][:, :, :-1] > 0] = 2  # the later segment wins where they overlap
    np.testing.assert_array_equal(labels.array, expected)
    assert classes.names == ["bone_a", "bone_b"]


def test_labelmap_input_takes_names_and_colours_from_its_colour_table(app, inputs, sim):
    ct, _ = inputs
    _, masks = phantom_arrays()
    labels = add_volume(app.scene, (masks[0] + 2 * masks[1] * (1 - masks[0])).astype(np.int16), ct_ijk_to_ras(),
                        "Labels", "vtkMRMLLabelMapVolumeNode")
    colors = app.scene.AddNewNodeByClass("vtkMRMLColorTableNode", "BoneColors")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(3)
    colors.SetColor(0, "background", 0, 0, 0, 0)
    colors.SetColor(1, "femur", 0.8, 0.2, 0.1, 1)
    colors.SetColor(2, "tibia", 0.2, 0.3, 0.9, 1)
    labels.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    result = sim.render(ct, labels)
    assert result.classes.names == ["femur", "tibia"]
    np.testing.assert_allclose(result.classes.classes[1].color, (0.2, 0.3, 0.9), atol=1 / 255)  # 8-bit table
    out = sim.node("labels").GetSegmentation()
    assert [out.GetNthSegment(i).GetName() for i in range(out.GetNumberOfSegments())] == ["femur", "tibia"]
    # Given classes (e.g. TotalSegmentator's table) override the colour table.
    result = sim.render(ct, labels, classes=LabelClasses.from_values({2: "tibia_only"}))
    assert result.classes.names == ["tibia_only"]


# ---- outputs on the detector -----------------------------------------------------------------------------------


def test_drr_node_lies_on_the_detector_and_labels_keep_names_colours_and_overlaps(app, inputs, sim):
    ct, segmentation = inputs
    before = len(node_ids(app.scene))
    result = sim.render(ct, segmentation)
    geometry = sim.geometry()
    drr = sim.node("drr")
    assert drr.GetImageData().GetDimensions() == (64, 48, 1)
    corner_error = np.abs(detector_corners_of_node(drr) - geometry.corners_ras()).max()
    assert corner_error < 0.01, f"DRR corners are {corner_error:.4f} mm off the detector"
    from XraySegSimLib.mrml_adapter import _image_array
    np.testing.assert_array_equal(_image_array(drr.GetImageData())[0], result.line_integral)
    display = drr.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeGrey" and not display.GetAutoWindowLevel()
    body = result.line_integral[result.line_integral > 1e-3]
    assert display.GetWindowLevelMin() == pytest.approx(np.percentile(body, 0.5), rel=1e-5)

    labels = sim.node("labels")
    out = labels.GetSegmentation()
    assert out.GetNumberOfSegments() == 2
    for index, (name, color) in enumerate(SEGMENTS):
        assert out.GetNthSegment(index).GetName() == name
        np.testing.assert_allclose(out.GetNthSegment(index).GetColor(), color, atol=1e-6)
        np.testing.assert_array_equal(segment_array(labels, index)[0], result.masks()[index])
    overlap = (result.masks()[0] & result.masks()[1]).sum()
    assert overlap > 20 and out.GetNumberOfLayers() == 2, "overlapping classes must keep their own masks"
    # Re-rendering (another pose, a preview) updates the same nodes.
    sim.set_pose_matrix(np.diag([1.0, 1, 1, 1]))
    sim.render(ct, segmentation, size=32)
    assert drr.GetImageData().GetDimensions() == (32, 24, 1)
    assert np.abs(detector_corners_of_node(drr) - geometry.corners_ras()).max() < 0.01
    sim.render(ct, segmentation)
    assert len(node_ids(app.scene)) == before + 6  # drr, labels, labels3d and their display nodes (the rig came first)
    assert len([n for n in range(app.scene.GetNumberOfNodes())
                if app.scene.GetNthNode(n).GetAttribute("XraySegSim.Role") == "drr"]) == 1


def test_edited_inputs_are_seen_by_the_next_render(inputs, sim):
    """The projector is cached between renders (dragging) but rebuilt when an input changes."""
    ct, segmentation = inputs
    first = sim.render(ct, segmentation)
    projector = sim._projector
    sim.set_pose_matrix(np.diag([1.0, 1.0, 1.0, 1.0]))
    sim.render(ct, segmentation, size=16)
    assert sim._projector is projector
    segmentation.GetSegmentation().RemoveSegment(segmentation.GetSegmentation().GetNthSegmentID(0))
    assert sim.render(ct, segmentation).classes.names == ["bone_b"]
    from XraySegSimLib.mrml_adapter import _image_array
    _image_array(ct.GetImageData())[:] = -1000  # air everywhere
    ct.GetImageData().Modified()
    assert sim.render(ct, None).line_integral.max() == 0 < first.line_integral.max()


def test_geometry_read_back_from_scene_equals_what_was_set(app, inputs, sim):
    geometry = carm(inputs[0])
    np.testing.assert_allclose(sim.geometry().projection_matrix(), geometry.projection_matrix(), atol=1e-9)
    assert sim.geometry().size == geometry.size
    # The beam model: source + 4 detector corners.
    from vtk.util import numpy_support
    points = numpy_support.vtk_to_numpy(sim.node("frustum").GetPolyData().GetPoints().GetData())
    np.testing.assert_allclose(points, np.vstack([geometry.source, geometry.corners_ras()]), atol=1e-6)
    # A fresh adapter on the same scene finds the set-up again (by the nodes' role attributes).
    np.testing.assert_allclose(XraySimScene(app.scene).geometry().projection_matrix(),
                               geometry.projection_matrix(), atol=1e-9)


# ---- dragging ---------------------------------------------------------------------------------------------------


def blob_centre(image: np.ndarray) -> np.ndarray:
    weights = image / image.sum()
    j, i = np.indices(image.shape)
    return np.array([(weights * i).sum(), (weights * j).sum()])


def test_dragging_the_pose_moves_the_image_as_the_geometry_predicts(app, inputs, sim):
    ct, segmentation = inputs
    # A small dense ball at a known point; the rest of the phantom is left out (air).
    hu = np.full(SHAPE, -1000, np.int16)
    k, j, i = np.indices(SHAPE)
    ball_ijk = np.array([20.0, 18.0, 14.0])  # i, j, k
    hu[(i - ball_ijk[0]) ** 2 + (j - ball_ijk[1]) ** 2 + (k - ball_ijk[2]) ** 2 <= 2.2 ** 2] = 2000
    ball = add_volume(app.scene, hu, ct_ijk_to_ras(), "Ball")
    centre_ras = ct_ijk_to_ras()[:3, :3] @ ball_ijk + ct_ijk_to_ras()[:3, 3]
    sim.set_geometry(carm(ct, size=(192, 144)))  # 1 mm pixels: the ball is ~17 px wide
    before = sim.render(ball)
    geometry = sim.geometry()
    drag = np.eye(4)
    drag[:3, 3] = 10.0 * geometry.column_axis  # the C-arm slides 10 mm along the detector columns
    sim.set_pose_matrix(drag)
    after = sim.render(ball)
    moved = sim.geometry()
    np.testing.assert_allclose(moved.source, geometry.source + drag[:3, 3], atol=1e-9)
    predicted = moved.project(centre_ras) - geometry.project(centre_ras)
    measured = blob_centre(after.line_integral) - blob_centre(before.line_integral)
    # The ball moves against the C-arm: 10 mm x magnification / pixel pitch, about 16 px here.
    depth = 320 + float((centre_ras - geometry.isocenter) @ geometry.principal_direction)
    assert predicted[0] == pytest.approx(-10.0 * 500 / depth / 1.0, rel=1e-6) and abs(predicted[0]) > 15
    np.testing.assert_allclose(measured, predicted, atol=0.05)
    # A rotation of the pose about the isocentre is a C-arm angle: same image as the LAO 20 preset.
    rotation = np.eye(4)
    rotation[:3, :3] = views.carm_rotation(20, 0)
    rotation[:3, 3] = geometry.isocenter - rotation[:3, :3] @ geometry.isocenter
    sim.set_pose_matrix(rotation)
    np.testing.assert_allclose(sim.geometry().projection_matrix(),
                               carm(ct, size=(192, 144), lao_deg=20).projection_matrix(), atol=1e-6)


def test_moving_the_source_markup_changes_the_geometry_and_the_beam(sim):
    geometry = sim.geometry()
    source = sim.node("source")
    source.SetNthControlPointPosition(0, *(geometry.source + [0.0, -50.0, 0.0]))
    sim.update_frustum()
    assert sim.geometry().source_to_detector_distance == pytest.approx(geometry.source_to_detector_distance + 50)
    from vtk.util import numpy_support
    points = numpy_support.vtk_to_numpy(sim.node("frustum").GetPolyData().GetPoints().GetData())
    np.testing.assert_allclose(points[0], geometry.source + [0.0, -50.0, 0.0], atol=1e-6)


# ---- bad inputs ---------------------------------------------------------------------------------------------------


def single_slice_ct(app, inputs):
    hu, _ = phantom_arrays()
    return add_volume(app.scene, hu[10:11], ct_ijk_to_ras(), "Radiograph"), None


def far_segmentation(app, inputs):
    _, masks = phantom_arrays()
    far = ct_ijk_to_ras()
    far[:3, 3] += [500.0, 0.0, 0.0]
    return inputs[0], add_segmentation(app.scene, masks, far, "ElsewhereBones")


def no_segments(app, inputs):
    node = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "NoSegments")
    return inputs[0], node


def empty_segments(app, inputs):
    node = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "EmptySegments")
    node.GetSegmentation().AddEmptySegment("femur", "femur", (1, 0, 0))
    return inputs[0], node


def labels_off_grid(app, inputs):
    _, masks = phantom_arrays()
    return inputs[0], add_volume(app.scene, masks[0][:, :, :40], ct_ijk_to_ras(), "Cropped",
                                 "vtkMRMLLabelMapVolumeNode")


def source_inside_ct(app, inputs):
    return inputs[0], None


@pytest.mark.parametrize("make, error, message", [
    (single_slice_ct, InputError, r"Radiograph: is a single slice \(48x40x1 voxels\), not a CT volume"),
    (far_segmentation, InputError, r"ElsewhereBones: its segments \(R .*\) do not overlap the CT 'CT'"),
    (no_segments, InputError, "NoSegments: the segmentation has no segments"),
    (empty_segments, InputError, "EmptySegments: every segment is empty"),
    (labels_off_grid, InputError, "the label map grid differs from the CT grid"),
    (source_inside_ct, GeometryError, "source lies inside the CT"),
])
def test_bad_inputs_give_clear_errors_and_leave_no_new_nodes(app, inputs, make, error, message):
    ct, labels = make(app, inputs)
    sim = XraySimScene(app.scene)
    sid = 40.0 if make is source_inside_ct else 320.0
    sim.set_geometry(carm(inputs[0], source_to_isocenter_mm=sid))
    before = node_ids(app.scene)
    with pytest.raises(error, match=message):
        sim.render(ct, labels)
    assert node_ids(app.scene) == before
    assert sim.node("drr") is None and sim.node("labels") is None


def test_failed_render_keeps_the_previous_outputs(app, inputs, sim):
    ct, segmentation = inputs
    sim.render(ct, segmentation)
    before = node_ids(app.scene)
    dims = sim.node("drr").GetImageData().GetDimensions()
    with pytest.raises(InputError):
        sim.render(ct, app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Empty"))
    assert node_ids(app.scene) - before == {app.scene.GetFirstNodeByName("Empty").GetID()}
    assert sim.node("drr").GetImageData().GetDimensions() == dims
