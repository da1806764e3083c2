"""The truncation mask's fast pass (whole tiles, block walks) gives the pixels of the cell-by-cell walk it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import grid_volume
from truncation_reference import reference_mask
from XraySegSimLib import views
from XraySegSimLib.truncation import CutFaces


def cut_blobby_body(seed: int, oblique: bool, holes: bool = True):
    """A noisy ellipsoidal body with holes (or solid, so that whole tiles are hit through full squares), cut by
    every face of an oblique grid (so all six sections and both run directions are exercised) or by the k faces
    of an axis-aligned grid of whole millimetres (exact ties of faces are likely)."""
    rng = np.random.default_rng(seed)
    shape = (30, 44, 52)
    volume = grid_volume(np.full(shape, -1000.0, np.float32), 2.0, center_ras=(4, -3, 6) if oblique else (0, 0, 0),
                         rotation=views.rotation_z(25) @ views.rotation_x(-15) if oblique else None)
    k, j, i = np.indices(shape)
    across = (30, 26) if oblique else (22, 18)  # the axis-aligned body is cut by its k faces only
    radius = np.sqrt(((i - 26) / across[0]) ** 2 + ((j - 20) / across[1]) ** 2 + ((k - 14) / 20) ** 2)
    body = (radius < 1.0) & (rng.random(shape) > (0.2 if holes else 0.0))
    volume.array[body] = 40.0
    return volume


@pytest.mark.parametrize("seed, oblique, holes", [(0, True, True), (1, True, True), (2, False, True),
                                                  (3, True, False), (4, False, False)])
@pytest.mark.parametrize("view, lao, cranial", [("chest-pa", 0, 0), ("chest-lateral", 15, 10),
                                                ("carm-ap", 40, -30), ("lumbar-lateral", -70, 60)])
@pytest.mark.parametrize("side_depth_mm", [np.inf, 12.0], ids=["sides-without-end", "sides-12mm"])
def test_fast_pass_matches_the_cell_walk(seed, oblique, holes, view, lao, cranial, side_depth_mm):
    volume = cut_blobby_body(seed, oblique, holes)
    faces = CutFaces(volume.array, volume.ras_to_ijk, packed=False, side_depth_mm=side_depth_mm)
    cut = faces.cut_voxels
    assert cut["k_low"] > 0 and cut["k_high"] > 0 and (not oblique or all(n > 0 for n in cut.values()))
    geometry = views.from_preset(view, volume.center_ras, size=(96, 80), detector_mm=(700, 600), lao_deg=lao,
                                 cranial_deg=cranial)
    fast, reference = faces.mask(geometry), reference_mask(faces, geometry)
    assert 0.05 < reference.mean() < 0.95, reference.mean()  # both kinds of pixel are there
    np.testing.assert_array_equal(fast, reference)


@pytest.fixture(scope="module")
def chest_cut_faces(sample_chest_ct):
    from XraySegSimLib import read_volume

    ct = read_volume(sample_chest_ct.ct_path)
    labels = read_volume(sample_chest_ct.labels_path)
    return ct, CutFaces(ct.array, ct.ras_to_ijk, labels=labels.array, packed=False)


@pytest.mark.parametrize("view_index", range(3))
def test_fast_pass_matches_the_cell_walk_on_the_chest_ct(chest_cut_faces, view_index):
    """The exporter's own random chest AP views (the chest CT is cut at both axial ends)."""
    from XraySegSimLib.export_config import ExportConfig
    from XraySegSimLib.export_geometry import random_geometry, sample_rng

    ct, faces = chest_cut_faces
    assert faces.cut_voxels["k_low"] > 10000 and faces.cut_voxels["k_high"] > 10000
    config = ExportConfig(out="unused", view="chest-ap", size=256)
    geometry = random_geometry(config, ct.center_ras, sample_rng(0, "chest", view_index))[0]
    fast, reference = faces.mask(geometry), reference_mask(faces, geometry)
    assert 0.02 < reference.mean() < 0.98, reference.mean()
    np.testing.assert_array_equal(fast, reference)


