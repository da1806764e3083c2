"""The bundled wrist model (Resources/Models/wrist, made by ``make train-wrist``) on a wrist it has never seen.

A fresh virtual wrist (a seed outside the training and test seeds: new pose, size, density and soft tissue) is
rendered PA and lateral through the wrist physics chain and segmented with the package loaded by path (its
SHA-256 and manifest checked). The mean Dice over the 10 bones against the exactly projected labels must stay
within 0.10 of the card's figure for that view on the unseen test wrists.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "Resources" / "Models" / "wrist"
CLASSES = REPO / "tools" / "train-wrist" / "classes.json"
MARGIN = 0.10  # one view of one wrist here; 36 views of 6 wrists on the card
PAPER_BONES = ["radius", "ulna", "scaphoid", "lunate", "triquetrum", "pisiform", "trapezium", "trapezoid",
               "capitate", "hamate"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wrist_model():
    from XraySegInferLib.inference import Predictor

    if not (BUNDLED / "model.json").is_file():
        pytest.skip("no bundled model in Resources/Models/wrist (run 'make train-wrist')")
    return Predictor.from_package(BUNDLED, "cpu")


@pytest.fixture(scope="module")
def fresh_wrist(tmp_path_factory):
    from XraySegSimLib.phantom.wrist import random_params, write_wrist_phantom

    folder = tmp_path_factory.mktemp("fresh-wrist")
    write_wrist_phantom(folder, random_params(777))  # neither a training (0-23) nor a test (1000-1005) seed
    return folder


def test_card_has_the_per_view_table(wrist_model):
    card = wrist_model.card
    assert wrist_model.class_names == PAPER_BONES and card["mode"] == "multilabel"
    assert (BUNDLED / "model.safetensors").stat().st_size < 10e6 and (BUNDLED / "README.md").is_file()
    per_view = card["metrics"]["held_out_phantoms"]["per_view"]
    assert set(per_view) == {"wrist-pa", "wrist-oblique-pronated", "wrist-lateral", "wrist-oblique-supinated"}
    for row in per_view.values():
        assert set(row["per_class"]) == set(PAPER_BONES) and row["images"] >= 12


@pytest.mark.parametrize("detector_pixel_mm", [None, 0.15], ids=["card-pixels", "detector-0.15mm"])
@pytest.mark.parametrize("preset", ["wrist-pa", "wrist-lateral"])
def test_bundled_wrist_model_on_a_fresh_virtual_wrist(wrist_model, fresh_wrist, preset, detector_pixel_mm):
    """The card's field at its own pixels (256 px), and the same field at a wrist DX detector's 0.15 mm pixels,
    which the predictor resamples to the card's spacing and back (Dice on the 0.15 mm grid)."""
    from XraySegInferLib.metrics import per_class_metrics
    from XraySegInferLib.reader import Radiograph
    from XraySegSimLib import DrrProjector, physics, read_volume, views
    from XraySegSimLib.export_inputs import load_mapping, names_table
    from XraySegSimLib.materials import MaterialModel

    ct = read_volume(fresh_wrist / "ct.nii.gz")
    labels = read_volume(fresh_wrist / "labels.nii.gz")
    classes = load_mapping(str(CLASSES)).classes_for(names_table(str(fresh_wrist / "names.csv")))
    assert classes.names == PAPER_BONES
    projector = DrrProjector(ct, labels, classes, threads=2, materials=MaterialModel())
    # Aimed as the training export aims (centroid of the 10 bones, 15-35 mm along -S: the carpus), over the
    # card's field (256 px at its pixel spacing, the training images' detector pixels).
    isocenter = ct.centroid_ras(np.isin(labels.array, sorted(classes.values))) + np.array([4.0, 0.0, -22.0])
    field_mm = 256 * wrist_model.model.spacing_mm[0]
    size = 256 if detector_pixel_mm is None else int(round(field_mm / detector_pixel_mm))
    geometry = views.from_preset(preset, isocenter, size=size, detector_mm=(field_mm, field_mm), lao_deg=4.0,
                                 cranial_deg=-3.0)
    result = projector.render(geometry)
    sim = physics.simulate_radiograph(result, preset, rng=777)
    spacing = (float(geometry.spacing[1]), float(geometry.spacing[0]))
    prediction = wrist_model.predict(Radiograph(sim.image, "MONOCHROME2", spacing, "test"))
    dice = per_class_metrics(prediction.masks, result.masks() > 0, spacing, hd95=False)["dice"]
    card = wrist_model.card["metrics"]["held_out_phantoms"]["per_view"][preset]
    floor = card["mean_dice"] - MARGIN
    report = ", ".join(f"{n} {d:.3f}" for n, d in zip(PAPER_BONES, dice))
    assert np.nanmean(dice) >= floor, f"{preset}: mean Dice {np.nanmean(dice):.3f} < floor {floor:.3f}: {report}"
    assert dice[0] > 0.8 and dice[1] > 0.7, report  # radius and ulna are large: always found
    print(json.dumps({"view": preset, "pixels": size, "mean_dice": float(np.nanmean(dice)), "floor": floor}))
