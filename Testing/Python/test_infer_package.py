"""Model packages: save/load round trip, SHA-256 check, clear refusals of corrupt or mismatched packages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from XraySegInferLib.errors import ModelPackageError
from XraySegInferLib.networks import build_network
from XraySegInferLib.package import load_package, make_card, save_package, snomed_for, update_card

ARCH = {"name": "UNet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0, "norm": "instance"}
CLASSES = [{"name": "rib_left", "color": (1, 0, 0)}, {"name": "clavicle_right", "color": (0, 1, 0)}]


def make_package(folder, mode="multilabel", classes=CLASSES, arch=ARCH):
    torch.manual_seed(0)
    network = build_network(arch, len(classes), mode)
    card = make_card(name="tiny", architecture=arch, mode=mode, classes=classes, spacing_mm=(1.0, 1.0),
                     patch_size=(32, 32), normalization={"window_percentiles": [0.5, 99.5], "gamma": 1.0},
                     field_of_view_mm=(32.0, 32.0))
    return save_package(folder, network, card), network


@pytest.mark.parametrize("mode", ["multilabel", "multiclass"])
def test_round_trip_gives_identical_outputs(tmp_path, mode):
    folder, network = make_package(tmp_path / "pkg", mode)
    loaded = load_package(folder)
    x = torch.rand(1, 1, 32, 32)
    network.eval()
    with torch.no_grad():
        assert torch.equal(network(x), loaded.network(x))
    card = json.loads((folder / "model.json").read_text())
    assert len(card["weights"]["sha256"]) == 64 and card["out_channels"] == (2 if mode == "multilabel" else 3)
    assert card["classes"][0]["snomed"]["type"]["CodeValue"] == "113197003"
    assert card["classes"][0]["snomed"]["modifier"]["CodeValue"] == "7771000"
    assert card["classes"][1]["snomed"]["modifier"]["CodeValue"] == "24028007"
    assert card["normalization"]["function"] == "XraySegSimLib.physics.normalize_radiograph"
    assert card["input"]["pixel_spacing_mm"] == [1.0, 1.0]


def test_snomed_table():
    assert snomed_for("scapula_left")["type"]["CodeValue"] == "79601000"
    assert snomed_for("humerus_right")["type"]["CodeValue"] == "85050009"
    assert snomed_for("sternum")["type"]["CodeValue"] == "56873002"
    assert snomed_for("vertebrae_T7")["type"]["CodeValue"] == "35769007"
    assert snomed_for("vertebrae_L2")["type"]["CodeValue"] == "73903008"
    assert snomed_for("clavicula")["type"]["CodeValue"] == "51299004"
    assert snomed_for("heart") is None


def test_corrupt_weights_are_refused(tmp_path):
    folder, _ = make_package(tmp_path / "pkg")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match="SHA-256 .* does not match"):
        load_package(folder)
    weights.write_bytes(b"garbage")
    card = json.loads((folder / "model.json").read_text())
    card["weights"]["sha256"] = __import__("hashlib").sha256(b"garbage").hexdigest()
    update_card(folder, card)  # a deliberate edit, sealed in the manifest
    with pytest.raises(ModelPackageError, match="not a readable safetensors file"):
        load_package(folder)


def test_class_count_mismatch_is_refused(tmp_path):
    folder, _ = make_package(tmp_path / "pkg")
    card = json.loads((folder / "model.json").read_text())
    card["classes"].append({"index": 3, "name": "sternum", "color": [0, 0, 1]})
    card["out_channels"] = 3
    update_card(folder, card)  # a deliberate edit, sealed in the manifest
    with pytest.raises(ModelPackageError, match="weights have 2 output channels but the card lists 3 classes"):
        load_package(folder)
    card["out_channels"] = 7
    update_card(folder, card)  # a deliberate edit, sealed in the manifest
    with pytest.raises(ModelPackageError, match="needs 3 outputs, but the card says out_channels = 7"):
        load_package(folder)


def test_architecture_mismatch_is_refused(tmp_path):
    folder, _ = make_package(tmp_path / "pkg")
    card = json.loads((folder / "model.json").read_text())
    card["architecture"]["channels"] = [4, 8, 32]
    update_card(folder, card)  # a deliberate edit, sealed in the manifest
    with pytest.raises(ModelPackageError, match="has shape .* in the weights but"):
        load_package(folder)
    card["architecture"]["name"] = "ResNet"
    update_card(folder, card)  # a deliberate edit, sealed in the manifest
    with pytest.raises(ModelPackageError, match="unknown network 'ResNet'"):
        load_package(folder)


def test_broken_cards_are_refused(tmp_path):
    with pytest.raises(ModelPackageError, match="not found"):
        load_package(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelPackageError, match="model.json .* is missing"):
        load_package(tmp_path / "empty")
    folder, _ = make_package(tmp_path / "pkg")
    (folder / "model.json").write_text("{ not json")
    with pytest.raises(ModelPackageError, match="not valid JSON"):
        load_package(folder)
    (folder / "model.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelPackageError, match="not an XraySeg model card"):
        load_package(folder)
    folder2, _ = make_package(tmp_path / "pkg2")
    (folder2 / "model.safetensors").unlink()
    with pytest.raises(ModelPackageError, match="weights file model.safetensors is missing"):
        load_package(folder2)


def test_predictor_on_an_untrained_package_with_fallback_spacing(tmp_path):
    """Shapes, resampling back to the input grid and the spacing fallback, without training."""
    from XraySegInferLib.inference import Predictor
    from XraySegInferLib.reader import Radiograph, SpacingWarning

    folder, _ = make_package(tmp_path / "pkg")
    predictor = Predictor.from_package(folder, "cpu")
    image = Radiograph(np.random.default_rng(0).random((50, 70)).astype(np.float32))
    with pytest.warns(SpacingWarning, match="training field of view"):
        prediction = predictor.predict(image)
    assert prediction.masks.shape == (2, 50, 70) and prediction.label_image.shape == (50, 70)
    assert prediction.spacing_mm == pytest.approx((32 / 70, 32 / 70))
    given = predictor.predict(image, (0.5, 0.5))
    assert given.spacing_source == "given" and given.probabilities.shape == (2, 50, 70)
    big = predictor.predict(Radiograph(np.random.default_rng(1).random((80, 90)).astype(np.float32)), (1.0, 1.0))
    assert big.masks.shape == (2, 80, 90)  # larger than the 32 px patch: sliding window
    total = sum(big.areas_mm2.values())
    assert total == pytest.approx(big.masks.sum())


def test_flip_tta_is_left_right_equivariant_and_only_where_allowed(tmp_path):
    """With flip TTA, segmenting the mirrored image gives the mirrored result with left/right classes swapped."""
    from XraySegInferLib.inference import Predictor

    classes = [{"name": "rib_left", "color": (1, 0, 0)}, {"name": "rib_right", "color": (0, 1, 0)},
               {"name": "sternum", "color": (0, 0, 1)}]
    folder, _ = make_package(tmp_path / "pkg", classes=classes)
    card = json.loads((folder / "model.json").read_text())
    image = np.random.default_rng(0).random((32, 40)).astype(np.float32)
    with pytest.warns(UserWarning, match="not allowed"):
        refused = Predictor.from_package(folder, "cpu", flip_tta=True)
    assert not refused.flip_tta
    card["inference"]["flip_tta"] = True
    update_card(folder, card)  # a deliberate edit, sealed in the manifest
    predictor = Predictor.from_package(folder, "cpu")
    assert predictor.flip_tta and predictor.swap == [(0, 1)]
    p = predictor.predict_normalized(image, (1.0, 1.0))
    q = predictor.predict_normalized(image[:, ::-1].copy(), (1.0, 1.0))
    np.testing.assert_allclose(q[[1, 0, 2]][:, :, ::-1], p, atol=1e-5)