def tile_verdicts(faces: CutFaces, geometry):
    """Per tile of the fast pass: (rows, cols, passed by every face, hit whole), from its own two tests."""
    from XraySegSimLib.truncation import TILE, _tile_hit_whole, _tile_misses

    source, origin, column_step, row_step = faces.detector_in_voxels(geometry)
    cols, rows = geometry.size
    for r_lo in range(0, rows, TILE):
        for c_lo in range(0, cols, TILE):
            r_hi, c_hi = min(r_lo + TILE, rows) - 1, min(c_lo + TILE, cols) - 1
            passed, whole = True, False
            for face in range(6):
                box = faces._boxes[face]
                if box[0] >= box[1]:
                    continue
                beyond = _tile_misses(face, box, source, origin, column_step, row_step, faces.shape_kji, r_lo, r_hi,
                                      c_lo, c_hi)
                passed &= beyond < 0
                whole |= beyond == 4 and _tile_hit_whole(
                    face, faces._sections[face], faces._blocks[face], faces._depths[face], box, faces.limits[face],
                    source, origin, column_step, row_step, faces.shape_kji, r_lo, r_hi, c_lo, c_hi)
            yield slice(r_lo, r_hi + 1), slice(c_lo, c_hi + 1), passed, whole


@pytest.mark.parametrize("view, lao, cranial", [("chest-pa", 0, 0), ("chest-lateral", 15, 10), ("carm-ap", 40, -30)])
@pytest.mark.parametrize("side_depth_mm", [np.inf, 12.0], ids=["sides-without-end", "sides-12mm"])
def test_tiles_settled_whole_agree_with_the_cell_walk_pixel_by_pixel(view, lao, cranial, side_depth_mm):
    """Both tile tests are used (tiles passed and tiles hit whole), and each is right for every pixel of the tile."""
    volume = cut_blobby_body(5, True, holes=False)
    faces = CutFaces(volume.array, volume.ras_to_ijk, packed=False, side_depth_mm=side_depth_mm)
    geometry = views.from_preset(view, volume.center_ras, size=(160, 128), detector_mm=(700, 600), lao_deg=lao,
                                 cranial_deg=cranial)
    reference = reference_mask(faces, geometry)
    n_passed = n_whole = 0
    for rows, cols, passed, whole in tile_verdicts(faces, geometry):
        assert not (passed and whole)
        if passed:
            n_passed += 1
            assert not reference[rows, cols].any()
        if whole:
            n_whole += 1
            assert reference[rows, cols].all()
    assert n_passed > 20 and n_whole > 5, (n_passed, n_whole)


@pytest.mark.parametrize("high", [False, True], ids=["low-face-corner-on-the-plane", "high-face-corner-an-ulp-beyond"])
def test_a_tile_corner_on_a_face_plane_still_bounds_the_tile(high):
    """A tile corner on an i face's plane (or an ulp beyond it, where its own ray's part beyond the face rounds to
    nothing) is a corner of the region its neighbours' rays fill beyond the face: the tile must not be passed."""
    from types import SimpleNamespace

    hu = np.full((16, 16, 16), -1000.0)
    hu[4, 4, 15 if high else 0] = 40.0  # one body voxel on the face
    ras_to_ijk = np.eye(4)
    ras_to_ijk[:3, 3] = -0.5  # voxel coordinates (shifted by 0.5) are RAS
    faces = CutFaces(hu, ras_to_ijk, packed=False)
    if high:
        geometry = SimpleNamespace(source=(-1000.0, 4.0, 4.0), origin=(np.nextafter(16.0, 17.0), 4.0, 4.0),
                                   column_axis=(1.0, 1.0, 0.0), row_axis=(1.0, 1.0, 1.0), spacing=(1.0, 1.0),
                                   size=(8, 8))
    else:
        geometry = SimpleNamespace(source=(1000.0, 4.0, 4.0), origin=(0.0, 4.0, 4.0), column_axis=(-1.0, 1.0, 0.0),
                                   row_axis=(-1.0, 1.0, 1.0), spacing=(1.0, 1.0), size=(8, 8))
    reference = reference_mask(faces, geometry)
    assert reference.sum() == 2
    np.testing.assert_array_equal(faces.mask(geometry), reference)
