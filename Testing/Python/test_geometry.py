"""Geometry: P, presets, C-arm angles, detector placement, and the round trip P <-> rendered image."""

from __future__ import annotations

import json

import numpy as np
import pytest

from XraySegSimLib import DrrProjector, GeometryError, XrayGeometry, views
from conftest import grid_volume, voxel_centers_ras


def test_projection_matrix_maps_pixel_centres_to_themselves():
    g = views.from_preset("chest-pa", (10.0, -20.0, 30.0), size=(300, 200))
    ii, jj = np.meshgrid([0, 17.5, 299], [0, 42.25, 199])
    # any point on the ray source -> pixel centre projects back to that pixel
    pixel_points = g.pixel_to_ras(ii, jj)
    for fraction in (0.3, 0.7, 1.0):
        points = g.source + fraction * (pixel_points - g.source)
        np.testing.assert_allclose(g.project(points), np.stack([ii, jj], -1), atol=1e-9)


def test_depth_is_positive_in_front_and_equals_distance_along_principal_ray():
    g = views.from_carm(25, -15, (0, 0, 0), size=128)
    p = g.projection_matrix()
    w = p @ np.append(g.isocenter, 1.0)
    assert w[2] == pytest.approx(g.source_to_isocenter_distance)


@pytest.mark.parametrize("view", views.PRESET_NAMES)
def test_projection_matrix_round_trip_recovers_the_setup(view):
    g = views.from_preset(view, (5.0, 6.0, -7.0), size=256, lao_deg=10, cranial_deg=-5)
    back = XrayGeometry.from_projection_matrix(-3.0 * g.projection_matrix(), g.size, g.spacing, in_front=g.isocenter)
    np.testing.assert_allclose(back.source, g.source, atol=1e-6)
    np.testing.assert_allclose(back.detector_center, g.detector_center, atol=1e-6)
    np.testing.assert_allclose(back.column_axis, g.column_axis, atol=1e-9)
    np.testing.assert_allclose(back.row_axis, g.row_axis, atol=1e-9)
    np.testing.assert_allclose(back.projection_matrix(), g.projection_matrix(), rtol=1e-9, atol=1e-6)


def test_detector_ijk_to_ras_places_pixels_and_corners():
    g = views.from_preset("lumbar-lateral", (0, 0, 0), size=64)
    m = g.detector_ijk_to_ras()
    for i, j in [(0, 0), (63, 0), (10.5, 40)]:
        np.testing.assert_allclose((m @ [i, j, 0, 1])[:3], g.pixel_to_ras(i, j), atol=1e-9)
    # outer corners are half a pixel beyond the corner pixel centres
    top_left = (m @ [-0.5, -0.5, 0, 1])[:3]
    np.testing.assert_allclose(top_left, g.corners_ras()[0], atol=1e-9)
    assert np.linalg.norm(g.corners_ras()[2] - g.corners_ras()[0]) == pytest.approx(np.hypot(*g.detector_size_mm))


def test_presets_put_source_and_detector_on_the_documented_sides():
    iso = np.array([0.0, 0.0, 0.0])
    pa = views.from_preset("chest-pa", iso)
    assert pa.source[1] < 0 < pa.detector_center[1]  # source posterior, detector anterior
    assert pa.source_to_detector_distance == pytest.approx(1800) and pa.source_to_isocenter_distance == pytest.approx(1650)
    # patient's right (+R) appears on the screen's left: smaller column index
    right, left = pa.project(np.array([[50.0, 0, 0], [-50.0, 0, 0]]))
    assert right[0] < left[0]
    head, feet = pa.project(np.array([[0, 0, 50.0], [0, 0, -50.0]]))
    assert head[1] < feet[1]
    lateral = views.from_preset("chest-lateral", iso)
    front, back = lateral.project(np.array([[0, 50.0, 0], [0, -50.0, 0]]))
    assert front[0] < back[0]  # anterior on screen left
    ap = views.from_preset("pelvis-ap", iso)
    assert ap.source[1] > 0 > ap.detector_center[1]


def test_carm_angles_follow_lao_and_cranial_conventions():
    iso = (0.0, 0.0, 0.0)
    lao90 = views.from_carm(90, 0, iso)
    np.testing.assert_allclose(lao90.detector_center / np.linalg.norm(lao90.detector_center), [-1, 0, 0], atol=1e-12)
    cra30 = views.from_carm(0, 30, iso)
    direction = cra30.detector_center / np.linalg.norm(cra30.detector_center)
    np.testing.assert_allclose(direction, [0, np.cos(np.radians(30)), np.sin(np.radians(30))], atol=1e-12)
    assert cra30.source_to_isocenter_distance == pytest.approx(800)


