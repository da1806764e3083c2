"""3D CT segmentation (the femur paper's path): metrics against hand-computed values, the compact V-Net, the
proximal-femur crop rule, and a tiny training run whose loss falls and whose checkpoint resumes bit-identically."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from XraySegInferLib.volume_metrics import hd95_mm, score_case, summarise, volume_r2


def test_scores_match_hand_computed_values():
    ref = np.zeros((4, 5, 6), bool)
    ref[1:3, 1:4, 1:5] = True  # 2*3*4 = 24 voxels
    pred = np.zeros_like(ref)
    pred[1:3, 1:4, 2:6] = True  # 24 voxels, shifted one voxel along i: overlap 2*3*3 = 18
    scores = score_case(pred, ref, (1.0, 2.0, 0.5))
    tp, fp, fn = 18, 6, 6
    tn = ref.size - tp - fp - fn
    assert scores.dice == pytest.approx(2 * tp / (2 * tp + fp + fn))  # 0.75
    assert scores.sensitivity == pytest.approx(tp / (tp + fn))
    assert scores.specificity == pytest.approx(tn / (tn + fp))
    assert scores.volume_ref_ml == pytest.approx(24 * 1.0 * 2.0 * 0.5 / 1000)


def test_hd95_of_a_shifted_block_is_the_shift_in_mm():
    ref = np.zeros((20, 20, 20), bool)
    ref[5:15, 5:15, 5:15] = True
    pred = np.roll(ref, 2, axis=2)  # 2 voxels along i, 0.8 mm voxels there
    spacing = (1.0, 1.0, 0.8)
    assert hd95_mm(pred, ref, spacing) == pytest.approx(1.6)
    assert hd95_mm(ref, ref, spacing) == 0.0
    assert math.isinf(hd95_mm(np.zeros_like(ref), ref, spacing))


def test_volume_r2_is_that_of_the_identity_line():
    reference = [100.0, 120.0, 140.0]
    assert volume_r2(reference, reference) == 1.0
    # Residuals 5, -5, 5 against a total sum of squares of 800: R^2 = 1 - 75/800.
    assert volume_r2([105.0, 115.0, 145.0], reference) == pytest.approx(1 - 75 / 800)
    assert math.isnan(volume_r2([1.0], [1.0]))
    summary = summarise({"a": score_case(np.ones((2, 2, 2), bool), np.ones((2, 2, 2), bool), (1, 1, 1))})
    assert summary["dice"] == 1.0 and math.isnan(summary["volume_r2"])


def test_compact_vnet_is_monai_vnet_at_full_width():
    """At 16 channels and 4 stages the compact builder reproduces MONAI's VNet parameter count exactly."""
    from monai.networks.nets import VNet
    import torch

    from XraySegInferLib.ct_networks import build_ct_network

    full = sum(p.numel() for p in VNet(spatial_dims=3, in_channels=1, out_channels=2).parameters())
    ours = build_ct_network({"name": "vnet-compact", "base_channels": 16, "depth": 4}, 2)
    assert sum(p.numel() for p in ours.parameters()) == full
    small = build_ct_network({"name": "vnet-compact", "base_channels": 4, "depth": 2}, 2)
    assert small(torch.zeros(1, 1, 8, 12, 16)).shape == (1, 2, 8, 12, 16)


def _sphere_dataset(root, n_train: int = 1):
    """A 3D dataset of spheres of 'bone' (1000 HU) in 'soft tissue' (40 HU), 2 mm voxels."""
    from conftest import write_image

    folder = root / "Dataset901_Sphere"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    grid = np.indices((24, 24, 24)).transpose(1, 2, 3, 0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for index in range(n_train + 1):
        centre = rng.uniform(9, 15, 3)
        inside = np.linalg.norm(grid - centre, axis=-1) < rng.uniform(5, 7)
        ct = np.where(inside, 1000, 40).astype(np.int16) + rng.normal(0, 20, inside.shape).astype(np.int16)
        split = "Tr" if index < n_train else "Ts"
        write_image(ct, affine, folder / f"images{split}" / f"case{index}_0000.nii.gz")
        write_image(inside.astype(np.uint8), affine, folder / f"labels{split}" / f"case{index}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                     "labels": {"background": 0, "sphere": 1},
                                                     "numTraining": n_train, "file_ending": ".nii.gz"}))
    return folder


