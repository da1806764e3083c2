"""XraySegSim in a real MRML scene (slicer-core, headless): inputs from nodes, the X-ray set-up as transform +
markups + beam model, DRR and projected-label output nodes on the detector, dragging, bad inputs, export, and
offscreen pictures of a slice view and a 3D view (saved to Testing/Artifacts/)."""

from __future__ import annotations

import json

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


# ---- files ------------------------------------------------------------------------------------------------------


def test_export_current_view_and_geometry_files(app, inputs, sim, tmp_path):
    ct, segmentation = inputs
    sim.render(ct, segmentation, size=16)  # a preview: export renders full resolution again
    paths = sim.export(tmp_path / "view", ct, segmentation)
    sidecar = json.loads(paths["sidecar"].read_text())
    assert sidecar["geometry"]["detector_size_pixels"] == [64, 48]
    assert [c["name"] for c in sidecar["classes"]] == ["bone_a", "bone_b"]
    assert {"drr", "segmentation", "overlay_png"} <= set(paths) and all(p.is_file() for p in paths.values())
    np.testing.assert_allclose(sidecar["slicer"]["pose_matrix"], np.eye(4))

    geometry = sim.geometry()
    sim.save_geometry(tmp_path / "g.json")
    sim.save_geometry(tmp_path / "P.txt")
    other = XraySimScene(app.scene, name="other")
    loaded = other.load_geometry(tmp_path / "g.json")
    np.testing.assert_allclose(loaded.projection_matrix(), geometry.projection_matrix(), atol=1e-9)
    loaded = other.load_geometry(tmp_path / "P.txt", size=geometry.size, spacing=geometry.spacing,
                                 in_front=geometry.isocenter)
    np.testing.assert_allclose(loaded.projection_matrix(), geometry.projection_matrix(), atol=1e-6)
    np.testing.assert_allclose(other.geometry().detector_center, geometry.detector_center, atol=1e-6)
    loaded = other.load_geometry(paths["sidecar"])  # the export's drr.json works as a geometry file too
    np.testing.assert_allclose(loaded.projection_matrix(), geometry.projection_matrix(), atol=1e-9)
    with pytest.raises(InputError, match="needs the detector size"):
        other.load_geometry(tmp_path / "P.txt")


# ---- offscreen pictures -----------------------------------------------------------------------------------------


def screen_to_detector_pixels(slice_node, geometry, height: int) -> np.ndarray:
    """For every screen pixel of a slice view (rows top first), the detector pixel (i, j) it shows."""
    xy_to_ras = array_from_vtk_matrix(slice_node.GetXYToRAS())
    width = slice_node.GetDimensions()[0]
    y, x = np.indices((height, width))
    xy = np.stack([x, height - 1 - y, np.zeros_like(x), np.ones_like(x)], -1).astype(float)
    ras = (xy @ xy_to_ras.T)[..., :3]
    offset = ras - geometry.origin
    return np.stack([offset @ geometry.column_axis / geometry.spacing[0],
                     offset @ geometry.row_axis / geometry.spacing[1]], -1)


