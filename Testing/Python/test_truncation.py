"""Truncation mask (issue 10, item 4): rays that cross the body beyond a cut face of the CT, checked against the
analytic continuation of a cylinder that the CT grid cuts across its axis."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import grid_volume, voxel_centers_ras
from XraySegSimLib import DrrProjector, XrayGeometry
from XraySegSimLib.truncation import CutFaces, truncated_mask

RADIUS = 40.0


def cylinder_ct(axis: int, length_voxels: int = 50, rotation=None):
    """Water cylinder of radius RADIUS along RAS axis ``axis`` through the origin; the 1 mm grid is 130 voxels
    wide across the axis (the cylinder fits) and ``length_voxels`` along it (the cylinder is cut there)."""
    shape_ijk = [130, 130, 130]
    shape_ijk[axis] = length_voxels
    volume = grid_volume(np.full(shape_ijk[::-1], -1000.0, np.float32), 1.0, rotation=rotation)
    c = voxel_centers_ras(volume)
    across = np.delete(c, axis, axis=-1)
    volume.array[np.linalg.norm(across, axis=-1) <= RADIUS] = 0.0
    return volume


def pa_geometry(size=(72, 72), spacing=2.5, source_shift=(8.0, 0.0, 12.0)) -> XrayGeometry:
    """Posterior source, anterior detector, off-centre source so the beam diverges unevenly."""
    s = np.array(source_shift)
    return XrayGeometry(source=np.array([0.0, -600.0, 0.0]) + s, detector_center=np.array([0.0, 400.0, 0.0]),
                        column_axis=(1, 0, 0), row_axis=(0, 0, -1), size=size, spacing=(spacing, spacing))


def analytic_truncation(geometry: XrayGeometry, axis: int, low: float, high: float,
                        depth: float = np.inf) -> np.ndarray:
    """Pixels whose source-to-pixel segment meets the infinite cylinder outside [low, high] along ``axis``, at
    most ``depth`` beyond either end."""
    cols, rows = geometry.size
    i, j = np.meshgrid(np.arange(cols), np.arange(rows))
    pixel = (geometry.origin + i[..., None] * geometry.spacing[0] * geometry.column_axis
             + j[..., None] * geometry.spacing[1] * geometry.row_axis)
    s = geometry.source
    d = pixel - s
    others = [a for a in range(3) if a != axis]
    sp, dp = s[others], d[..., others]
    a = (dp ** 2).sum(-1)
    b = 2 * (dp * sp).sum(-1)
    c = (sp ** 2).sum() - RADIUS ** 2
    disc = b * b - 4 * a * c
    root = np.sqrt(np.maximum(disc, 0))
    t0 = np.clip((-b - root) / (2 * a), 0, 1)
    t1 = np.clip((-b + root) / (2 * a), 0, 1)
    meets = (disc > 0) & (t1 > t0)
    z0, z1 = s[axis] + t0 * d[..., axis], s[axis] + t1 * d[..., axis]
    z_lo, z_hi = np.minimum(z0, z1), np.maximum(z0, z1)
    return meets & (((z_lo < low) & (z_hi >= low - depth)) | ((z_hi > high) & (z_lo <= high + depth)))


def near_edge(mask: np.ndarray) -> np.ndarray:
    """Pixels within one pixel (8-neighbourhood) of the mask's boundary."""
    padded = np.pad(mask, 1, mode="edge")
    shifts = [padded[1 + dy: padded.shape[0] - 1 + dy, 1 + dx: padded.shape[1] - 1 + dx]
              for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    grown, shrunk = np.logical_or.reduce(shifts), np.logical_and.reduce(shifts)
    return grown & ~shrunk


@pytest.mark.parametrize("axis", [2, 0], ids=["axial-cut", "lateral-cut"])
def test_ignore_mask_covers_exactly_the_rays_through_the_cut_faces(axis):
    volume = cylinder_ct(axis)
    geometry = pa_geometry()
    projector = DrrProjector(volume)
    mask = truncated_mask(projector, geometry)
    extent = volume.array.shape[::-1][axis] / 2.0  # grid centred at the origin, 1 mm voxels: edges at +-extent
    reference = analytic_truncation(geometry, axis, -extent, extent)
    wrong = mask != reference
    assert reference.sum() > 600 and (~reference).sum() > 600  # both kinds of pixel are well represented
    assert not (wrong & ~near_edge(reference)).any(), "mismatch away from the reference boundary"
    assert wrong.sum() <= 0.5 * near_edge(reference).sum()
    # The rays inside the CT that never reach a cut face keep their truth: the DRR there is the cylinder's.
    drr = projector.render(geometry).line_integral
    assert (drr[~mask & ~near_edge(reference)] >= 0).all() and drr[~mask].max() > 1.0


def test_a_side_face_continuation_ends_at_its_depth():
    """A body cut by faces along its side (here the cylinder's ends, along R: the grid's long axis is S) goes on
    for ``side_depth_mm`` only: the rays that meet the cylinder only farther out are not truncated."""
    volume = cylinder_ct(0)
    geometry = pa_geometry(size=(96, 72))
    extent = volume.array.shape[::-1][0] / 2.0
    packed = DrrProjector(volume).packed
    bounded = CutFaces(packed, volume.ras_to_ijk, side_depth_mm=20.0)
    np.testing.assert_allclose(bounded.limits, [20, 20, 20, 20, np.inf, np.inf])
    mask, without_end = bounded.mask(geometry), CutFaces(packed, volume.ras_to_ijk, side_depth_mm=np.inf).mask(geometry)
    reference = analytic_truncation(geometry, 0, -extent, extent, depth=20.0)
    assert (without_end & ~reference).sum() > 300, "the depth must matter for this view"
    wrong = mask != reference
    assert not (wrong & ~near_edge(reference)).any(), "mismatch away from the reference boundary"
    assert wrong.sum() <= 0.5 * near_edge(reference).sum()
    assert not (mask & ~without_end).any()


def test_the_long_axis_is_the_grid_axis_closest_to_superior():
    """The faces across the patient's long axis go on without end, whichever grid axis that is."""
    from XraySegSimLib.truncation import face_limits

    # i along S (0.5 mm), j along A (1 mm), k along R (2 mm): limits in voxels of each face's own axis
    permuted = np.array([[0, 0, 2.0, 0], [0, 1.0, 0, 0], [0.5, 0, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(face_limits(np.linalg.inv(permuted), 100.0), [np.inf, np.inf, 100, 100, 50, 50])


def test_cut_faces_of_an_oblique_grid_match_the_axis_aligned_result():
    """The walk runs in IJK: a grid turned about the cylinder axis gives the same mask (to a pixel)."""
    angle = np.radians(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    straight = truncated_mask(DrrProjector(cylinder_ct(2, 50)), pa_geometry())
    turned_ct = cylinder_ct(2, 50, rotation=rotation)
    turned = truncated_mask(DrrProjector(turned_ct), pa_geometry())
    assert (straight != turned).sum() <= 0.05 * near_edge(straight).sum()
    assert not ((straight != turned) & ~near_edge(straight)).any()


def test_a_body_inside_the_ct_is_never_truncated():
    volume = cylinder_ct(2, 120)
    c = voxel_centers_ras(volume)
    volume.array[np.abs(c[..., 2]) > 50] = -1000.0  # cap the cylinder inside the grid
    faces = CutFaces(DrrProjector(volume).packed, volume.ras_to_ijk)
    assert not any(faces.cut_voxels.values())
    assert not faces.mask(pa_geometry()).any()
    # Labels count as body: a labelled voxel on a face makes a cut section there.
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[-1, 60:70, 60:70] = 1
    faces = CutFaces(volume.array, volume.ras_to_ijk, labels=labels, packed=False)
    assert faces.cut_voxels["k_high"] == 100
    tall = pa_geometry(size=(40, 120))  # reaches above the CT's top face, where the labelled section continues
    assert faces.mask(tall).sum() > 0 and not faces.mask(tall)[60:].any()