def _tiny_config(steps: int):
    from XraySegInferLib.ct_training import CtTrainConfig

    return CtTrainConfig(steps=steps, batch_size=2, patch_size=(16, 16, 16), spacing_mm=(2.0, 2.0, 2.0),
                         learning_rate=3e-2, foreground_fraction=1.0, checkpoint_every=10,
                         architecture={"name": "vnet-compact", "base_channels": 4, "depth": 2, "dropout": 0.0},
                         device="cpu")


@pytest.mark.slow
def test_tiny_training_loss_falls_and_resume_is_bit_identical(tmp_path):
    import torch
    from safetensors.torch import load_file

    from XraySegInferLib.ct_package import load_ct_package
    from XraySegInferLib.ct_segment import evaluate_ct_dataset
    from XraySegInferLib.ct_training import CHECKPOINT, train_ct

    torch.set_num_threads(1)
    dataset = _sphere_dataset(tmp_path)
    train_ct(dataset, tmp_path / "straight", _tiny_config(40))
    history = json.loads((tmp_path / "straight" / f"{CHECKPOINT}.json").read_text())["history"]
    first, last = np.mean([h["dice_loss"] for h in history[:5]]), np.mean([h["dice_loss"] for h in history[-5:]])
    assert last < 0.5 * first, (first, last)  # measured: 0.72 -> 0.08

    # Stop at step 20 (a checkpoint), resume to 40: every weight equals the uninterrupted run's.
    train_ct(dataset, tmp_path / "resumed", _tiny_config(20))
    train_ct(dataset, tmp_path / "resumed", _tiny_config(40), resume=True)
    straight = load_file(str(tmp_path / "straight" / f"{CHECKPOINT}.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / f"{CHECKPOINT}.safetensors"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)

    model = load_ct_package(tmp_path / "straight" / "model")
    scores = evaluate_ct_dataset(dataset, model, "test")
    assert scores["summary"]["dice"] > 0.8, scores


def test_package_refuses_an_edited_card(tmp_path):
    from XraySegInferLib.ct_networks import build_ct_network
    from XraySegInferLib.ct_package import load_ct_package, save_ct_package
    from XraySegInferLib.errors import ModelPackageError

    architecture = {"name": "vnet-compact", "base_channels": 4, "depth": 2}
    folder = save_ct_package(tmp_path / "model", build_ct_network(architecture, 2),
                             {"name": "t", "structure": "sphere", "architecture": architecture,
                              "spacing_mm": [2, 2, 2], "patch_size": [16, 16, 16]})
    assert load_ct_package(folder).card["structure"] == "sphere"
    card = json.loads((folder / "model.json").read_text())
    card["spacing_mm"] = [1, 1, 1]
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelPackageError, match="edited"):
        load_ct_package(folder)


def test_femur_crop_rule_and_mirrored_hold_out(tmp_path):
    """A synthetic 'femur' column: the crop spans 10 mm above its top to 110 mm below, and the test side is
    the other femur mirrored left-right."""
    import SimpleITK as sitk
    from conftest import write_image

    from XraySegInferLib.femur_data import write_femur_dataset

    labels = np.zeros((100, 40, 80), np.uint8)  # [k, j, i], 2 mm voxels: 200 mm tall
    labels[10:90, 15:25, 10:20] = 75  # femur_left: top at k = 89
    labels[20:80, 15:25, 60:70] = 76  # femur_right: top at k = 79
    ct = np.where(labels > 0, 700, 0).astype(np.int16)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    write_image(ct, affine, tmp_path / "ct.nii.gz")
    write_image(labels, affine, tmp_path / "labels.nii.gz")
    root = write_femur_dataset(tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz",
                               {75: "femur_left", 76: "femur_right"}, tmp_path / "out", train_side="left")
    crops = json.loads((root / "crops.json").read_text())["crops"]
    left = crops["body0_left"]
    assert left["first_index_ijk"][2] == 89 - 55 and left["size_ijk"][2] == 55 + 5 + 1  # 110 mm below, 10 above
    assert left["reaches_mm_below_head"] == 110.0
    train_label = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / "body0_left.nii.gz")))
    assert train_label.sum() == 10 * 10 * 56  # the femur voxels inside the slab
    test_image = sitk.ReadImage(str(root / "labelsTs" / "body0_right_mirrored.nii.gz"))
    test_label = sitk.GetArrayFromImage(test_image)
    right = crops["body0_right_mirrored"]
    original = labels[right["first_index_ijk"][2]:, :, :][:right["size_ijk"][2],
                      right["first_index_ijk"][1]:right["first_index_ijk"][1] + right["size_ijk"][1],
                      right["first_index_ijk"][0]:right["first_index_ijk"][0] + right["size_ijk"][0]] == 76
    assert np.array_equal(test_label.astype(bool), original[:, :, ::-1])