def test_slice_view_shows_the_drr_with_the_label_overlay(app, inputs, sim, artifacts_dir):
    ct, segmentation = inputs
    result = sim.render(ct, segmentation, size=(128, 96))
    view = app.slice_view("Red", size=(400, 300))
    sim.show_in_slice_view(view.node, view.composite_node)
    rgb = view.capture(artifacts_dir / "xraysegsim_slice_view.png").astype(int)
    ij = np.round(screen_to_detector_pixels(view.node, result.geometry, rgb.shape[0])).astype(int)
    inside = (ij[..., 0] >= 0) & (ij[..., 0] < 128) & (ij[..., 1] >= 0) & (ij[..., 1] < 96)
    assert inside.mean() > 0.9, "the detector should fill the view"
    masks = result.masks()
    shown = np.zeros((2,) + rgb.shape[:2], bool)
    shown[:, inside] = masks[:, ij[inside][:, 1], ij[inside][:, 0]]
    only_a, only_b = shown[0] & ~shown[1], shown[1] & ~shown[0]
    unlabelled = inside & ~shown.any(0)
    assert only_a.sum() > 500 and only_b.sum() > 500
    # Overlay colours where the labels are (red for bone_a, green for bone_b), gray elsewhere.
    red, green = rgb[only_a].mean(0), rgb[only_b].mean(0)
    assert red[0] > red[1] + 40 and red[0] > red[2] + 40, f"bone_a pixels are not red: {red}"
    assert green[1] > green[0] + 40 and green[1] > green[2] + 40, f"bone_b pixels are not green: {green}"
    spread = rgb[unlabelled].max(-1) - rgb[unlabelled].min(-1)
    assert np.median(spread) <= 2, "unlabelled pixels should be the gray DRR"
    # Brighter where the DRR is denser: the DRR is the background layer, radiograph window.
    drr = result.line_integral[ij[unlabelled][:, 1], ij[unlabelled][:, 0]]
    assert np.corrcoef(drr, rgb[unlabelled][:, 0])[0, 1] > 0.9