def test_json_round_trip():
    g = views.from_carm(-20, 12, (1, 2, 3), size=(100, 80))
    back = XrayGeometry.from_json(json.dumps(json.loads(g.to_json())))
    np.testing.assert_allclose(back.projection_matrix(), g.projection_matrix())
    assert back.size == (100, 80) and back.view == g.view


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(row_axis=(0.1, 0.0, -1.0)), "unit vector"),
        (dict(column_axis=(0.0, 0.0, 1.0), row_axis=(0.0, 0.0, -1.0)), "perpendicular"),
        (dict(spacing=(0.0, 1.0)), "spacing"),
        (dict(size=(0, 10)), "size"),
        (dict(source=(0.0, 0.0, 0.0), detector_center=(0.0, 0.0, 0.0)), "front of the detector"),
        (dict(source=(300.0, -1000.0, 0.0), column_axis=(0.0, 1.0, 0.0), row_axis=(0.0, 0.0, -1.0)),
         "does not face the source"),
    ],
)
def test_degenerate_geometry_is_refused_with_a_reason(change, message):
    base = dict(source=(0.0, -1000.0, 0.0), detector_center=(0.0, 200.0, 0.0), column_axis=(-1.0, 0, 0),
                row_axis=(0, 0, -1.0), size=(64, 64), spacing=(1.0, 1.0))
    base.update(change)
    with pytest.raises(GeometryError, match=message):
        XrayGeometry(**base)


def test_preset_refuses_patient_behind_detector():
    with pytest.raises(GeometryError, match="below the source-to-detector"):
        views.from_preset("chest-pa", (0, 0, 0), source_to_detector_mm=1000, source_to_isocenter_mm=1200)
    with pytest.raises(GeometryError, match="unknown view"):
        views.from_preset("knee-ap", (0, 0, 0))


OBLIQUE = views.rotation_z(30) @ views.rotation_x(20)


@pytest.mark.parametrize(
    "view, lao, cranial, grid_rotation",
    [("chest-pa", 0, 0, None), ("lumbar-lateral", 0, 0, None), ("carm-ap", 35, -20, None),
     ("chest-pa", 0, 0, OBLIQUE), ("pelvis-ap", 10, 25, OBLIQUE), ("wrist-lateral", -30, 0, OBLIQUE)],
)
def test_rendered_point_object_lands_where_p_projects_it(view, lao, cranial, grid_rotation):
    """Round trip of the spec: P projects a 3D point to where the renderer draws a small dense blob.

    The blob is a Gaussian (sigma 0.8 mm) so pixel sampling does not bias its centroid. On a grid aligned
    with the rays, the exact nearest-voxel model makes each ray's integral a staircase with voxel-sized steps,
    which shifts the centroid by up to ~0.3 pixel; an oblique grid averages the staircase out, so there the
    bound is much tighter.
    """
    for offset in ([5.5, -2.9, 6.2], [-12.3, 9.1, -8.7]):
        array = np.full((100, 100, 100), -1000.0, np.float32)
        volume = grid_volume(array, 0.5, center_ras=(3.0, -4.0, 5.0), rotation=grid_rotation)
        point = volume.center_ras + np.array(offset)
        r2 = np.sum((voxel_centers_ras(volume) - point) ** 2, axis=-1)
        array += np.where(r2 < 9, 4000.0 * np.exp(-r2 / 1.28), 0).astype(np.float32)
        geometry = views.from_preset(view, volume.center_ras, size=(200, 200), detector_mm=(120, 120),
                                     lao_deg=lao, cranial_deg=cranial)
        image = DrrProjector(volume).render(geometry).line_integral.astype(float)
        jj, ii = np.mgrid[: image.shape[0], : image.shape[1]]
        found = np.array([(ii * image).sum(), (jj * image).sum()]) / image.sum()
        error = np.linalg.norm(found - geometry.project(point))
        assert error < 0.5, (found, geometry.project(point))
        if grid_rotation is not None:
            assert error < 0.1


def test_with_size_keeps_the_detector_rectangle_and_square_pixels():
    g = views.from_preset("lumbar-ap", (0, 0, 0), size=512)  # 350 x 430 mm detector
    preview = g.with_size(128)
    assert preview.size == (104, 128)  # 128 along the longer side
    np.testing.assert_allclose(preview.detector_size_mm, g.detector_size_mm)
    assert preview.spacing[0] == pytest.approx(preview.spacing[1], rel=0.01)
    np.testing.assert_allclose(preview.corners_ras(), g.corners_ras(), atol=1e-9)
    assert g.with_size((40, 30)).size == (40, 30)