@pytest.mark.slow
def test_bundled_femur_model_scores_its_held_out_femur_as_its_card_says(tmp_path):
    """The bundled 3D model, on the femur it never saw (the sample CT's left femur, mirrored): the Dice the card
    reports, measured again, and above a floor that a broken model or pipeline would not reach."""
    from XraySegInferLib.ct_package import load_ct_package
    from XraySegInferLib.ct_segment import evaluate_ct_dataset
    from XraySegInferLib.femur_data import write_femur_dataset
    from XraySegSimLib.export_inputs import names_table
    from XraySegSimLib.sample_data import fetch_sample

    from conftest import REPO

    bundle = REPO / "Resources" / "Models" / "femur"
    model = load_ct_package(bundle)
    sample = fetch_sample("abdomen-pelvis-ct")
    data = write_femur_dataset(sample["ct"], sample["labels"], names_table(sample["names"]), tmp_path,
                               train_side="right", dataset_id=712)
    scores = evaluate_ct_dataset(data, model, "test")
    card = model.card["metrics"]["held_out_by_side"]["right"]["summary"]
    assert scores["summary"]["dice"] == pytest.approx(card["dice"], abs=1e-3)
    assert scores["summary"]["dice"] > 0.8 and scores["summary"]["specificity"] > 0.95


def test_oversampled_cases_are_drawn_that_much_more_often():
    from XraySegInferLib.ct_training import case_weights
    from XraySegInferLib.errors import InputError

    ids = ["body0_right", "phantom_a_right", "phantom_a_left_mirrored", "phantom_b_right"]
    assert case_weights(ids, []) == pytest.approx([0.25] * 4)
    assert case_weights(ids, [["body0", 6]]) == pytest.approx([6 / 9, 1 / 9, 1 / 9, 1 / 9])
    with pytest.raises(InputError, match="no training case"):
        case_weights(ids, [["body9", 2]])


def test_fine_tuning_starts_from_the_given_package(tmp_path):
    """--init-from: a run of 0 steps is the source package's weights exactly; another architecture is refused."""
    import torch
    from safetensors.torch import load_file

    from XraySegInferLib.ct_networks import build_ct_network
    from XraySegInferLib.ct_package import save_ct_package
    from XraySegInferLib.ct_training import train_ct
    from XraySegInferLib.errors import InputError

    config = _tiny_config(0)
    torch.manual_seed(5)
    source = save_ct_package(tmp_path / "source", build_ct_network(config.architecture, 2),
                             {"name": "s", "structure": "sphere", "architecture": config.architecture,
                              "spacing_mm": [2, 2, 2], "patch_size": [16, 16, 16]})
    dataset = _sphere_dataset(tmp_path)
    config.init_from = str(source)
    tuned = train_ct(dataset, tmp_path / "tuned", config)
    a, b = load_file(str(source / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config.architecture = dict(config.architecture, base_channels=8)
    with pytest.raises(InputError, match="architecture"):
        train_ct(dataset, tmp_path / "other", config)


def test_instance_norm_networks_have_no_batch_statistics():
    import torch

    from XraySegInferLib.ct_networks import DEFAULT_ARCHITECTURE, build_ct_network

    network = build_ct_network(DEFAULT_ARCHITECTURE, 2)
    assert DEFAULT_ARCHITECTURE["norm"] == "instance"
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in network.modules())
    assert not any("running_mean" in k for k in network.state_dict())
    legacy = build_ct_network({k: v for k, v in DEFAULT_ARCHITECTURE.items() if k != "norm"}, 2)
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in legacy.modules())  # old cards load as they were
    # Same parameter count: only the normalisation's statistics differ.
    assert sum(p.numel() for p in network.parameters()) == sum(p.numel() for p in legacy.parameters())