def test_three_d_view_shows_bones_source_detector_with_drr_and_beam(app, inputs, sim, artifacts_dir):
    ct, segmentation = inputs
    result = sim.render(ct, segmentation, size=(128, 96))
    slice_view = app.slice_view("Red", size=(400, 300))
    sim.show_in_slice_view(slice_view.node, slice_view.composite_node)
    slice_view.node.SetSliceVisible(True)  # the DRR with its labels, on the detector in 3D
    segmentation.CreateClosedSurfaceRepresentation()
    view = app.threed_view(size=(600, 450))
    view.node.SetBoxVisible(False)
    view.node.SetAxisLabelsVisible(False)
    view.node.SetBackgroundColor(0, 0, 0)
    view.node.SetBackgroundColor2(0, 0, 0)
    view.look_from((1.0, -0.8, 0.5))
    rgb = view.capture(artifacts_dir / "xraysegsim_3d_view.png").astype(int)
    geometry = sim.geometry()

    def on_screen(point):
        coordinate = vtk.vtkCoordinate()
        coordinate.SetCoordinateSystemToWorld()
        coordinate.SetValue(*point)
        x, y = coordinate.GetComputedDisplayValue(view.renderer)
        return int(round(x)), rgb.shape[0] - 1 - int(round(y))

    def patch(point, half=2):
        x, y = on_screen(point)
        return rgb[max(y - half, 0):y + half + 1, max(x - half, 0):x + half + 1].reshape(-1, 3)

    # The detector quad is where the geometry puts it: DRR pixels inside it, background just outside.
    corners = geometry.corners_ras()
    quad = np.array([on_screen(c) for c in corners])
    assert (quad >= 0).all() and (quad[:, 0] < rgb.shape[1]).all() and (quad[:, 1] < rgb.shape[0]).all()
    inner = [geometry.detector_center + 0.6 * (c - geometry.detector_center) for c in corners]
    assert all(patch(p).max() > 30 for p in inner), "the DRR slice should cover the detector"
    outside = [geometry.detector_center + 1.4 * (c - geometry.detector_center) for c in corners]
    assert all(patch(p, 1).max() < 10 for p in outside), "nothing should be drawn just outside the detector"
    # The beam: yellow lines from the source to the corners.
    for corner in corners:
        midpoint = patch(geometry.source + 0.5 * (corner - geometry.source), 2)
        assert ((midpoint[:, 0] > 150) & (midpoint[:, 1] > 120) & (midpoint[:, 2] < 100)).any()
    # The bone surfaces (red and green) are visible.
    assert ((rgb[..., 0] > 120) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum() > 50
    assert ((rgb[..., 1] > 120) & (rgb[..., 0] < 60) & (rgb[..., 2] < 60)).sum() > 50
    # The projected labels on the detector quad ("X-ray labels 3D"), in their classes' colours: sample the
    # screen where the centres of the pixels labelled only bone_a (red) / only bone_b (green) are drawn. The
    # detector's centre handle and a beam line cover part of them.
    masks = result.masks()
    for own, other, channel in ((0, 1, 0), (1, 0, 1)):
        j, i = np.nonzero(masks[own] & ~masks[other])
        centres = result.geometry.pixel_to_ras(i, j) - 0.5 * result.geometry.principal_direction
        samples = np.array([rgb[y, x] for x, y in map(on_screen, centres)])
        others = [c for c in range(3) if c != channel]
        tinted = (samples[:, channel] > samples[:, others].max(1) + 30).mean()
        assert len(samples) > 50 and tinted > 0.7, f"only {tinted:.0%} of class {own}'s pixels show its colour"
    unlabelled = result.geometry.pixel_to_ras(*np.nonzero(~masks.any(0))[::-1])
    gray = np.array([rgb[y, x] for x, y in map(on_screen, unlabelled)])
    assert np.median(gray.max(1) - gray.min(1)) <= 10, "unlabelled detector pixels show the gray DRR"


# ---- isocentre on a markup point or a segment -------------------------------------------------------------------


def principal_point(geometry) -> np.ndarray:
    """(i0, j0) where the principal ray meets the detector, read off P: P[:, :3] = K R and R's third row
    is the unit principal direction, so K R n = K e3 = (i0, j0, 1)."""
    p = geometry.projection_matrix()
    n = p[2, :3]
    assert np.linalg.norm(n) == pytest.approx(1.0)
    return np.array([p[0, :3] @ n, p[1, :3] @ n])


def aim_and_check(sim, ct, point, lao=25.0, cra=-10.0):
    """Place a C-arm view on ``point`` and check the principal ray passes through it (< 0.01 px)."""
    sim.set_geometry(views.from_preset("carm-ap", point, size=(64, 48), source_to_detector_mm=500.0,
                                       source_to_isocenter_mm=320.0, detector_mm=(192.0, 144.0),
                                       lao_deg=lao, cranial_deg=cra))
    geometry = sim.geometry()
    error = np.abs(geometry.project(point) - principal_point(geometry)).max()
    assert error < 0.01, f"the chosen point projects {error:.4f} px off the principal point"
    return geometry


def test_isocentre_on_a_markup_point_lies_on_the_principal_ray(app, inputs, sim):
    from XraySegSimLib.mrml_adapter import isocenter_ras
    ct, _ = inputs
    markup = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Aim")
    markup.AddControlPoint(vtk.vtkVector3d(12.0, -7.0, 9.0), "aim")
    shift = np.eye(4)
    shift[:3, 3] = [3.0, 4.0, -5.0]  # a parent transform on the markup is honoured
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(vtk_matrix_from_array(shift))
    markup.SetAndObserveTransformNodeID(transform.GetID())
    point = isocenter_ras("Markup point", ct, markup=markup)
    np.testing.assert_allclose(point, [15.0, -3.0, 4.0], atol=1e-9)
    geometry = aim_and_check(sim, ct, point)
    np.testing.assert_allclose(geometry.isocenter, point, atol=1e-9)
    np.testing.assert_allclose(isocenter_ras("CT centre", ct), volume_from_node(ct).center_ras)
    empty = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "NoPoints")
    with pytest.raises(InputError, match="NoPoints: has no control point 1; place a point first"):
        isocenter_ras("Markup point", ct, markup=empty)
    with pytest.raises(InputError, match="choose a markup point list"):
        isocenter_ras("Markup point", ct, markup=None)


