"""Contrast suppression (virtual non-contrast): which voxels become blood, which stay, and the export option."""

from __future__ import annotations

import json

import nrrd
import numpy as np
import pytest

from conftest import grid_volume, voxel_centers_ras, write_image
from XraySegSimLib.contrast import ContrastSettings, contrast_mask, enhancing_values, suppress_contrast
from XraySegSimLib.export import ExportConfig, run_export
from XraySegSimLib.export_inputs import CaseInput, load_mapping

HEART, SPINE = 51, 38  # TotalSegmentator v1: heart, vertebrae_T6
SPACING = 2.0


def _chest(shift_label_mm: float = 4.0):
    """Body cylinder (40 HU); an enhanced heart ball (350 HU, radius 20 mm) whose label is shifted by
    ``shift_label_mm`` along R (a registered label a few mm off); a spine (900 HU, labelled) touching the heart;
    an unlabelled dense ball (400 HU) 40 mm from the heart label."""
    volume = grid_volume(np.full((30, 48, 48), -1000.0, np.float32), SPACING)
    c = voxel_centers_ras(volume)
    body = np.linalg.norm(c[..., :2], axis=-1) < 45
    heart = np.linalg.norm(c - (5.0, 5.0, 0.0), axis=-1) < 20
    heart_label = np.linalg.norm(c - (5.0 + shift_label_mm, 5.0, 0.0), axis=-1) < 20
    spine = (np.linalg.norm(c[..., :2] - (5.0, -23.0), axis=-1) < 8)
    far = np.linalg.norm(c - (-30.0, -10.0, -20.0), axis=-1) < 6
    volume.array[body] = 40.0
    volume.array[heart] = 350.0
    volume.array[spine] = 900.0
    volume.array[far] = 400.0
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[heart_label] = HEART
    labels[spine] = SPINE
    return volume, labels, {"heart": heart, "spine": spine, "far": far}


NAMES = {HEART: "heart", SPINE: "vertebrae_T6", 52: "aorta", 5: "liver", 23: "kidney_cyst_left", 11: "lung_upper_lobe_left"}


def test_enhancing_names_are_blood_pools_and_enhancing_organs():
    assert enhancing_values(NAMES) == [5, HEART, 52]  # not the vertebra, the lung or the (water) cyst


def test_the_enhanced_heart_becomes_blood_and_bone_and_unlabelled_blobs_stay():
    volume, labels, parts = _chest()
    spacing = (SPACING,) * 3
    hu, report = suppress_contrast(volume.array, labels, NAMES, spacing)
    protected = ContrastSettings().protect_mm
    c = voxel_centers_ras(volume)
    spine_distance = np.min(np.stack([np.linalg.norm(c[..., :2] - (5.0, -23.0), axis=-1) - 8.0]), axis=0)
    heart_free = parts["heart"] & (spine_distance > protected + SPACING)
    assert (hu[heart_free] == 40.0).all(), "the whole enhanced ball, also where the shifted label misses it"
    outside_label = parts["heart"] & (labels != HEART) & heart_free
    assert outside_label.sum() > 100  # the shift leaves a crescent of the ball unlabelled: it is suppressed too
    np.testing.assert_array_equal(hu[parts["spine"]], 900.0)  # bone keeps every voxel
    np.testing.assert_array_equal(hu[parts["far"]], 400.0)  # not connected to the heart
    assert report["suppressed_ml"] == pytest.approx((hu != volume.array).sum() * SPACING ** 3 / 1000, abs=0.05)
    assert report["median_hu_before"] == 350.0 and report["enhancing_labels"] == 1
    assert (volume.array[parts["heart"]] == 350.0).all(), "the input is not changed"


def test_contrast_is_followed_along_a_vein_up_to_follow_mm():
    """An unlabelled dense vein (a tube along R, 1,500 HU) leaves the labelled heart: it is suppressed up to
    ``follow_mm`` along its course, the rest stays."""
    volume, labels, parts = _chest()
    c = voxel_centers_ras(volume)
    vein = (np.linalg.norm(c[..., 1:] - (5.0, 10.0), axis=-1) < 3) & (c[..., 0] > 20)
    volume.array[vein] = 1500.0
    mask = contrast_mask(volume.array, labels, NAMES, (SPACING,) * 3, ContrastSettings(follow_mm=10.0))
    heart_edge = 5.0 + 4.0 + 20.0  # the shifted label's right edge (R)
    assert mask[vein & (c[..., 0] < heart_edge + 8.0)].all()
    assert not mask[vein & (c[..., 0] > heart_edge + 10.0 + 2 * SPACING)].any()
    assert contrast_mask(volume.array, labels, NAMES, (SPACING,) * 3)[vein].all()  # default: 100 mm


def test_nothing_happens_without_enhancing_labels():
    volume, labels, _ = _chest()
    labels[labels == HEART] = 0
    hu, report = suppress_contrast(volume.array, labels, NAMES, (SPACING,) * 3)
    assert hu is volume.array and report["suppressed_ml"] == 0.0 and report["median_hu_before"] is None


@pytest.mark.slow
def test_export_with_suppress_contrast_darkens_the_heart_and_keeps_the_labels(tmp_path):
    import SimpleITK as sitk

    volume, labels, _ = _chest()
    ct = write_image(volume.array, volume.ijk_to_ras, tmp_path / "ct.nii.gz")
    lb = write_image(labels, volume.ijk_to_ras, tmp_path / "labels.nrrd")
    case = CaseInput("chest", str(ct), str(lb))
    outputs = {}
    for suppress in (False, True):
        config = ExportConfig(out=str(tmp_path / f"out{int(suppress)}"), view="chest-ap", views_per_ct=1, size=48,
                              physics="none", seed=3, test_fraction=0.0, randomize_geometry=False,
                              suppress_contrast=suppress)
        assert run_export([case], config, load_mapping("spine = vertebrae_T6")).n_ok == 1
        root = tmp_path / f"out{int(suppress)}" / "Dataset501_XraySeg"
        sidecar = json.loads(next((root / "sidecars").glob("*.json")).read_text())
        masks = nrrd.read(str(root / sidecar["files"]["masks"]), index_order="C")[0]
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(root / sidecar["files"]["image"])))
        outputs[suppress] = sidecar, masks, image
    plain, suppressed = outputs[False][0], outputs[True][0]
    assert plain["contrast_suppression"] is None
    report = suppressed["contrast_suppression"]
    ball_ml = 4 / 3 * np.pi * 20.0 ** 3 / 1000
    assert 0.6 * ball_ml < report["suppressed_ml"] < 1.05 * ball_ml and report["median_hu_before"] == 350.0
    np.testing.assert_array_equal(outputs[False][1], outputs[True][1])  # the spine's mask is the same
    assert plain["geometry"] == suppressed["geometry"]
    assert np.abs(outputs[False][2] - outputs[True][2]).max() > 0.05  # the image changed where the heart is