@pytest.mark.slow
def test_3d_commands_fall_back_to_the_cpu_when_cuda_is_missing(tmp_path):
    """ct-train and ct-segment with --device cuda on a machine without a GPU: a warning and a CPU run, as train
    and infer do (inference.pick_device), not a refusal."""
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the fallback on a machine without a GPU")
    dataset = _sphere_dataset(tmp_path)
    entry = [sys.executable, "-m", "XraySegInferLib.entry"]
    done = subprocess.run(entry + ["ct-train", str(dataset), "--out", str(tmp_path / "run"), "--steps", "2",
                                   "--patch-size", "16", "16", "16", "--spacing", "2", "2", "2", "--quiet",
                                   "--device", "cuda", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-800:]
    assert "running on the CPU" in done.stderr
    image = next((dataset / "imagesTs").glob("*.nii.gz"))
    done = subprocess.run(entry + ["ct-segment", str(image), "--model", str(tmp_path / "run" / "model"),
                                   "--out", str(tmp_path / "seg"), "--device", "cuda:0", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-800:]
    assert "running on the CPU" in done.stderr and (tmp_path / "seg" / "labels.nii.gz").is_file()
    done = subprocess.run(entry + ["ct-segment", str(image), "--model", str(tmp_path / "run" / "model"),
                                   "--out", str(tmp_path / "seg2"), "--device", "tpu"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and not (tmp_path / "seg2").exists()


def test_a_volume_smaller_than_the_patch_is_padded_with_air_as_in_training():
    """Training patches beyond a crop's edge hold air (-1 after normalisation); inference must pad the same way.
    Edge replication there made the fold trained on the left femur score Dice 0.00 on the mirrored right one,
    0.66 with air padding (and 0.53 -> 0.89 on its own training femur)."""
    import torch

    from XraySegInferLib.ct_networks import DEFAULT_ARCHITECTURE, build_ct_network
    from XraySegInferLib.ct_package import CtModel

    torch.manual_seed(0)
    network = build_ct_network(dict(DEFAULT_ARCHITECTURE, base_channels=4, depth=2), 2).eval()
    model = CtModel(network, {"spacing_mm": [2, 2, 2], "patch_size": [16, 16, 16]}, torch.device("cpu"))
    volume = np.random.default_rng(1).uniform(-0.2, 1.0, (10, 12, 14)).astype(np.float32)
    padded = np.full((16, 16, 16), -1.0, np.float32)
    padded[3:13, 2:14, 1:15] = volume  # MONAI pads (size - patch) // 2 before, the rest after
    with torch.inference_mode():
        expected = torch.softmax(network(torch.from_numpy(padded)[None, None]), 1)[0, 1].numpy()[3:13, 2:14, 1:15]
    assert np.allclose(model.probability(volume), expected, atol=1e-5)


def test_half_body_training_case_is_the_training_sides_half_cut_at_the_femur_midline(tmp_path):
    """--train-region half-body: the training case is the right half of the whole CT (never a voxel of the held-out
    left femur), labelled with the right femur inside the crop rule's slab; the test case is still the mirrored crop."""
    import SimpleITK as sitk
    from conftest import write_image

    from XraySegInferLib.ct_sides import x_of_voxels
    from XraySegInferLib.femur_data import write_femur_dataset

    labels = np.zeros((100, 40, 80), np.uint8)  # [k, j, i], 2 mm voxels
    labels[10:90, 15:25, 10:20] = 75  # femur_right (low i = low LPS x), top at k = 89
    labels[20:80, 15:25, 60:70] = 76  # femur_left
    ct = np.where(labels > 0, 700, 0).astype(np.int16)
    ct[:, :, 40:] += 1  # marks the left half (i >= 40): none of it may reach the training case
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])  # RAS affine: LPS x = +2 i, so high i is the patient's left
    write_image(ct, affine, tmp_path / "ct.nii.gz")
    write_image(labels, affine, tmp_path / "labels.nii.gz")
    image = sitk.ReadImage(str(tmp_path / "ct.nii.gz"))
    x = x_of_voxels(image)
    for kji in ((0, 0, 0), (7, 3, 61), (99, 39, 79)):
        assert x[kji] == pytest.approx(image.TransformIndexToPhysicalPoint(tuple(int(v) for v in kji[::-1]))[0])
    root = write_femur_dataset(tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz",
                               {75: "femur_right", 76: "femur_left"}, tmp_path / "out", train_side="right",
                               train_region="half-body")
    crops = json.loads((root / "crops.json").read_text())["crops"]
    train = crops["body0_right"]
    # Femur centroids at i = 14.5 and 64.5: midline i = 39.5 (LPS x 79 mm), so the right half is i = 0..39.
    assert train["midline_x_mm"] == 79.0
    assert train["first_index_ijk"] == [0, 0, 0] and train["size_ijk"] == [40, 40, 100]
    train_ct = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "imagesTr" / "body0_right_0000.nii.gz")))
    train_label = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / "body0_right.nii.gz")))
    assert train_ct.shape == (100, 40, 40) and np.array_equal(train_ct, ct[:, :, :40])  # no left femur voxel
    assert train_label.sum() == 10 * 10 * 56  # top k = 89; the slab (110 mm below, 10 above) holds k = 34..89
    assert crops["body0_left_mirrored"]["split"] == "test" and "midline_x_mm" not in crops["body0_left_mirrored"]


