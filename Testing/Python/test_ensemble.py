"""Ensembles of 2D radiograph models (ensemble, xrayseg ensemble)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from XraySegInferLib.errors import InputError
from XraySegInferLib.inference import Predictor
from XraySegInferLib.package import load_package, make_card, save_package

ARCH = {"name": "UNet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0, "norm": "instance"}
CLASSES = [{"name": "ribs_left", "color": (1, 0, 0)}, {"name": "ribs_right", "color": (0, 1, 0)},
           {"name": "spine", "color": (0, 0, 1)}]


def _package(folder, seed: int, mode: str = "multilabel", classes=CLASSES, flip_tta: bool = False):
    from XraySegInferLib.networks import build_network

    torch.manual_seed(seed)
    card = make_card(name="tiny", architecture=ARCH, mode=mode, classes=classes, spacing_mm=(1.0, 1.0),
                     patch_size=(32, 32), normalization={"window_percentiles": [0.5, 99.5], "gamma": 1.0},
                     training={"seed": seed}, flip_tta=flip_tta)
    return save_package(folder, build_network(ARCH, len(classes), mode), card)


def _probabilities(folder, image: np.ndarray) -> np.ndarray:
    return Predictor(load_package(folder), "cpu", flip_tta=True).predict_normalized(image, (1.0, 1.0))


@pytest.mark.parametrize("mode", ["multilabel", "multiclass"])
def test_the_ensemble_probability_is_the_mean_of_its_members(tmp_path, mode):
    """Through the Predictor with flip TTA (every member allows it): on an image that fits the patch, the members'
    mean probability to 1e-5, and one that neither member gives alone. On a larger image the sliding window
    blends each network's logits where tiles overlap, the ensemble's as well as a member's, so there the two
    agree closely but not exactly."""
    from XraySegInferLib.ensemble import combine_packages

    members = [_package(tmp_path / f"m{seed}", seed, mode, flip_tta=True) for seed in (0, 1)]
    folder = combine_packages(members, tmp_path / "ensemble")
    card = json.loads((folder / "model.json").read_text())
    assert card["architecture"] == {"name": "Ensemble", "members": 2, "member": ARCH}
    assert card["metrics"] == {} and card["inference"]["flip_tta"] is True
    assert [m["training"]["seed"] for m in card["training"]["ensemble_of"]] == [0, 1]
    image = np.random.default_rng(5).uniform(0, 1, (40, 52)).astype(np.float32)
    for tile in (image[:32, :28], image):
        alone = [_probabilities(m, tile) for m in members]
        together = _probabilities(folder, tile)
        assert together.shape == alone[0].shape
        gap = float(np.abs(together - np.mean(alone, 0)).max())
        assert gap < (1e-5 if tile.shape == (32, 28) else 0.01)
        assert np.abs(together - alone[0]).max() > 1e-3 and np.abs(together - alone[1]).max() > 1e-3


def test_flip_tta_only_when_every_member_was_trained_for_it(tmp_path):
    from XraySegInferLib.ensemble import combine_packages

    mixed = [_package(tmp_path / "flip", 0, flip_tta=True), _package(tmp_path / "plain", 1)]
    card = json.loads((combine_packages(mixed, tmp_path / "e") / "model.json").read_text())
    assert card["inference"]["flip_tta"] is False


def test_members_that_disagree_are_refused_with_one_line(tmp_path, capsys):
    from XraySegInferLib.ensemble import combine_packages
    from XraySegInferLib.entry import main

    first = _package(tmp_path / "a", 0)
    other_classes = _package(tmp_path / "b", 1, classes=CLASSES[:2])
    status = main(["ensemble", str(first), str(other_classes), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "'classes'" in err and err.count("\n") == 0 and not (tmp_path / "e").exists()
    assert main(["ensemble", str(first), "--out", str(tmp_path / "e")]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["ensemble", str(first), str(_package(tmp_path / "c", 2)), "--out", str(tmp_path / "e")]) == 0
    with pytest.raises(InputError, match="ensemble already"):
        combine_packages([tmp_path / "e", first], tmp_path / "e2")
    with pytest.raises(InputError, match="already holds files"):  # never writes over an earlier package
        combine_packages([first, tmp_path / "c"], tmp_path / "e")
