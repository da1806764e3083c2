"""Plausibility rules of a PA chest segmentation (XraySegInferLib.plausibility) and ``xrayseg plausibility``.

The reference is real: simulated PA views of the sample chest CT, exported by ``xrayseg export`` with its
physics, whose exactly projected labels must pass every rule. Each rule must then fail when the anatomy it
guards is broken on purpose (sides swapped, clavicles moved down, the heart painted as spine, bones split into
fragments, humeri put on the midline, ribs removed). On the real chest CR RG1 the landmarks (lung fields,
midline, heart) must be found where a PA chest has them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CLASSES = REPO / "tools" / "train-sample" / "classes.json"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chest_views(sample_chest_ct, tmp_path_factory):
    """Four randomised chest-pa views of the sample CT with physics, as the training export makes them."""
    from XraySegInferLib.dataset import read_dataset
    from XraySegSimLib.physics import normalize_radiograph

    out = tmp_path_factory.mktemp("plausibility")
    command = [sys.executable, "-m", "XraySegInferLib.entry", "export", "--ct", str(sample_chest_ct.ct_path),
               "--labels", str(sample_chest_ct.labels_path), "--classes", str(CLASSES), "--view", "chest-pa",
               "--physics", "chest-pa", "--range", "magnification_scale=1.02,1.12", "--size", "256",
               "--views-per-ct", "4", "--seed", "3", "--test-fraction", "0", "--no-previews", "--threads", "1",
               "--quiet", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    dataset = read_dataset(out)
    views = []
    for case in dataset.split("train"):
        image, masks, _ = dataset.load(case)
        views.append((normalize_radiograph(image, "MONOCHROME2", (0.5, 99.5), None, 1.0), masks == 1))
    return dataset.class_names, views


def _rules(report) -> dict:
    return {r.name: r for r in report.rules}


def test_exact_labels_of_simulated_views_pass_every_rule(chest_views):
    from XraySegInferLib.plausibility import check_chest_pa

    names, views = chest_views
    for image, masks in views:
        report = check_chest_pa(masks, names, image)
        lm = report.landmarks
        assert lm is not None
        # Two lung fields either side of the midline, a heart region between them in the lower chest.
        assert np.nonzero(lm.lung_image_left)[1].mean() < lm.midline_col < np.nonzero(lm.lung_image_right)[1].mean()
        assert 0.35 < lm.thorax_width_px / image.shape[1] < 0.9
        assert lm.heart.sum() > 0 and np.nonzero(lm.heart)[0].min() > lm.lung_top_row + 0.4 * lm.lung_height_px
        failed = [(r.name, r.value, r.threshold) for r in report.rules if r.passed is False]
        assert not failed, failed
        assert len([r for r in report.rules if r.passed]) >= 17
        assert report.passed


def _broken(names, masks, lm, how: str) -> np.ndarray:
    masks = masks.copy()
    index = {n: i for i, n in enumerate(names)}
    if how == "sides":  # the patient's right ribs called left and vice versa
        masks[[index["ribs_left"], index["ribs_right"]]] = masks[[index["ribs_right"], index["ribs_left"]]]
    elif how == "clavicles_low":
        masks[index["clavicles"]] = np.roll(masks[index["clavicles"]], int(0.5 * lm.lung_height_px), axis=0)
    elif how == "heart_as_spine":
        masks[index["thoracic_spine"]] |= lm.heart
    elif how == "fragments":  # clavicles cut into 3x3 pixel islands
        r, c = np.indices(masks.shape[1:])
        masks[index["clavicles"]] &= ((r // 3) % 2 == 0) & ((c // 3) % 2 == 0)
    elif how == "humeri_central":
        rows, cols = np.nonzero(masks[index["humeri"]])
        masks[index["humeri"]] = False
        masks[index["humeri"], rows, np.clip(cols - cols.mean() + lm.midline_col, 0, masks.shape[2] - 1)
              .astype(int)] = True
    elif how == "no_ribs":
        masks[[index["ribs_left"], index["ribs_right"]]] = False
    elif how == "intercostal":  # the spaces between the ribs painted instead of the ribs
        for name, lung in (("ribs_left", lm.lung_image_right), ("ribs_right", lm.lung_image_left)):
            masks[index[name]] = lung & ~masks[index[name]]
    return masks


@pytest.mark.parametrize("how, must_fail", [
    ("sides", ("ribs_left_correct_side", "ribs_right_correct_side")),
    ("clavicles_low", ("clavicles_upper_third",)),
    ("heart_as_spine", ("heart_not_painted_as_axial_bone",)),
    ("fragments", ("clavicles_not_fragmented",)),
    ("humeri_central", ("humeri_lateral",)),
    ("no_ribs", ("ribs_cover_right_lung", "ribs_cover_left_lung")),
])
def test_each_rule_fails_when_its_anatomy_is_broken(chest_views, how, must_fail):
    from XraySegInferLib.plausibility import check_chest_pa

    names, views = chest_views
    image, masks = views[0]
    good = check_chest_pa(masks, names, image)
    report = check_chest_pa(_broken(names, masks, good.landmarks, how), names, image, good.landmarks)
    rules = _rules(report)
    for name in must_fail:
        assert rules[name].passed is False, (how, name, rules[name])
    assert not report.passed


def test_rib_shadow_contrast_is_high_for_ribs_and_negative_between_them(chest_views):
    """Exact rib labels of simulated views lie on the bright bands (0.3-0.4 on the sample CT's views); the
    intercostal spaces painted instead lie between them; no ribs give nothing to measure (NaN)."""
    from XraySegInferLib.plausibility import check_chest_pa, rib_shadow_contrast

    names, views = chest_views
    ribs = [names.index("ribs_left"), names.index("ribs_right")]
    for image, masks in views:
        lm = check_chest_pa(masks, names, image).landmarks
        exact = rib_shadow_contrast(image, masks[ribs].any(0), lm)
        between = rib_shadow_contrast(image, _broken(names, masks, lm, "intercostal")[ribs].any(0), lm)
        assert min(exact) > 0.1 and max(between) < 0.0, (exact, between)
        assert np.isnan(rib_shadow_contrast(image, np.zeros(image.shape, bool), lm)).all()


def test_no_lung_fields_is_a_failure_not_a_pass():
    from XraySegInferLib.plausibility import check_chest_pa

    flat = np.full((128, 128), 0.5, np.float32)
    report = check_chest_pa(np.zeros((7, 128, 128), bool), ["ribs_left"] * 7, flat)
    assert report.landmarks is None and not report.passed and report.rules[0].name == "lung_fields_found"


def test_rg1_landmarks_and_the_cli(tmp_path):
    """The real CR RG1 (a PA chest): lung fields either side of a midline near the image centre, the heart
    region in the lower chest; ``xrayseg plausibility`` writes every rule with value, threshold and reason."""
    from XraySegInferLib.entry import main
    from XraySegInferLib.plausibility import chest_landmarks
    from XraySegInferLib.reader import read_radiograph
    from XraySegInferLib.sample_radiograph import fetch_sample_radiograph

    path = fetch_sample_radiograph("RG1_UNCR.dcm")
    with pytest.warns(UserWarning):  # RG1 has no pixel spacing
        image = read_radiograph(path).normalized()
    lm = chest_landmarks(image)
    assert lm is not None
    rows, cols = image.shape
    assert abs(lm.midline_col - cols / 2) < 0.08 * cols
    assert 0.6 < lm.thorax_width_px / cols < 0.95
    assert lm.lung_top_row < 0.2 * rows and 0.55 * rows < lm.lung_bottom_row < 0.95 * rows
    heart_rows, heart_cols = np.nonzero(lm.heart)
    assert heart_rows.min() > rows * 0.35 and abs(heart_cols.mean() - lm.midline_col) < 0.15 * lm.thorax_width_px

    assert main(["plausibility", str(path), "--out", str(tmp_path), "--threads", "1"]) == 0
    result = json.loads((tmp_path / "plausibility.json").read_text())
    assert result["radiograph"].endswith("RG1_UNCR.dcm") and result["spacing_source"].startswith("fallback")
    assert len(result["rules"]) >= 17
    assert all(r["threshold"] and r["reason"] for r in result["rules"])
    assert result["passed"] == (result["rules_failed"] == 0)
    shadows = result["rib_shadow_contrast"]  # the bundled model's ribs, measured against RG1's rib shadows
    assert np.isfinite(shadows["image_left_lung"]) and np.isfinite(shadows["image_right_lung"])
    assert (tmp_path / "plausibility.png").stat().st_size > 10_000
    assert "| rule | result |" in (tmp_path / "plausibility.md").read_text()
