"""The lumbar phantom (OpenSim meshes): reproducible from its seed, vertebrae in anatomical order, TotalSegmentator
values; and the one-class copy of a per-level dataset that the semantic lumbar model trains on."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def coarse_phantoms():
    from XraySegSimLib.phantom.lumbar import build_lumbar_phantom, random_params

    def build(seed: int):
        return build_lumbar_phantom(dataclasses.replace(random_params(seed), voxel_mm=3.0))

    return build(4), build(4), build(5)


def test_same_seed_same_phantom_other_seed_differs(coarse_phantoms):
    (ct_a, labels_a, _, _), (ct_b, labels_b, _, _), (ct_c, _, _, _) = coarse_phantoms
    assert np.array_equal(ct_a.array, ct_b.array) and np.array_equal(labels_a.array, labels_b.array)
    assert np.allclose(ct_a.ijk_to_ras, ct_b.ijk_to_ras)
    assert ct_a.array.shape != ct_c.array.shape or not np.array_equal(ct_a.array, ct_c.array)


def test_levels_are_stacked_top_down_with_totalsegmentator_values(coarse_phantoms):
    from XraySegSimLib.phantom.lumbar import NAMES

    ct, labels, names, report = coarse_phantoms[0]
    assert names == NAMES and names[31] == "vertebrae_L1" and names[26] == "vertebrae_S1"
    superior = {}
    for value in (33, 32, 31, 30, 29, 28, 27, 26):
        mask = labels.array == value
        assert mask.sum() > 50, names[value]
        superior[value] = labels.centroid_ras(mask)[2]
    heights = [superior[v] for v in (33, 32, 31, 30, 29, 28, 27, 26)]
    assert heights == sorted(heights, reverse=True)  # T11 highest, S1 lowest
    gaps = -np.diff(heights)
    assert np.all((gaps > 20) & (gaps < 50)), gaps  # 25-40 mm per lumbar level in adults
    # Femoral heads below S1, each on its own side (RAS: right is +R); the rib cage around T11-T12.
    for value, side in ((76, 1), (75, -1)):
        centre = labels.centroid_ras(labels.array == value)
        assert centre[2] < superior[26] - 30 and side * (centre[0] - labels.centroid_ras(labels.array == 26)[0]) > 50
    ribs = labels.array == 200
    k = np.flatnonzero(ribs.any(axis=(1, 2)))
    assert ribs.sum() > 200 and k.size and (k[0] + k[-1]) / 2 > np.flatnonzero((labels.array == 31).any(axis=(1, 2))).mean()
    box = ribs[k[0]:k[-1] + 1][:, ribs.any(axis=(0, 2))][:, :, ribs.any(axis=(0, 1))]
    assert box.mean() < 0.3  # thin curved bones, not a leaked solid (the rib-cage mesh has a few holes)
    bone = labels.array > 0
    assert 90 < np.median(ct.array[bone]) < 1300 and np.median(ct.array[~bone & (ct.array > -500)]) < 100


def test_semantic_copy_of_a_dataset_is_the_union_of_its_classes(tmp_path):
    from test_lumbar_study import export_lumbar_phantom
    from XraySegInferLib.dataset import read_dataset
    from XraySegInferLib.lumbar_study import semantic_dataset

    levels_set = read_dataset(export_lumbar_phantom(tmp_path, seed=1, voxel_mm=3.0, views=2, size=96))
    merged = read_dataset(semantic_dataset(tmp_path / "x", tmp_path / "y"))
    assert merged.class_names == ["vertebra"] and len(merged.cases) == len(levels_set.cases) == 2
    for a, b in zip(levels_set.cases, merged.cases):
        image_a, masks_a, spacing_a = levels_set.load(a)
        image_b, masks_b, spacing_b = merged.load(b)
        assert np.array_equal(image_a, image_b) and spacing_a == spacing_b
        unknown = (masks_a == 255).any(axis=0)
        assert np.array_equal(masks_b[0] == 255, unknown)
        assert np.array_equal(masks_b[0] == 1, (masks_a == 1).any(axis=0) & ~unknown)
        assert (masks_b[0] == 1).sum() > 100


def test_bone_has_the_areal_density_of_a_real_cortex_and_core(coarse_phantoms):
    """Version 3: the shell, thicker than a real cortex, carries the real cortex's HU x mm above the core, and the
    core is adult trabecular bone (version 2's 900-1,300 HU shell gave a vertebra 2-3x a CT's bone mass)."""
    from XraySegSimLib.phantom.lumbar import random_params, shell_hu

    for seed in range(40):
        p = random_params(seed)
        core = p.trabecular_hu * p.bone_density
        shell = shell_hu(core, p.cortex_hu_true * p.bone_density, p.cortex_mm_true, p.cortical_mm)
        assert np.isclose((shell - core) * p.cortical_mm, (p.cortex_hu_true * p.bone_density - core) * p.cortex_mm_true)
        assert 100 < core < 290 and 300 < shell < 1500 and 0.5 <= p.cortex_mm_true <= 1.2 < 1.5 <= p.cortical_mm
    _, _, _, report = coarse_phantoms[0]
    p = random_params(4)
    assert np.isclose(report["trabecular_hu"], round(p.trabecular_hu * p.bone_density, 1))
    assert shell_hu(100.0, 1600.0, 3.0, 2.0) == 1600.0  # a shell never brighter than the cortex it stands for


def test_each_vertebra_has_its_own_scale_about_its_centre():
    """Version 4: one vertebra's own scale changes its size by that factor and leaves its centre and the other
    vertebrae where they were."""
    import dataclasses

    from vtk.util.numpy_support import vtk_to_numpy

    from XraySegSimLib.phantom.lumbar import VERTEBRAE, posed_meshes, random_params

    base = dataclasses.replace(random_params(4), vertebra_scale=((1.0, 1.0, 1.0),) * 7)
    factors = [(1.0, 1.0, 1.0)] * 7
    factors[VERTEBRAE.index("vertebrae_L3")] = (1.0, 1.2, 1.0)  # OpenSim Y: height
    plain, tall = posed_meshes(base), posed_meshes(dataclasses.replace(base, vertebra_scale=tuple(factors)))
    points = {name: (vtk_to_numpy(plain[name].GetPoints().GetData()), vtk_to_numpy(tall[name].GetPoints().GetData()))
              for name in ("vertebrae_L3", "vertebrae_L2")}
    a, b = points["vertebrae_L3"]
    assert np.allclose(a.mean(axis=0), b.mean(axis=0), atol=0.5)  # mm: the centre stays (smoothing moves it a hair)
    assert np.ptp(b[:, 2]) / np.ptp(a[:, 2]) == pytest.approx(1.2, abs=0.03)  # RAS S: the vertebra is 20 % taller
    assert np.allclose(*points["vertebrae_L2"])
    draws = np.array(random_params(9).vertebra_scale)
    assert draws.shape == (7, 3) and np.ptp(draws, axis=0).min() > 0.02 and (draws > 0.87).all() and (draws < 1.13).all()