def test_isocentre_on_a_segment_centre_lies_on_the_principal_ray(app, inputs, sim):
    from XraySegSimLib.mrml_adapter import isocenter_ras, segment_names
    ct, segmentation = inputs
    _, masks = phantom_arrays()
    k, j, i = np.nonzero(masks[1])
    expected = ct_ijk_to_ras()[:3, :3] @ [i.mean(), j.mean(), k.mean()] + ct_ijk_to_ras()[:3, 3]
    assert segment_names(segmentation) == ["bone_a", "bone_b"]
    centre = isocenter_ras("Segment centre", ct, labels_node=segmentation, segment="bone_b")
    np.testing.assert_allclose(centre, expected, atol=1e-6)
    aim_and_check(sim, ct, centre)
    # By segment ID too; a parent transform on the segmentation moves its centre.
    move = np.eye(4)
    move[:3, :3] = views.carm_rotation(10, 0)
    move[:3, 3] = [4.0, 0.0, -2.0]
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(vtk_matrix_from_array(move))
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(1)
    moved = isocenter_ras("Segment centre", ct, labels_node=segmentation, segment=segment_id)
    np.testing.assert_allclose(moved, move[:3, :3] @ expected + move[:3, 3], atol=1e-6)
    aim_and_check(sim, ct, moved, lao=-40.0, cra=20.0)
    with pytest.raises(InputError, match="Bones: has no segment 'tibia'; choose one of: bone_a, bone_b"):
        isocenter_ras("Segment centre", ct, labels_node=segmentation, segment="tibia")
    segmentation.GetSegmentation().AddEmptySegment("hollow", "hollow")
    with pytest.raises(InputError, match="the segment 'hollow' is empty"):
        isocenter_ras("Segment centre", ct, labels_node=segmentation, segment="hollow")
    with pytest.raises(InputError, match="choose the segment"):
        isocenter_ras("Segment centre", ct, labels_node=segmentation, segment="")


def totalsegmentator_labelmap(app):
    """The phantom's bones as a TotalSegmentator v1 label map (73 clavicula_left, 74 clavicula_right), with
    the colour table Slicer gives a new label map."""
    _, masks = phantom_arrays()
    values = (73 * masks[0] + 74 * masks[1] * (1 - masks[0])).astype(np.int16)
    return add_volume(app.scene, values, ct_ijk_to_ras(), "TSLabels", "vtkMRMLLabelMapVolumeNode"), masks


def test_isocentre_on_a_label_of_a_label_map(app, inputs, sim):
    from XraySegSimLib.mrml_adapter import isocenter_ras, segment_names
    ct, _ = inputs
    labels, masks = totalsegmentator_labelmap(app)
    assert segment_names(labels) == ["clavicula_left", "clavicula_right"]
    k, j, i = np.nonzero(masks[0])
    expected = ct_ijk_to_ras()[:3, :3] @ [i.mean(), j.mean(), k.mean()] + ct_ijk_to_ras()[:3, 3]
    for key in ("clavicula_left", 73, "73"):
        np.testing.assert_allclose(isocenter_ras("Segment centre", ct, labels_node=labels, segment=key), expected,
                                   atol=1e-6)
    aim_and_check(sim, ct, expected)
    with pytest.raises(InputError, match="TSLabels: has no label 'femur_left'"):
        isocenter_ras("Segment centre", ct, labels_node=labels, segment="femur_left")


# ---- terminology ---------------------------------------------------------------------------------------------


CLAVICLE_LEFT = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
                 "~SCT^51299004^Clavicle~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^")


def output_segments(sim):
    out = sim.node("labels").GetSegmentation()
    return [out.GetNthSegment(i) for i in range(out.GetNumberOfSegments())]


def test_output_segments_copy_the_input_segments_terminology(inputs, sim):
    ct, segmentation = inputs
    humerus = CLAVICLE_LEFT.replace("51299004^Clavicle", "85050009^Humerus").replace("7771000^Left", "24028007^Right")
    for index, tag in enumerate((CLAVICLE_LEFT, humerus)):
        segmentation.GetSegmentation().GetNthSegment(index).SetTerminology(tag)
    sim.render(ct, segmentation)
    inputs_ = [segmentation.GetSegmentation().GetNthSegment(i) for i in range(2)]
    for source, out in zip(inputs_, output_segments(sim)):
        assert out.GetName() == source.GetName()
        np.testing.assert_allclose(out.GetColor(), source.GetColor(), atol=1e-9)
        assert out.GetTerminology() == source.GetTerminology()
    assert [s.GetTerminology() for s in output_segments(sim)] == [CLAVICLE_LEFT, humerus]


