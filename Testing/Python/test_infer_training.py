"""Training, checkpoints, resume, the round trip DRR -> model -> Dice, and `xrayseg train | evaluate | infer`.

The dataset is generated here with XraySegSimLib (XraySegInferLib.synthetic): phantom CTs with three overlapping
'bones', PA-like views at random angles, 64 px, in the nnU-Net layout the exporter writes. Training runs on one
CPU thread (the machine's cores are shared; two threads are slower there).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from XraySegInferLib.synthetic import CLASS_NAMES, make_dataset, phantom_ct, render_views
from XraySegInferLib.training import TrainConfig, train

ARCH = {"name": "UNet", "channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 0, "norm": "instance"}
LIGHT_AUGMENT = {"probability": 0.3, "blur_probability": 0.1}
DICE_FLOOR = 0.80  # mean Dice over the three classes on unseen phantom CTs after 300 CPU steps (seen: 0.86-0.92)


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n_cts=4, views_per_ct=4, size=64, test_cts=1, seed=0)


def config(**kwargs) -> TrainConfig:
    base = dict(architecture=ARCH, patch_size=64, batch_size=8, steps=300, val_every=100, learning_rate=1e-2,
                augment=LIGHT_AUGMENT, threads=1, seed=0)
    base.update(kwargs)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory, one_thread):
    return train(dataset, tmp_path_factory.mktemp("run"), config(), progress=False, log=lambda *_: None)


def test_dataset_layout_and_split_by_ct(dataset):
    from XraySegInferLib.dataset import decode_regions, read_dataset, read_label_image

    ds = read_dataset(dataset.parent)  # the parent folder works too
    assert ds.class_names == list(CLASS_NAMES)
    train_cases, val_cases = ds.split_by_ct(0.25, seed=0)
    assert len(train_cases) == 12 and len(val_cases) == 4 and len(ds.split("test")) == 4
    assert not {c.ct_id for c in train_cases} & {c.ct_id for c in val_cases}
    image, masks, spacing = ds.load(train_cases[0])
    assert image.shape == (64, 64) and masks.shape == (3, 64, 64) and spacing[0] == pytest.approx(spacing[1])
    np.testing.assert_array_equal(decode_regions(read_label_image(train_cases[0].label), ds.classes), masks)
    assert (masks.sum(0) > 1).any()  # the bones overlap in projection


BUNDLED_CARD = Path(__file__).resolve().parents[2] / "Resources" / "Models" / "chest" / "model.json"
NOT_IN_CARD = ("device", "threads")  # machine settings: the card's training.config leaves them out


def _card_config(config: TrainConfig) -> dict:
    """``config`` as the card stores it (``training._training_summary``), through JSON (tuples -> lists)."""
    return json.loads(json.dumps({k: v for k, v in asdict(config).items() if k not in NOT_IN_CARD}))


def test_chest_transfer_recipe_is_what_trained_the_bundled_model(tmp_path, monkeypatch):
    """``--recipe chest-transfer`` (what ``make train-sample`` runs, in tools/train-sample/retrain.sh) gives exactly
    the bundled card's training config, and the recipe spells out every field the card stores, so that neither a
    TrainConfig default nor the recipe can drift from the bundled model."""
    from XraySegInferLib.entry import main

    from XraySegInferLib import training
    from XraySegInferLib.training import RECIPES
    from XraySegInferLib.transforms import AugmentConfig

    card = json.loads(BUNDLED_CARD.read_text())["training"]["config"]
    recipe = RECIPES["chest-transfer"]
    assert set(recipe) == set(card), "the recipe must set every field the card stores, no more"
    assert set(recipe["augment"]) == set(AugmentConfig().to_dict())
    assert _card_config(TrainConfig.from_dict(json.loads(json.dumps(recipe)))) == card
    # through the command line, as retrain.sh calls it for the final model (no --config)
    script = (Path(__file__).resolve().parents[2] / "tools" / "train-sample" / "retrain.sh").read_text()
    command = re.search(r"\$X train (?:\\\n|[^\n])*", script).group(0)  # with continuations
    assert "--recipe chest-transfer" in command and "--config" not in command, command
    seen = {}

    def fake_train(dataset, out, config, **_):
        seen["config"] = config
        return SimpleNamespace(package=Path(out) / "model")

    monkeypatch.setattr(training, "train", fake_train)
    words = shlex.split(command.replace("\\\n", " ").replace("$OUT", str(tmp_path)).replace("$THREADS", "1"))
    argv = words[1: words.index(">")]
    assert main(argv) == 0
    assert _card_config(seen["config"]) == card and seen["config"].threads == 1


@pytest.mark.slow
def test_loss_goes_down_and_checkpoint_reloads_identically(dataset, tmp_path, one_thread):
    out = tmp_path / "run"
    result = train(dataset, out, config(steps=60, val_every=20), progress=False, log=lambda *_: None)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.9 * losses[0] and losses == sorted(losses, reverse=True), losses
    from XraySegInferLib.networks import build_network

    from XraySegInferLib.checkpoints import load_checkpoint

    state = load_checkpoint(out / "checkpoint_last.safetensors")  # safetensors + JSON state: nothing unpickled
    assert state["step"] == 60 and [h["step"] for h in state["history"]] == [20, 40, 60]
    a, b = build_network(ARCH, 3, "multilabel"), build_network(ARCH, 3, "multilabel")
    a.load_state_dict(state["model"])
    b.load_state_dict(load_checkpoint(out / "checkpoint_last.safetensors")["model"])
    x = torch.rand(2, 1, 64, 64)
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    # Resume: continues at step 60 with the saved optimiser and random states, up to 80.
    resumed = train(dataset, out, config(steps=80, val_every=20), resume=True, progress=False, log=lambda *_: None)
    assert resumed.steps == 80 and [h["step"] for h in resumed.history] == [20, 40, 60, 80]


@pytest.mark.slow
def test_multiclass_mode_trains(dataset, tmp_path, one_thread):
    result = train(dataset, tmp_path, config(mode="multiclass", steps=40, val_every=20), progress=False,
                   log=lambda *_: None)
    card = json.loads((result.package / "model.json").read_text())
    assert card["mode"] == "multiclass" and card["out_channels"] == 4
    assert result.history[-1]["loss"] < result.history[0]["loss"]


@pytest.mark.slow
def test_round_trip_drr_dice_above_floor(trained, tmp_path, one_thread):
    """A DRR of an unseen phantom CT, written as NRRD on its detector, read back and segmented."""
    from XraySegSimLib.io import write_detector_image

    from XraySegInferLib.inference import Predictor
    from XraySegInferLib.metrics import per_class_metrics

    card = json.loads((trained.package / "model.json").read_text())
    assert card["metrics"]["validation"]["mean_dice"] > 0.7
    assert card["training"]["validation_cts"] and card["training"]["train_cts"]
    predictor = Predictor.from_package(trained.package, "cpu")
    rng = np.random.default_rng(123)
    dice = []
    for _ in range(2):
        ct, labels = phantom_ct(rng)
        for image, masks, spacing, geometry in render_views(ct, labels, [(10.0, 5.0), (-20.0, -5.0)]):
            path = tmp_path / "drr.nrrd"
            write_detector_image(path, image.astype(np.float32), geometry)
            prediction = predictor.predict_file(path)
            assert prediction.spacing_mm == pytest.approx(spacing)
            dice.append(per_class_metrics(prediction.masks, masks > 0, hd95=False)["dice"])
    mean = float(np.nanmean(dice))
    assert mean >= DICE_FLOOR, f"mean Dice {mean:.3f} per class {np.nanmean(dice, axis=0)}"


@pytest.mark.slow
def test_cli_infer_and_evaluate(trained, dataset, tmp_path, one_thread):
    import nrrd

    from XraySegInferLib.entry import main

    image = sorted((dataset / "imagesTs").glob("*.nrrd"))[0]
    out = tmp_path / "infer"
    assert main(["infer", str(image), "--model", str(trained.package), "--out", str(out), "--threads", "1"]) == 0
    for name in ("labels.nrrd", "labels.seg.nrrd", "overlay.png", "labels.png", "segmentation.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "segmentation.json").read_text())
    assert [c["name"] for c in meta["classes"]] == list(CLASS_NAMES) and meta["spacing_mm"]["source"] == "file"
    assert all(c["area_mm2"] > 0 for c in meta["classes"])
    seg, header = nrrd.read(str(out / "labels.seg.nrrd"))
    assert header["Segment0_Name"] == "spine" and seg.shape[0] == 3
    report = tmp_path / "eval"
    assert main(["evaluate", str(dataset), "--model", str(trained.package), "--out", str(report),
                 "--update-card", "--threads", "1"]) == 0
    assert "| pixel accuracy |" in (report / "metrics.md").read_text()
    card = json.loads((trained.package / "model.json").read_text())
    assert card["metrics"]["test"]["mean_dice"] > DICE_FLOOR - 0.1
    assert card["metrics"]["test"]["flip_tta"] is card["inference"]["flip_tta"]  # what the figures were made with
    # a bad package is a clear error with exit status 2
    assert main(["infer", str(image), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2


def test_nnunet_adapter_needs_nnunetv2(tmp_path):
    from XraySegInferLib.nnunet import is_nnunet_results_folder, nnunet_available

    if not nnunet_available():
        pytest.skip("nnunetv2 is not installed")
    assert not is_nnunet_results_folder(tmp_path)


NNUNET_2D = {
    "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
    "patch_size": [64, 64], "median_image_size_in_voxels": [64.0, 64.0], "spacing": [4.375, 4.375],
    "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
    "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
    "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
    "architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv2d",
                        "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]],
                        "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
    "batch_dice": True,
}


@pytest.mark.slow
def test_nnunet_results_folder_adapter(dataset, tmp_path, one_thread):
    """An nnU-Net v2 results folder for our region-based dataset; the output layer is set so that regions 1 and 3
    fire everywhere (in the body) and region 2 nowhere: checks the region decoding, the order and the threshold."""
    from XraySegInferLib.nnunet import NnUNetPredictorAdapter, is_nnunet_results_folder, nnunet_available

    if not nnunet_available():
        pytest.skip("nnunetv2 is not installed")
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    results = tmp_path / "nnUNetTrainer__nnUNetPlans__2d"
    (results / "fold_0").mkdir(parents=True)
    dataset_json = json.loads((dataset / "dataset.json").read_text())
    plans = {"dataset_name": dataset.name, "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": [999.0, 4.375, 4.375],
             "original_median_shape_after_transp": [1, 64, 64], "image_reader_writer": "SimpleITKIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {"2d": NNUNET_2D},
             "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {"0": {"max": 1.0, "mean": 0.5, "median": 0.5,
                                                                    "min": 0.0, "percentile_00_5": 0.0,
                                                                    "percentile_99_5": 1.0, "std": 0.3}}}
    (results / "dataset.json").write_text(json.dumps(dataset_json))
    (results / "plans.json").write_text(json.dumps(plans))
    manager = PlansManager(plans)
    network = nnUNetTrainer.build_network_architecture(manager, manager.get_configuration("2d"), 1, 3,
                                                       enable_deep_supervision=False)
    state = network.state_dict()
    head = [k for k in state if k.startswith("decoder.seg_layers")][-2:]  # weight, bias of the output layer
    state[head[0]].zero_()
    state[head[1]].copy_(torch.tensor([10.0, -10.0, 10.0]))
    torch.save({"network_weights": state, "trainer_name": "nnUNetTrainer", "init_args": {"configuration": "2d"},
                "inference_allowed_mirroring_axes": (0, 1)}, results / "fold_0" / "checkpoint_final.pth")
    assert is_nnunet_results_folder(results)
    adapter = NnUNetPredictorAdapter(results, folds=("0",), device="cpu")
    assert adapter.class_names == list(CLASS_NAMES)
    from XraySegInferLib.reader import read_radiograph

    image = sorted((dataset / "imagesTs").glob("*.nrrd"))[0]
    prediction = adapter.predict(read_radiograph(image))
    assert prediction.masks.shape == (3, 64, 64)
    # nnU-Net crops to the non-zero region (the body) and fills the rest with background
    body = prediction.normalized > 0
    assert prediction.masks[0][body].all() and not prediction.masks[1].any()
    np.testing.assert_array_equal(prediction.masks[0], prediction.masks[2])


@pytest.mark.slow
def test_cli_train_with_recipe(dataset, tmp_path, one_thread):
    from XraySegInferLib.entry import main

    out = tmp_path / "run"
    assert main(["train", str(dataset), "--recipe", "quick", "--steps", "20", "--val-every", "10", "--patch-size", "64",
                 "--threads", "1", "--quiet", "--out", str(out)]) == 0
    card = json.loads((out / "model" / "model.json").read_text())
    assert card["training"]["steps"] == 20 and card["architecture"]["channels"] == [8, 16, 32, 64]
    assert set(card["training"]["views"]) == {"chest-pa"}  # counted per view preset, not per view index
    assert (out / "checkpoint_last.safetensors").is_file() and (out / "history.json").is_file()
    assert main(["train", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert main(["train", str(dataset), "--recipe", "nope", "--out", str(out)]) == 2
