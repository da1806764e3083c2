"""The bundled chest model (Resources/Models/chest, made by ``make train-sample``): a round trip.

A fresh radiograph of the sample chest CT is rendered at a view that no training sample used (the exporter
draws its views at random from ``default_rng([seed, crc32(ct), view])``; this one is a fixed, nominal-looking
view with its own angles, magnification and noise seed), through the same physics chain and the model card's
normalisation, and segmented with the package loaded as ``xrayseg infer`` loads it (SHA-256 checked). The Dice
against the exactly projected labels must stay within 0.10 of the held-out Dice stated in the card.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "Resources" / "Models" / "chest"
CLASSES = REPO / "tools" / "train-sample" / "classes.json"
# Allowed drop below the card's held-out mean Dice (one view here, 40 there; a different noise draw).
MARGIN = 0.10

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundled():
    from XraySegInferLib.cli import load_predictor

    if not (BUNDLED / "model.json").is_file():
        pytest.skip("no bundled model in Resources/Models/chest (run 'make train-sample')")
    predictor = load_predictor(None, "cpu")  # what 'xrayseg infer' without --model uses
    assert predictor.model.folder.resolve() == BUNDLED.resolve()
    return predictor


def test_bundled_package_is_small_and_documented(bundled):
    card = bundled.card
    assert (BUNDLED / "model.safetensors").stat().st_size < 10e6
    assert bundled.class_names == ["ribs_left", "ribs_right", "clavicles", "scapulae", "humeri", "sternum",
                                   "thoracic_spine"]
    assert all("snomed" in c and len(c["color"]) == 3 for c in card["classes"])
    held_out = card["metrics"]["held_out_views"]
    assert "SAME CT" in held_out["held_out"] and held_out["cases"] >= 20
    assert set(held_out["per_class"]) == set(bundled.class_names)
    assert (BUNDLED / "README.md").is_file()
    # Transfer: leave-one-body-out over the two training bodies, and the rules on the real CR RG1.
    lobo = card["metrics"]["leave_one_body_out"]
    assert len(lobo["folds"]) == 2 and set(lobo["mean_dice_per_class"]) == set(bundled.class_names)
    for fold in lobo["folds"]:
        assert fold["body"] not in fold["train_bodies"] and fold["cases"] >= 20
    assert card["validated"] and card["not_validated"]
    # It must not transfer worse than the model it replaced: leave-one-body-out no lower than the previous
    # model's, less about the seed-to-seed spread of the recipe (+-0.008, README). (Up to 0.3.0 the rule was a higher
    # sample-CT fold, as transfer was the reason to replace; 0.4.0 was bundled for its ribs on RG1, below, and
    # scores 0.625 there against 0.626.)
    previous = card["metrics"]["previous_model"]
    assert lobo["mean_dice"] >= previous["leave_one_body_out_as_published"]["mean_dice"] - 0.01
    # ...and on the real CR no rule of placement fails (side, height, midline, lung coverage, heart); only
    # fragmentation rules may (each run fails one or two of them; 0.3.0 failed clavicles and humeri).
    rg1 = card["metrics"]["rg1_plausibility"]
    assert all(rule["passed"] for name, rule in rg1["rules"].items() if not name.endswith("_not_fragmented"))
    # 0.4.0 was bundled for its ribs, which follow RG1's rib shadows where 0.3.0 painted broad regions
    # (rib-shadow contrast 0.07 / -0.09): in both lung fields clearly above the previous model's.
    shadows, before = rg1["rib_shadow_contrast"], previous["rg1_plausibility"]["rib_shadow_contrast"]
    lungs = ("image_left_lung", "image_right_lung")
    assert min(shadows[k] for k in lungs) > max(before[k] for k in lungs) + 0.05, (shadows, before)


def test_rg1_rules_are_what_the_card_says(bundled, tmp_path):
    """``xrayseg plausibility`` (default input: the real chest CR RG1) with the bundled model gives the rule
    results stored on the card, rule by rule."""
    from XraySegInferLib.entry import main

    assert main(["plausibility", "--out", str(tmp_path), "--threads", "1"]) == 0
    result = json.loads((tmp_path / "plausibility.json").read_text())
    stored = bundled.card["metrics"]["rg1_plausibility"]
    assert result["rules_passed"] == stored["rules_passed"] and result["rules_failed"] == stored["rules_failed"]
    for rule in result["rules"]:
        assert rule["passed"] == stored["rules"][rule["name"]]["passed"], rule
        assert rule["value"] == pytest.approx(stored["rules"][rule["name"]]["value"], abs=0.02), rule
    for lung in ("image_left_lung", "image_right_lung"):
        assert result["rib_shadow_contrast"][lung] == pytest.approx(stored["rib_shadow_contrast"][lung], abs=0.02)


def test_round_trip_on_a_new_view_of_the_sample_ct(bundled, sample_chest_ct):
    from XraySegInferLib.metrics import per_class_metrics
    from XraySegInferLib.reader import Radiograph
    from XraySegSimLib import DrrProjector, physics, read_volume, views
    from XraySegSimLib.export_inputs import load_mapping, names_table
    from XraySegSimLib.materials import MaterialModel

    ct = read_volume(sample_chest_ct.ct_path)
    labels = read_volume(sample_chest_ct.labels_path)
    classes = load_mapping(str(CLASSES)).classes_for(names_table("totalsegmentator"))
    assert classes.names == bundled.class_names
    projector = DrrProjector(ct, labels, classes, threads=2, materials=MaterialModel())
    # Aimed like the exporter (centroid of the labelled bones), with a magnification inside the training range.
    isocenter = ct.centroid_ras(np.isin(labels.array, sorted(classes.values))) + np.array([3.0, 0.0, -7.0])
    geometry = views.from_preset("chest-pa", isocenter, size=256, source_to_detector_mm=1750.0,
                                 source_to_isocenter_mm=1750.0 / 1.16, lao_deg=3.5, cranial_deg=-2.5)
    result = projector.render(geometry)
    sim = physics.simulate_radiograph(result, "chest-pa", rng=20260101)
    spacing = (float(geometry.spacing[1]), float(geometry.spacing[0]))  # (row_mm, column_mm)
    prediction = bundled.predict(Radiograph(sim.image, "MONOCHROME2", spacing, "test"))

    reference = result.masks() > 0
    dice = per_class_metrics(prediction.masks, reference, spacing, hd95=False)["dice"]
    card = bundled.card["metrics"]["held_out_views"]
    floor = card["mean_dice_over_classes"] - MARGIN
    report = ", ".join(f"{n} {d:.3f}" for n, d in zip(bundled.class_names, dice))
    assert np.nanmean(dice) >= floor, f"mean Dice {np.nanmean(dice):.3f} < floor {floor:.3f}: {report}"
    assert np.all(dice >= 0.5), report
    print(json.dumps({"mean_dice": float(np.nanmean(dice)), "floor": floor}))
