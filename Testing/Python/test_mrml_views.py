"""XraySegSim's outputs in a real MRML scene that one looks at or saves: the current view and geometry files,
offscreen pictures of a slice view and a 3D view (saved to Testing/Artifacts/), the beam redrawn when the source
or the detector is dragged on its own, and the labels' 3D model on the detector."""

from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402

from XraySegSimLib import InputError  # noqa: E402
from XraySegSimLib.mrml_adapter import XraySimScene, array_from_vtk_matrix  # noqa: E402
from test_mrml_adapter import inputs, sim  # noqa: E402,F401 (inputs, sim: fixtures)


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
