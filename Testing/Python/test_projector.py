"""Projector accuracy on analytic phantoms whose chord lengths are known exactly, and label handling."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from XraySegSimLib import DrrProjector, GeometryError, InputError, LabelClasses, Volume, read_volume, views
from XraySegSimLib.labels import parse_group_spec
from XraySegSimLib.projector import MU_WATER_60KEV_PER_MM as MU_WATER
from conftest import grid_volume, voxel_centers_ras

DENSE_HU = 1000.0  # mu = 2 * mu_water


def ray_endpoints(geometry):
    rows, cols = geometry.size[1], geometry.size[0]
    jj, ii = np.mgrid[:rows, :cols]
    return geometry.source, geometry.pixel_to_ras(ii, jj)


def ellipsoid_chords(geometry, center, radii, rotation):
    """Exact length (mm) of each source->pixel segment inside the ellipsoid."""
    source, pixels = ray_endpoints(geometry)
    to_local = rotation.T  # ellipsoid axes are the columns of ``rotation``
    s = (to_local @ (source - center)) / radii
    d = ((pixels - source) @ to_local.T) / radii
    a = np.sum(d * d, -1)
    b = 2 * np.sum(d * s, -1)
    c = np.sum(s * s) - 1
    disc = np.maximum(b * b - 4 * a * c, 0)
    t1 = np.clip((-b - np.sqrt(disc)) / (2 * a), 0, 1)
    t2 = np.clip((-b + np.sqrt(disc)) / (2 * a), 0, 1)
    return np.where(b * b - 4 * a * c > 0, t2 - t1, 0) * np.linalg.norm(pixels - source, axis=-1)


def box_chords(geometry, volume, lo_ijk, hi_ijk):
    """Exact length (mm) inside the box of voxels [lo, hi] (inclusive, voxel faces), via the slab method."""
    source, pixels = ray_endpoints(geometry)
    to_ijk = volume.ras_to_ijk
    s = to_ijk[:3, :3] @ source + to_ijk[:3, 3]
    d = pixels @ to_ijk[:3, :3].T + to_ijk[:3, 3] - s
    with np.errstate(divide="ignore", invalid="ignore"):
        ta = (np.asarray(lo_ijk) - 0.5 - s) / d
        tb = (np.asarray(hi_ijk) + 0.5 - s) / d
    t0 = np.clip(np.nanmax(np.minimum(ta, tb), -1), 0, 1)
    t1 = np.clip(np.nanmin(np.maximum(ta, tb), -1), 0, 1)
    return np.maximum(t1 - t0, 0) * np.linalg.norm(pixels - source, axis=-1)


@functools.lru_cache(maxsize=1)
def ellipsoid_phantom(rotation_key: str = "default"):
    """230^3 grid of 0.5 mm; an ellipsoid (semi-axes 45, 27, 36 mm, rotated) with partial-volume HU for the
    line integral and a binary label (voxel centre inside)."""
    rotation = ROTATION
    radii = np.array([45.0, 27.0, 36.0])
    center = np.array([1.3, -2.1, 0.7])
    volume = grid_volume(np.zeros((230, 230, 230), np.float32), 0.5, center_ras=(0, 0, 0))
    local = ((voxel_centers_ras(volume) - center) @ rotation / radii).astype(np.float32)  # unit-sphere frame
    norm = np.linalg.norm(local, axis=-1)
    # signed distance to the surface (first order), then the fraction of a 0.5 mm voxel inside
    gradient = np.linalg.norm(local / radii.astype(np.float32) / np.maximum(norm[..., None], 1e-9), axis=-1)
    distance = (norm - 1) / np.maximum(gradient, 1e-9)
    volume.array[:] = -1000 + (DENSE_HU + 1000) * np.clip(0.5 - distance / 0.5, 0, 1)
    labels = Volume((norm <= 1).astype(np.uint8), volume.ijk_to_ras, "labels")
    return volume, labels, center, radii


ROTATION = views.rotation_z(25) @ views.rotation_y(-15)


@pytest.mark.slow
@pytest.mark.parametrize("view, lao, cranial", [("chest-pa", 0, 0), ("carm-ap", 40, 25), ("lumbar-lateral", -15, 10)])
def test_ellipsoid_line_integrals_and_silhouette_match_the_analytic_values(view, lao, cranial):
    volume, labels, center, radii = ellipsoid_phantom()
    geometry = views.from_preset(view, (0, 0, 0), size=(200, 200), detector_mm=(200, 200), lao_deg=lao,
                                 cranial_deg=cranial)
    result = DrrProjector(volume, labels).render(geometry)
    chords = ellipsoid_chords(geometry, center, radii, ROTATION)
    exact = 2 * MU_WATER * chords  # mu = mu_water * (1 + 1000/1000)
    hit = chords > 0
    rmse = np.sqrt(np.mean((result.line_integral[hit] - exact[hit]) ** 2))
    assert rmse / exact[hit].mean() < 0.01  # relative to the mean value over the silhouette
    mask = result.masks()[0]
    iou = (mask & hit).sum() / (mask | hit).sum()
    assert iou >= 0.99
    # the label's path length is the chord through the voxelised ellipsoid: close to the exact chord
    assert np.abs(result.thickness_mm[0][hit] - chords[hit]).mean() < 0.5


@pytest.mark.parametrize("grid_rotation", [np.eye(3), views.rotation_z(33) @ views.rotation_x(-21)])
def test_box_line_integrals_are_exact_on_axis_aligned_and_oblique_grids(grid_rotation):
    array = np.full((40, 50, 60), -1000.0, np.float32)
    lo, hi = (12, 9, 7), (45, 38, 30)  # i, j, k inclusive
    array[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = DENSE_HU
    volume = grid_volume(array, 0.8, center_ras=(4, 5, -6), rotation=grid_rotation)
    geometry = views.from_carm(30, 15, volume.center_ras, size=(120, 100), detector_mm=(150, 125))
    result = DrrProjector(volume).render(geometry)
    exact = 2 * MU_WATER * box_chords(geometry, volume, lo, hi)
    np.testing.assert_allclose(result.line_integral, exact, atol=2e-5)


def test_files_in_lps_ras_and_flipped_orientations_give_the_same_image(tmp_path):
    """The same physical object stored as NRRD (LPS), NIfTI (RAS), with a flipped and permuted grid."""
    import SimpleITK as sitk

    rng = np.random.default_rng(3)
    array = np.full((30, 40, 50), -1000.0, np.float32)
    array[5:20, 10:30, 5:15] = 600.0  # an asymmetric "L" so that any flip would show
    array[5:10, 10:15, 15:40] = 1200.0
    array += rng.normal(0, 5, array.shape).astype(np.float32)
    original = grid_volume(array, 1.0, center_ras=(10, -5, 3), rotation=views.rotation_z(15))
    geometry = views.from_preset("chest-pa", original.center_ras, size=96, detector_mm=(100, 100))
    reference = DrrProjector(original).render(geometry).line_integral

    # same voxels, grid flipped along i and with i/k swapped: the IJK->RAS changes to match
    flipped = array[:, :, ::-1].transpose(2, 1, 0).copy()
    m = original.ijk_to_ras.copy()
    m[:3, 3] = m[:3, 3] + (array.shape[2] - 1) * m[:3, 0]
    m[:3, 0] = -m[:3, 0]
    m = m[:, [2, 1, 0, 3]]
    reoriented = Volume(flipped, m, "reoriented")
    images = {"reoriented": DrrProjector(reoriented).render(geometry).line_integral}

    for suffix in (".nrrd", ".nii.gz"):
        image = sitk.GetImageFromArray(array)
        lps = np.diag([-1.0, -1.0, 1.0]) @ original.ijk_to_ras[:3, :3]
        image.SetSpacing([1.0, 1.0, 1.0])
        image.SetDirection(lps.flatten().tolist())
        image.SetOrigin((np.diag([-1.0, -1.0, 1.0]) @ original.ijk_to_ras[:3, 3]).tolist())
        path = tmp_path / f"ct{suffix}"
        sitk.WriteImage(image, str(path))
        loaded = read_volume(path)
        np.testing.assert_allclose(loaded.ijk_to_ras, original.ijk_to_ras, atol=1e-4)
        images[suffix] = DrrProjector(loaded).render(geometry).line_integral
    for name, image in images.items():
        np.testing.assert_allclose(image, reference, rtol=1e-4, atol=1e-5, err_msg=name)


def two_overlapping_balls():
    volume = grid_volume(np.full((60, 60, 60), -1000.0, np.float32), 1.0)
    centres = voxel_centers_ras(volume)
    labels = np.zeros(volume.array.shape, np.uint8)
    first = np.linalg.norm(centres - (-6, 0, 0), axis=-1) < 12
    second = np.linalg.norm(centres - (8, 0, 0), axis=-1) < 9
    volume.array[first | second] = 700.0
    labels[first] = 3
    labels[second] = 7  # second wins where the voxels overlap; projections still overlap a lot
    return volume, Volume(labels, volume.ijk_to_ras, "labels")


def test_masks_keep_overlaps_and_label_image_takes_the_longest_path():
    volume, labels = two_overlapping_balls()
    geometry = views.from_preset("lumbar-lateral", (0, 0, 0), size=80, detector_mm=(80, 80))  # beam along x
    result = DrrProjector(volume, labels).render(geometry)
    assert result.classes.names == ["label_3", "label_7"]
    masks = result.masks()
    both = masks[0] & masks[1]
    assert both.sum() > 100  # the balls are behind each other along the beam
    winner = result.label_image()
    thick = result.thickness_mm
    assert np.all(winner[both] == np.where(thick[1][both] > thick[0][both], 2, 1))
    assert np.all(winner[masks[0] & ~masks[1]] == 1) and np.all(winner[~masks.any(0)] == 0)


def test_grouped_classes_sum_their_members_and_ignore_unrequested_labels():
    volume, labels = two_overlapping_balls()
    geometry = views.from_preset("chest-pa", (0, 0, 0), size=64, detector_mm=(80, 80))
    names = {3: "rib_left_1", 7: "rib_left_2", 9: "sternum"}
    grouped = LabelClasses.from_names(names, parse_group_spec("ribs = rib_left_1..2", list(names.values())))
    single = DrrProjector(volume, labels).render(geometry)
    together = DrrProjector(volume, labels, grouped).render(geometry)
    assert together.classes.names == ["ribs"]
    np.testing.assert_allclose(together.thickness_mm[0], single.thickness_mm.sum(0), rtol=1e-5, atol=1e-4)
    only_second = DrrProjector(volume, labels, LabelClasses.from_values({7: "b"})).render(geometry)
    np.testing.assert_allclose(only_second.thickness_mm[0], single.thickness_mm[1], rtol=1e-6)
    np.testing.assert_array_equal(only_second.line_integral, single.line_integral)


def test_group_spec_syntax():
    known = ["rib_left_1", "rib_left_2", "vertebrae_T1", "vertebrae_T2", "sternum"]
    groups = parse_group_spec("ribs = rib_left_1..2 # comment\nspine = vertebrae_*; sternum", known)
    assert groups == {"ribs": ["rib_left_1", "rib_left_2"], "spine": ["vertebrae_T1", "vertebrae_T2"],
                      "sternum": ["sternum"]}
    with pytest.raises(InputError, match="unknown label name"):
        LabelClasses.from_names({1: "a"}, {"x": ["b"]})
    with pytest.raises(InputError, match="in both"):
        LabelClasses.from_names({1: "a"}, {"x": ["a"], "y": ["a"]})


def test_unknown_label_values_are_reported_and_ignored():
    volume, labels = two_overlapping_balls()
    projector = DrrProjector(volume, labels, LabelClasses.from_values({3: "known"}), names_table={3: "known"})
    result = projector.render(views.from_preset("chest-pa", (0, 0, 0), size=32, detector_mm=(80, 80)))
    assert result.unknown_label_values == [7]
    assert result.classes.names == ["known"]


def test_bad_inputs_get_clear_errors():
    volume, labels = two_overlapping_balls()
    shifted = Volume(labels.array, labels.ijk_to_ras.copy(), "shifted labels")
    shifted.ijk_to_ras[0, 3] += 2.0
    with pytest.raises(InputError, match="label map grid differs from the CT grid"):
        DrrProjector(volume, shifted)
    with pytest.raises(InputError, match="not a single slice"):
        DrrProjector(Volume(np.zeros((1, 64, 64), np.float32), np.eye(4), "radiograph"))
    inside = views.from_preset("chest-pa", (0, 0, 0), source_to_detector_mm=100, source_to_isocenter_mm=20)
    with pytest.raises(GeometryError, match="source lies inside the CT volume"):
        DrrProjector(volume).render(inside)
    with pytest.raises(InputError, match="negative"):
        DrrProjector(volume, Volume(-labels.array.astype(np.int16), labels.ijk_to_ras))


def test_ray_missing_the_volume_gives_zero_and_no_labels():
    volume, labels = two_overlapping_balls()
    away = views.from_preset("chest-pa", (500, 0, 0), size=32, detector_mm=(50, 50))
    result = DrrProjector(volume, labels).render(away)
    assert result.line_integral.max() == 0 and not result.masks().any()