def test_totalsegmentator_label_map_gets_names_colours_and_terminology_from_the_table(app, inputs, sim):
    from XraySegSimLib.mrml_adapter import read_label_table
    ct, _ = inputs
    labels, _ = totalsegmentator_labelmap(app)
    assert labels.GetDisplayNode().GetColorNode().GetSingletonTag()  # Slicer's default table, not the user's
    result = sim.render(ct, labels)
    table = read_label_table()
    assert result.classes.names == ["clavicula_left", "clavicula_right"]
    segments = output_segments(sim)
    for value, segment in zip((73, 74), segments):
        assert segment.GetName() == table[value].name
        np.testing.assert_allclose(segment.GetColor(), table[value].color, atol=1e-9)
        assert segment.GetTerminology() == table[value].terminology
    assert segments[0].GetTerminology() == CLAVICLE_LEFT
    assert segments[1].GetTerminology() == CLAVICLE_LEFT.replace("SCT^7771000^Left", "SCT^24028007^Right")


def test_label_map_with_its_own_colour_table_keeps_its_names_colours_and_terminology(app, inputs, sim):
    ct, _ = inputs
    labels, _ = totalsegmentator_labelmap(app)
    colors = app.scene.AddNewNodeByClass("vtkMRMLColorTableNode", "MyBones")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(75)
    colors.SetColor(73, "left collarbone", 0.5, 0.25, 0.75, 1)
    colors.SetColor(74, "right collarbone", 0.25, 0.75, 0.5, 1)
    colors.SetTerminology(73, "SCT", "123037004", "Anatomical Structure", "SCT", "51299004", "Clavicle",
                          "SCT", "7771000", "Left")
    labels.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    sim.render(ct, labels)
    segments = output_segments(sim)
    assert [s.GetName() for s in segments] == ["left collarbone", "right collarbone"]
    np.testing.assert_allclose(segments[0].GetColor(), (0.5, 0.25, 0.75), atol=1 / 255)
    assert segments[0].GetTerminology() == CLAVICLE_LEFT
    assert segments[1].GetTerminology() == slicer.vtkSegment().GetTerminology()  # none given: Slicer's default


def test_shipped_bone_table_is_a_slicer_colour_table_matching_the_bone_classes(app):
    """The table covers every TotalSegmentator v1 bone with the CLI's names and colours, Slicer reads it as a
    colour table with the same terminology, and every coded entry is an Anatomical Structure in SNOMED CT."""
    from XraySegSimLib.mrml_adapter import TOTALSEGMENTATOR_TABLE, read_label_table
    table = read_label_table()
    bones = LabelClasses.totalsegmentator_bones()
    assert [(e.value, e.name) for e in table.values()] == [(c.values[0], c.name) for c in bones.classes]
    for cls in bones.classes:
        np.testing.assert_allclose(table[cls.values[0]].color, cls.color, atol=0.5 / 255 + 1e-4)
    coded = {v: e.terminology for v, e in table.items() if e.terminology}
    assert len(coded) >= 58 and {26, 77, 78}.isdisjoint(coded)  # S1 and the hip bones are left uncoded
    assert all("~SCT^123037004^Anatomical Structure~SCT^" in t for t in coded.values())
    assert "~SCT^113197003^" not in "".join(coded.values())  # ribs carry their own number's code
    assert "SCT^48535007^First rib~SCT^24028007^Right" in coded[104]  # rib_right_1
    assert "SCT^56873002^Sternum~^^" in coded[116]
    colors = app.scene.AddNewNodeByClass("vtkMRMLColorTableNode", "Shipped")
    storage = slicer.vtkMRMLColorTableStorageNode()
    storage.SetFileName(str(TOTALSEGMENTATOR_TABLE))
    assert storage.ReadData(colors)
    for value, entry in table.items():
        assert colors.GetColorName(value) == entry.name
        if entry.terminology:
            assert entry.terminology.split("~")[1:4] == colors.GetTerminologyAsString(value).split("~")[1:4]


# ---- dragging the source or detector on their own --------------------------------------------------------------


