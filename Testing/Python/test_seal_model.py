"""`xrayseg seal-model` accepts a deliberately edited card of either package kind: a 2D radiograph model's (see the
safety table) and a 3D CT model's, whose load error message tells the user to run it."""

import json
import shutil
from pathlib import Path

import pytest

from XraySegInferLib.ct_package import load_ct_package
from XraySegInferLib.entry import main
from XraySegInferLib.errors import ModelPackageError

FEMUR = Path(__file__).resolve().parents[2] / "Resources" / "Models" / "femur"


def test_an_edited_3d_card_is_refused_until_sealed_then_loads(tmp_path, capsys):
    package = tmp_path / "femur"
    shutil.copytree(FEMUR, package)
    card = json.loads((package / "model.json").read_text())
    card["description"] = "edited on purpose"
    (package / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelPackageError, match="seal-model"):
        load_ct_package(package)
    assert main(["seal-model", str(package)]) == 0
    assert load_ct_package(package).card["description"] == "edited on purpose"


def test_sealing_3d_weights_the_card_does_not_name_is_refused(tmp_path, capsys):
    package = tmp_path / "femur"
    shutil.copytree(FEMUR, package)
    weights = package / json.loads((package / "model.json").read_text())["weights"]["file"]
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    assert main(["seal-model", str(package)]) == 2
    assert "does not match the card's" in capsys.readouterr().err
