"""The truncation mask's run walk (prefix sums) gives the pixels of the cell-by-cell walk it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import grid_volume
from truncation_reference import reference_mask
from XraySegSimLib import views
from XraySegSimLib.truncation import CutFaces


def cut_blobby_body(seed: int, oblique: bool):
    """A noisy ellipsoidal body with holes, cut by every face of an oblique grid (so all six sections and both
    run directions are exercised) or by the k faces of an axis-aligned grid of whole millimetres (exact ties of
    faces are likely)."""
    rng = np.random.default_rng(seed)
    shape = (30, 44, 52)
    volume = grid_volume(np.full(shape, -1000.0, np.float32), 2.0, center_ras=(4, -3, 6) if oblique else (0, 0, 0),
                         rotation=views.rotation_z(25) @ views.rotation_x(-15) if oblique else None)
    k, j, i = np.indices(shape)
    across = (30, 26) if oblique else (22, 18)  # the axis-aligned body is cut by its k faces only
    radius = np.sqrt(((i - 26) / across[0]) ** 2 + ((j - 20) / across[1]) ** 2 + ((k - 14) / 20) ** 2)
    body = (radius < 1.0) & (rng.random(shape) > 0.2)
    volume.array[body] = 40.0
    return volume


@pytest.mark.parametrize("seed, oblique", [(0, True), (1, True), (2, False)])
@pytest.mark.parametrize("view, lao, cranial", [("chest-pa", 0, 0), ("chest-lateral", 15, 10),
                                                ("carm-ap", 40, -30), ("lumbar-lateral", -70, 60)])
def test_run_walk_matches_the_cell_walk(seed, oblique, view, lao, cranial):
    volume = cut_blobby_body(seed, oblique)
    faces = CutFaces(volume.array, volume.ras_to_ijk, packed=False)
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
def test_run_walk_matches_the_cell_walk_on_the_chest_ct(chest_cut_faces, view_index):
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