def test_dragging_source_or_detector_redraws_the_beam_and_reports_moves(sim):
    moves = []
    tags = sim.observe_rig(moves.append)
    geometry = sim.geometry()
    source, detector = sim.node("source"), sim.node("detector")
    source.SetNthControlPointPosition(0, *(geometry.source + [0.0, -30.0, 0.0]))
    assert moves and not any(moves)
    from vtk.util import numpy_support
    beam = numpy_support.vtk_to_numpy(sim.node("frustum").GetPolyData().GetPoints().GetData())
    np.testing.assert_allclose(beam[0], geometry.source + [0.0, -30.0, 0.0], atol=1e-6)
    source.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
    assert moves[-1] is True
    moves.clear()
    detector.SetCenter(*(geometry.detector_center + [0.0, 20.0, 0.0]))
    assert moves, "moving the detector plane is reported"
    beam = numpy_support.vtk_to_numpy(sim.node("frustum").GetPolyData().GetPoints().GetData())
    np.testing.assert_allclose(beam[1:], sim.geometry().corners_ras(), atol=1e-6)
    assert sim.geometry().source_to_detector_distance == pytest.approx(
        geometry.source_to_detector_distance + 50.0)
    moves.clear()
    sim.set_geometry(geometry)  # placing the set-up is not a drag
    assert not moves
    sim.unobserve_rig(tags)
    source.SetNthControlPointPosition(0, *geometry.source)
    assert not moves


def test_labels_3d_model_has_a_quad_per_labelled_pixel_in_front_of_the_detector(inputs, sim):
    from vtk.util import numpy_support
    ct, segmentation = inputs
    result = sim.render(ct, segmentation)
    poly = sim.node("labels3d").GetPolyData()
    label_image = result.label_image()
    assert poly.GetNumberOfCells() == int((label_image > 0).sum()) > 50
    colors = numpy_support.vtk_to_numpy(poly.GetCellData().GetArray("colors"))
    expected = np.round(np.array([c.color for c in result.classes.classes]) * 255)[label_image[label_image > 0] - 1]
    np.testing.assert_array_equal(colors, expected)
    points = numpy_support.vtk_to_numpy(poly.GetPoints().GetData())
    geometry = result.geometry
    depth = (points - geometry.detector_center) @ geometry.principal_direction
    np.testing.assert_allclose(depth, -0.5, atol=1e-6)  # 0.5 mm in front of the detector, towards the source
    assert sim.render(ct, None) and sim.node("labels3d").GetPolyData().GetNumberOfCells() == 0


# ---- the module's own self-test (XraySegSimTest), with stand-ins for the Qt-only parts ----------------------------


def test_module_choices_match_the_library():
    """XraySegSim.py repeats the isocentre modes (to import light); they must equal the adapter's."""
    import ast
    from pathlib import Path
    from XraySegSimLib.mrml_adapter import ISOCENTER_MODES
    tree = ast.parse((Path(__file__).resolve().parents[2] / "XraySegSim" / "XraySegSim.py").read_text())
    (assigned,) = [n for n in tree.body if isinstance(n, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "ISOCENTER_MODES" for t in n.targets)]
    assert tuple(ast.literal_eval(assigned.value)) == ISOCENTER_MODES


def test_module_self_test_passes_on_a_headless_scene(app, monkeypatch):
    """Runs XraySegSimTest (the test Slicer runs inside the application: render, drag, isocentre on a segment
    and on a point, terminology) on slicer-core, with the Qt-only imports stubbed and the parameter node held by
    a wrapper that applies Slicer's parameterNodeWrapper rules on a real scripted module node."""
    import types

    from slicer_module_stubs import load_module
    view = app.slice_view("Red", size=(200, 150))
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(applicationLogic=lambda: app.app_logic), raising=False)
    modules = {name.lower(): types.SimpleNamespace(logic=lambda logic=logic: logic) for name, logic in app.logics.items()}
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(**modules), raising=False)  # used by slicer.util
    module = load_module("XraySegSim", monkeypatch)
    monkeypatch.setattr(app.scene, "Clear", lambda *args: None, raising=False)  # keep the views' nodes
    test = module.XraySegSimTest("runTest")
    test.test_render_synthetic_ct()
    assert view.node.GetSliceVisible()
    for node in [app.scene.GetNthNode(i) for i in range(app.scene.GetNumberOfNodes())]:
        if node.GetAttribute("XraySegSim.Role"):
            app.scene.RemoveNode(node)
    test.test_isocenter_on_segment_and_point()


