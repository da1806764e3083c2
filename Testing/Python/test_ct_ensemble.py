"""Ensembles of 3D CT models (ct_ensemble, xrayseg ct-ensemble)."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _package(folder, seed: int, **card):
    import torch

    from XraySegInferLib.ct_networks import DEFAULT_ARCHITECTURE, build_ct_network
    from XraySegInferLib.ct_package import save_ct_package

    architecture = dict(DEFAULT_ARCHITECTURE, base_channels=4, depth=2)
    torch.manual_seed(seed)
    return save_ct_package(folder, build_ct_network(architecture, 2),
                           {"name": f"seed {seed}", "structure": "proximal_femur", "architecture": architecture,
                            "spacing_mm": [2, 2, 2], "patch_size": [16, 16, 16], "hu_window": [-1000, 2000],
                            "training": {"seed": seed}, **card})


def test_the_ensemble_probability_is_the_mean_of_its_members(tmp_path):
    """After a float16 round trip like any package: the members' mean probability to 1e-5, and a probability
    that neither member gives alone."""
    from XraySegInferLib.ct_ensemble import combine_ct_packages
    from XraySegInferLib.ct_package import load_ct_package

    members = [_package(tmp_path / f"m{seed}", seed) for seed in (0, 1)]
    folder = combine_ct_packages(members, tmp_path / "ensemble")
    ensemble = load_ct_package(folder)
    card = json.loads((folder / "model.json").read_text())
    assert card["ensemble"]["members"] == 2 and card["metrics"] == {} and card["structure"] == "proximal_femur"
    assert [s["training"]["seed"] for s in card["ensemble"]["sources"]] == [0, 1]
    volume = np.random.default_rng(3).uniform(-1.0, 1.5, (20, 18, 22)).astype(np.float32)
    alone = [load_ct_package(m).probability(volume) for m in members]
    together = ensemble.probability(volume)
    assert np.allclose(together, np.mean(alone, 0), atol=1e-5)
    assert not np.allclose(together, alone[0], atol=1e-3) and not np.allclose(together, alone[1], atol=1e-3)


def test_members_that_see_their_input_differently_are_refused(tmp_path, capsys):
    from XraySegInferLib.entry import main

    plain = _package(tmp_path / "plain", 0)
    suppressing = _package(tmp_path / "suppressing", 1, metal_suppression={"above_hu": 2000, "fill_hu": 150})
    status = main(["ct-ensemble", str(plain), str(suppressing), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "metal_suppression" in err and err.count("\n") == 0 and not (tmp_path / "e").exists()
    status = main(["ct-ensemble", str(plain), "--out", str(tmp_path / "e")])
    assert status == 2 and "at least two" in capsys.readouterr().err
    assert main(["ct-ensemble", str(plain), str(_package(tmp_path / "other", 2)), "--out", str(tmp_path / "e")]) == 0
    with pytest.raises(Exception, match="ensemble already"):
        from XraySegInferLib.ct_ensemble import combine_ct_packages

        combine_ct_packages([tmp_path / "e", plain], tmp_path / "e2")
