"""Metal suppression for the 3D CT networks (ct_data.MetalSuppression, ct-train --suppress-metal)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from XraySegInferLib.ct_augment import add_synthetic_implant
from XraySegInferLib.ct_data import MetalSuppression, normalise_hu


def _hip_like_block() -> np.ndarray:
    """Soft tissue (40 HU) with a bone slab (1,200 HU), a metal voxel (3,000 HU) in it, two partial-volume
    neighbours (1,800 and 300 HU) and a bright bone voxel (1,900 HU) away from the metal."""
    hu = np.full((5, 5, 7), 40.0, np.float32)
    hu[1:4, 1:4, 1:6] = 1200.0
    hu[2, 2, 2] = 3000.0
    hu[2, 2, 3] = 1800.0  # face neighbour of the metal, brighter than the fill: partial-volume metal
    hu[2, 1, 2] = 300.0  # face neighbour darker than the fill: left as it is
    hu[2, 2, 5] = 1900.0  # bright, but below the threshold and not touching metal
    return hu


def test_metal_and_its_bright_rim_become_the_fill_and_everything_else_is_left_alone():
    hu = _hip_like_block()
    out = MetalSuppression(above_hu=2000.0, fill_hu=500.0).apply(hu)
    changed = np.argwhere(out != hu)
    # The metal voxel and its face neighbours brighter than 500 HU: (2,2,3) at 1,800, and the bone at 1,200 HU on
    # the other four faces ((1,2,2), (3,2,2), (2,3,2), (2,2,1)); (2,1,2) at 300 HU stays.
    expected = {(2, 2, 2), (2, 2, 3), (1, 2, 2), (3, 2, 2), (2, 3, 2), (2, 2, 1)}
    assert {tuple(int(v) for v in c) for c in changed} == expected
    assert np.all(out[tuple(np.array(sorted(expected)).T)] == 500.0)
    assert out[2, 1, 2] == 300.0 and out[2, 2, 5] == 1900.0 and hu[2, 2, 2] == 3000.0  # input not modified
    no_metal = np.where(hu > 2000, 1200, hu)
    assert np.array_equal(MetalSuppression().apply(no_metal), no_metal)
    # In the network input: the fill is 0.5, the untouched bright bone 1.9 (clipped at 2000 HU only).
    normalised = normalise_hu(MetalSuppression(2000.0, 500.0).apply(hu))
    assert normalised[2, 2, 2] == pytest.approx(0.5) and normalised[2, 2, 5] == pytest.approx(1.9)
    assert normalise_hu(hu)[2, 2, 2] == pytest.approx(2.0)


def _bone_cylinder(bone: float) -> tuple[np.ndarray, np.ndarray]:
    """test_ct_augment's patch (a bone cylinder in soft tissue, 0.05) with the bone at ``bone``."""
    from test_ct_augment import _bone_patch

    image, label = _bone_patch()
    return np.where(label > 0, bone, image).astype(np.float32), label


def test_implants_painted_at_the_fill_do_not_clip_the_bone_around_them():
    """With suppression the synthetic rods take the fill value (0.5); bone brighter than that (1.2) stays."""
    image, label = _bone_cylinder(1.2)
    for seed in range(4):
        out = add_synthetic_implant(image, label, np.random.default_rng(seed), 0.5)
        rods = (out == 0.5) & (label > 0)
        assert rods.any()
        untouched = (out == image)
        assert (label > 0)[untouched].any() and out[(label > 0) & ~rods].max() == pytest.approx(1.2)


def test_a_suppressing_run_paints_implants_at_the_fill_and_its_card_carries_the_values(tmp_path):
    from test_ct3d import _sphere_dataset, _tiny_config

    from XraySegInferLib.ct_package import load_ct_package
    from XraySegInferLib.ct_training import _batch, train_ct

    image, label = _bone_cylinder(0.3)
    image, label = np.pad(image, 8, constant_values=0.05), np.pad(label, 8)
    volumes, foreground, weights = [(image, label)], [np.argwhere(label > 0)], np.ones(1)
    config = _tiny_config(0)
    config.patch_size, config.flip, config.metal_fraction = (16, 24, 24), False, 1.0
    saturated = _batch(volumes, foreground, config, 3, weights)[0]
    config.suppress_metal_above_hu = 2000.0
    suppressed = _batch(volumes, foreground, config, 3, weights)[0]
    assert float(saturated.max()) > 1.5 and float(suppressed.max()) < 0.9  # rods at 0.15, not 2.0

    package = train_ct(_sphere_dataset(tmp_path), tmp_path / "run", config)
    card = json.loads((package / "model.json").read_text())
    assert card["metal_suppression"] == {"above_hu": 2000.0, "fill_hu": 150.0}
    assert load_ct_package(package).metal_suppression == MetalSuppression(2000.0, 150.0)
    config.suppress_metal_above_hu = 0.0
    plain = train_ct(_sphere_dataset(tmp_path / "b"), tmp_path / "plain", config)
    assert "metal_suppression" not in json.loads((plain / "model.json").read_text())
    assert load_ct_package(plain).metal_suppression is None

    # ct-segment says how many voxels of the CT it took for metal.
    import SimpleITK as sitk

    from XraySegInferLib.ct_segment import segment_ct

    ct = sitk.ReadImage(str(next((tmp_path / "Dataset901_Sphere" / "imagesTs").glob("*.nii.gz"))))
    hu = sitk.GetArrayFromImage(ct)
    hu[10:12, 10, 10] = 3000
    with_metal = sitk.GetImageFromArray(hu)
    with_metal.CopyInformation(ct)
    sitk.WriteImage(with_metal, str(tmp_path / "metal.nii.gz"))
    report = segment_ct(tmp_path / "metal.nii.gz", load_ct_package(package), tmp_path / "seg")["metal_suppression"]
    assert report == {"above_hu": 2000.0, "fill_hu": 150.0, "voxels_above": 2}
    assert segment_ct(tmp_path / "metal.nii.gz", load_ct_package(plain), tmp_path / "seg2")["metal_suppression"] is None