def test_a_one_sided_model_predicts_the_other_side_mirrored_and_keeps_one_piece_per_side():
    """ct_sides on a whole CT: the trained (right) side predicted as it is, the left one on the mirrored CT; each side
    keeps its largest component. The network is a real convolution that looks one voxel towards +i, so a mirrored
    prediction lands one voxel the other way: the two sides tell which way each was predicted."""
    import SimpleITK as sitk
    import torch

    from XraySegInferLib.ct_package import CtModel
    from XraySegInferLib.ct_sides import implausible, predict_sides

    network = torch.nn.Conv3d(1, 2, (1, 1, 3), padding=(0, 0, 1))
    with torch.no_grad():
        network.weight.zero_()
        network.weight[0, 0, 0, 0, 2], network.weight[1, 0, 0, 0, 2] = -10.0, 10.0
        network.bias[:] = torch.tensor([5.0, -5.0])  # foreground where the next voxel along i is above 500 HU
    hu = np.full((16, 16, 32), -1000, np.int16)
    hu[4:12, 4:12, 3:9] = 1000  # right block (low LPS x)
    hu[1, 1, 12:14] = 1000  # a small fragment on the right
    hu[4:12, 4:12, 22:28] = 1000  # left block
    ct = sitk.GetImageFromArray(hu)
    ct.SetSpacing((2.0, 2.0, 2.0))  # identity direction: LPS x = 2 i; midline at x 32 mm = i 16
    card = {"spacing_mm": [2.0, 2.0, 2.0], "patch_size": [8, 8, 8]}
    model = CtModel(network.eval(), dict(card, trained_side="right"), torch.device("cpu"))
    mask, info = predict_sides(model, ct, midline_x=32.0)
    expected = np.zeros(hu.shape, bool)
    expected[4:12, 4:12, 2:8] = True  # as it is: one voxel towards -i
    expected[4:12, 4:12, 23:29] = True  # mirrored: one voxel towards +i; the fragment dropped
    assert np.array_equal(mask, expected)
    assert info["volume_ml_per_side"] == {"left": 8 * 8 * 6 * 0.008, "right": 8 * 8 * 6 * 0.008}
    old_mask, old_info = predict_sides(CtModel(network.eval(), card, torch.device("cpu")), ct)
    assert "volume_ml_per_side" not in old_info and old_mask.sum() == 8 * 8 * 6  # one block: the largest piece
    assert implausible({"volume_ml": 5749.0, "volume_ml_per_side": {"left": 2948.0, "right": 120.0}}).startswith(
        "implausible femur volume left 2948 ml")
    assert implausible({"volume_ml": 240.0, "volume_ml_per_side": {"left": 120.0, "right": 120.0}}) is None
    assert implausible({"volume_ml": 5749.0}) is not None and implausible({"volume_ml": 240.0}) is None


def test_a_checkpoint_that_predates_a_setting_resumes_with_its_default_only(tmp_path):
    """A checkpoint written before --metal-fraction/--metal-outside existed (no such keys in its config) resumes
    when the run keeps their defaults, and is refused (one-line InputError) when it asks for implants."""
    import dataclasses

    import torch

    from XraySegInferLib.ct_training import CHECKPOINT, train_ct
    from XraySegSimLib.errors import InputError

    torch.set_num_threads(1)
    dataset = _sphere_dataset(tmp_path)
    train_ct(dataset, tmp_path / "old", _tiny_config(10))
    meta_path = tmp_path / "old" / f"{CHECKPOINT}.json"
    meta = json.loads(meta_path.read_text())
    for key in ("metal_fraction", "metal_outside"):  # as written before the options existed
        assert key in meta["config"]
        del meta["config"][key]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="other settings"):
        train_ct(dataset, tmp_path / "old", dataclasses.replace(_tiny_config(20), metal_fraction=0.5), resume=True)
    train_ct(dataset, tmp_path / "old", _tiny_config(20), resume=True)
    assert json.loads(meta_path.read_text())["step"] == 20