# ---- realistic physics in the preview, and the batch export from the scene ------------------------------------


def test_module_physics_choices_match_library():
    """XraySegSim.py repeats the physics preset names (to import light); they must match physics.PRESETS."""
    import ast
    from pathlib import Path

    from XraySegSimLib import physics

    tree = ast.parse((Path(__file__).resolve().parents[2] / "XraySegSim" / "XraySegSim.py").read_text())
    assigned = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}
    assert tuple(ast.literal_eval(assigned["PHYSICS_PRESETS"])) == tuple(physics.PRESETS)


def test_physics_preview_shows_a_radiograph_in_0_1_on_the_same_detector(inputs, sim):
    from XraySegSimLib.mrml_adapter import QUANTITY_ATTRIBUTE, physics_preset_for

    ct, segmentation = inputs
    plain = sim.render(ct, segmentation)
    node = sim.node("drr")
    matrix_plain = _ijk_to_ras(node)
    assert physics_preset_for("carm-ap", "auto") == "pelvis-ap" and physics_preset_for("chest-pa", "none") is None
    with pytest.raises(InputError, match="unknown physics preset"):
        physics_preset_for("chest-pa", "knee-ap")
    realistic = sim.render(ct, segmentation, physics="pelvis-ap", seed=3)
    assert sim.node("drr") is node  # the same node, updated
    from XraySegSimLib.mrml_adapter import _image_array

    image = np.array(_image_array(node.GetImageData()))[0]
    assert image.dtype == np.float32 and image.shape == plain.line_integral.shape
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.5
    np.testing.assert_array_equal(image, sim.last_radiograph)
    body = plain.line_integral > 1e-3
    assert np.corrcoef(image[body], plain.line_integral[body])[0, 1] > 0.8  # dense is bright, as the DRR
    np.testing.assert_allclose(_ijk_to_ras(node), matrix_plain, atol=1e-9)  # geometry unchanged
    np.testing.assert_allclose(_ijk_to_ras(node), realistic.geometry.detector_ijk_to_ras(), atol=1e-9)
    assert node.GetDisplayNode().GetWindowLevelMin() == 0.0 and node.GetDisplayNode().GetWindowLevelMax() == 1.0
    assert node.GetAttribute(QUANTITY_ATTRIBUTE).startswith("radiograph")
    np.testing.assert_array_equal(realistic.masks(), plain.masks())  # labels do not depend on the physics
    # Off again: the line integral, from the projector without materials (the cache is keyed on the flag).
    again = sim.render(ct, segmentation)
    assert again.material_g_cm2 is None and realistic.material_g_cm2 is not None
    np.testing.assert_allclose(np.array(_image_array(node.GetImageData()))[0], plain.line_integral, rtol=1e-6)
    assert node.GetAttribute(QUANTITY_ATTRIBUTE) == "line integral"


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return array_from_vtk_matrix(matrix)