def test_segmentation_suppresses_metal_as_the_card_says():
    """ct-segment's input path (probability_on_grid): a CT with metal under a suppressing card gives exactly what
    the same CT with the metal already filled gives under a plain card, and not what the raw CT gives. The CT is
    finer than the model's grid, and its metal voxel lies between the 2 mm sample points: suppressing after the
    resampling would miss it."""
    import SimpleITK as sitk
    import torch

    from XraySegInferLib.ct_networks import DEFAULT_ARCHITECTURE, build_ct_network
    from XraySegInferLib.ct_package import CtModel
    from XraySegInferLib.ct_segment import probability_on_grid

    torch.manual_seed(0)
    network = build_ct_network(dict(DEFAULT_ARCHITECTURE, base_channels=4, depth=2), 2).eval()
    card = {"spacing_mm": [2, 2, 2], "patch_size": [16, 16, 16]}
    plain = CtModel(network, card, torch.device("cpu"))
    suppressing = CtModel(network, dict(card, metal_suppression={"above_hu": 2000, "fill_hu": 500}),
                          torch.device("cpu"))
    hu = np.pad(_hip_like_block(), ((6, 5), (6, 5), (5, 4)), constant_values=40.0)

    def image(array):  # 1 mm voxels, the model works at 2 mm: the metal must be found before resampling
        out = sitk.GetImageFromArray(array)
        out.SetSpacing((1.0, 1.0, 1.0))
        return out

    filled = MetalSuppression(2000, 500).apply(hu)
    with_card = probability_on_grid(suppressing, image(hu))
    assert np.allclose(with_card, probability_on_grid(plain, image(filled)), atol=1e-6)
    assert not np.allclose(with_card, probability_on_grid(plain, image(hu)), atol=1e-4)


def test_suppress_metal_values_the_wrong_way_round_are_one_line_and_status_2(tmp_path, capsys):
    from XraySegInferLib.entry import main

    status = main(["ct-train", str(tmp_path), "--out", str(tmp_path / "run"), "--suppress-metal", "500", "2000"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "--suppress-metal 500 2000" in err and err.count("\n") == 0
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_on_the_sample_ct_only_the_implanted_femur_changes():
    """The abdomen-pelvis CT: its labelled structures away from the implanted femur stay below 1,300 HU (max
    1,288), so suppression changes only the left femur's nail and screw (529 voxels above 2,000 HU) and their rim,
    all inside or beside that femur."""
    import SimpleITK as sitk

    from XraySegSimLib.export_inputs import names_table
    from XraySegSimLib.sample_data import fetch_sample

    sample = fetch_sample("abdomen-pelvis-ct")
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(sample["ct"]))).astype(np.float32)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(sample["labels"])))
    value = {name: v for v, name in names_table(sample["names"]).items()}["femur_left"]
    changed = MetalSuppression(2000.0, 150.0).apply(hu) != hu
    assert (hu > 2000).sum() == 529 and changed.sum() >= 529
    natural_bone = (labels > 0) & ~near_implanted_femur(labels, value)
    assert hu[natural_bone].max() < 1300  # measured 1,288 HU
    assert near_implanted_femur(labels, value)[changed].all()


def near_implanted_femur(labels: np.ndarray, value: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(labels == value, iterations=1)


def test_training_reads_the_metal_as_the_fill(tmp_path):
    """train_ct loads its cases with the run's suppression: on a training CT with a metal rod two steps with and
    without it give different weights; on one without metal the same weights."""
    import SimpleITK as sitk
    import torch
    from safetensors.torch import load_file
    from test_ct3d import _sphere_dataset, _tiny_config

    from XraySegInferLib.ct_training import train_ct

    def weights(dataset, name, above_hu):
        config = _tiny_config(2)
        config.suppress_metal_above_hu = above_hu
        torch.set_num_threads(1)
        return load_file(str(train_ct(dataset, tmp_path / name, config) / "model.safetensors"))

    plain_data = _sphere_dataset(tmp_path / "plain")
    same = weights(plain_data, "a", 0.0), weights(plain_data, "b", 2000.0)
    assert all(torch.equal(same[0][k], same[1][k]) for k in same[0])

    metal_data = _sphere_dataset(tmp_path / "metal")
    image_path = next((metal_data / "imagesTr").glob("*.nii.gz"))
    ct = sitk.ReadImage(str(image_path))
    hu = sitk.GetArrayFromImage(ct)
    hu[8:16, 12, 12] = 3000
    with_rod = sitk.GetImageFromArray(hu)
    with_rod.CopyInformation(ct)
    sitk.WriteImage(with_rod, str(image_path))
    differ = weights(metal_data, "c", 0.0), weights(metal_data, "d", 2000.0)
    assert any(not torch.equal(differ[0][k], differ[1][k]) for k in differ[0])