def test_export_from_scene_writes_a_dataset_with_the_segments_as_classes(app, inputs, tmp_path):
    from XraySegSimLib.mrml_adapter import export_training_set

    ct, segmentation = inputs
    before = node_ids(app.scene)
    calls = []
    report = export_training_set(app.scene, ct, segmentation, tmp_path, view="carm-ap", views_per_ct=2, size=48,
                                 physics="auto", seed=1, progress=lambda d, n, m: calls.append((d, n)))
    assert node_ids(app.scene) == before  # no node left behind by the conversion
    assert report.n_ok == 2 and not report.cancelled and not report.failed_cts
    dataset = json.loads((report.root / "dataset.json").read_text())
    assert [k for k in dataset["labels"] if k != "background"] == ["bone_a", "bone_b"]
    assert dataset["numTraining"] == 2 and dataset["xrayseg"]["view"] == "carm-ap"
    classes = json.loads((report.root / "classes.json").read_text())["classes"]
    assert [c["name"] for c in classes] == ["bone_a", "bone_b"]
    assert [c["label_names"] for c in classes] == [["bone_a"], ["bone_b"]]
    np.testing.assert_allclose(classes[0]["color_rgb"], SEGMENTS[0][1], atol=1e-6)
    counts = [d for d, _ in calls]
    assert counts == sorted(counts) and counts[-1] == 2 and all(n == 2 for _, n in calls)
    for view in range(2):
        sidecar = json.loads((report.root / "sidecars" / f"CT_v{view:04d}.json").read_text())
        assert sidecar["physics"]["preset"] == "pelvis-ap" and max(sidecar["size"]) == 48
        assert sidecar["projected_pixels"][0] > 0 and sidecar["projected_pixels"][1] > 0  # both bones seen
    assert not list((report.root / ".work" / "scene_inputs").glob("*.nrrd"))  # complete: copies removed


def test_export_from_scene_cancel_leaves_a_resumable_dataset(app, inputs, tmp_path, monkeypatch):
    import csv
    import time

    from XraySegSimLib.mrml_adapter import export_training_set
    from XraySegSimLib.projector import DrrProjector

    ct, segmentation = inputs
    render = DrrProjector.render

    def slow_render(self, geometry):  # 48 px samples take ~5 ms: slow them so the cancel lands mid-export
        time.sleep(0.03)  # (workers=1 renders in a thread of this process, so the patch applies)
        return render(self, geometry)

    monkeypatch.setattr(DrrProjector, "render", slow_render)
    calls = []
    options = dict(view="carm-ap", views_per_ct=40, size=48, physics="none", seed=2)
    report = export_training_set(app.scene, ct, segmentation, tmp_path, progress=lambda d, n, m: calls.append(d),
                                 cancel=lambda: bool(calls) and calls[-1] >= 1, **options)
    assert report.cancelled and 1 <= report.n_ok < 40
    rows = list(csv.DictReader((report.root / "manifest.csv").open()))
    assert len(rows) == 40 and {r["status"] for r in rows} <= {"ok", "cancelled", "incomplete"}
    assert sum(r["status"] == "ok" for r in rows) == report.n_ok
    images = sorted((report.root / "imagesTr").iterdir())
    assert len(images) == report.n_ok and not list(report.root.rglob("*.part"))
    for image in images:  # no half-written sample: every image has its sidecar
        assert (report.root / "sidecars" / (image.name[: -len("_0000.nrrd")] + ".json")).is_file()
    with pytest.raises(InputError, match="Resume"):  # an existing export is not overwritten silently
        export_training_set(app.scene, ct, segmentation, tmp_path, **options)
    resumed = export_training_set(app.scene, ct, segmentation, tmp_path, resume=True, **options)
    assert resumed.n_ok == 40 and sum(s.status == "skipped" for s in resumed.samples) == report.n_ok
    assert len(list((report.root / "imagesTr").iterdir())) == 40


def test_export_from_scene_refuses_bad_input_and_writes_nothing(app, inputs, tmp_path):
    from XraySegSimLib.mrml_adapter import export_training_set

    ct, segmentation = inputs
    cases = [(None, segmentation, tmp_path / "a", "choose a CT"),
             (ct, segmentation, "", "output folder"),
             (ct, None, tmp_path / "b", "labels"),
             (ct, segmentation, tmp_path / "c", "unknown physics")]
    for ct_node, labels_node, out, message in cases:
        with pytest.raises(InputError, match=message):
            export_training_set(app.scene, ct_node, labels_node, out, view="carm-ap", views_per_ct=1, size=32,
                                physics="knee" if "physics" in message else "none")
    empty = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Empty")
    with pytest.raises(InputError, match="no segments"):
        export_training_set(app.scene, ct, empty, tmp_path / "d", view="carm-ap", views_per_ct=1, size=32)
    assert not any(tmp_path.iterdir())
