"""Truncated pixels in the exported dataset (issue 10, item 4): nnU-Net v2's ignore label in labelsTr, 255 in the
mask stacks, read back by our dataset reader, and left out of the training loss and the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import nrrd
import numpy as np
import pytest

from conftest import grid_volume, voxel_centers_ras, write_image
from XraySegSimLib import XrayGeometry, read_volume
from XraySegSimLib.export import ExportConfig, run_export
from XraySegSimLib.export_inputs import CaseInput, load_mapping
from XraySegSimLib.truncation import CutFaces


def cut_body_phantom(folder: Path) -> CaseInput:
    """A body cylinder along S cut by both axial end faces, a 'spine' through it (TotalSegmentator T6 = 38)."""
    volume = grid_volume(np.full((30, 48, 48), -1000.0, np.float32), 2.0)
    c = voxel_centers_ras(volume)
    body = np.linalg.norm(c[..., :2], axis=-1) < 35
    spine = np.linalg.norm(c[..., :2] - (0, -15), axis=-1) < 8
    volume.array[body] = 40.0
    volume.array[spine] = 900.0
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[spine] = 38
    ct = write_image(volume.array, volume.ijk_to_ras, folder / "cut_ct.nii.gz")
    lb = write_image(labels, volume.ijk_to_ras, folder / "cut_labels.nrrd")
    return CaseInput("cut", str(ct), str(lb))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ignore")
    case = cut_body_phantom(folder)
    config = ExportConfig(out=str(folder / "out"), view="chest-ap", views_per_ct=2, size=48, physics="none",
                          seed=3, test_fraction=0.0, ranges={"lao_deg": (-10, 10)})
    report = run_export([case], config, load_mapping("spine = vertebrae_T6"))
    assert report.n_ok == 2
    return folder / "out" / "Dataset501_XraySeg", case


@pytest.mark.slow
def test_labels_masks_and_dataset_json_carry_the_ignore_label(exported):
    root, case = exported
    data = json.loads((root / "dataset.json").read_text())
    atoms = [int(a) for a in json.loads((root / "atoms.json").read_text())["atoms"]]
    assert data["labels"]["ignore"] == max(atoms) + 1  # nnU-Net v2: the highest value, one above the last atom
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    manager = LabelManager(data["labels"], data["regions_class_order"])
    assert manager.has_ignore_label and manager.ignore_label == data["labels"]["ignore"]
    ct = read_volume(case.ct)
    faces = CutFaces(ct.array, ct.ras_to_ijk, packed=False)
    for sidecar_path in sorted((root / "sidecars").glob("*.json")):
        sidecar = json.loads(sidecar_path.read_text())
        expected = faces.mask(XrayGeometry.from_dict(sidecar["geometry"]))  # recomputed from the CT on disk
        label = nrrd.read(str(root / sidecar["files"]["label"]), index_order="C")[0]
        masks = nrrd.read(str(root / sidecar["files"]["masks"]), index_order="C")[0]
        assert expected.sum() > 0.1 * expected.size and (~expected).sum() > 0.1 * expected.size
        np.testing.assert_array_equal(label == data["labels"]["ignore"], expected)
        assert (masks[:, expected] == 255).all() and set(np.unique(masks[:, ~expected])) <= {0, 1}
        assert sidecar["ignored_pixels"] == int(expected.sum()) and "cut face" in sidecar["ignore_rule"]
        assert (masks[0][~expected] == 1).any()  # the spine is still labelled where the image is true
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(root), 1)


def test_dataset_reader_keeps_the_unknown_pixels_apart(exported):
    from XraySegInferLib.dataset import decode_regions, read_dataset, read_label_image
    from XraySegInferLib.ignore import IGNORE_VALUE, split_ignore

    root, _ = exported
    ds = read_dataset(root)
    assert ds.class_names == ["spine"] and ds.ignore_label == ds.dataset_json["labels"]["ignore"]
    case = ds.cases[0]
    _, masks, _ = ds.load(case)
    from_labels = decode_regions(read_label_image(case.label), ds.classes, ds.ignore_label)
    np.testing.assert_array_equal(masks, from_labels)
    binary, known = split_ignore(masks)
    assert (masks[:, ~known] == IGNORE_VALUE).all() and not binary[:, ~known].any() and binary.any()


def test_loss_and_metrics_ignore_the_unknown_pixels():
    import torch
    from monai.losses import DiceCELoss, DiceLoss

    from XraySegInferLib.ignore import masked_dice_ce

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 24, 24, generator=generator)
    target = (torch.rand(2, 3, 24, 24, generator=generator) > 0.6).float()
    known = torch.ones(2, 1, 24, 24)
    reference = (DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, target)
                 + torch.nn.BCEWithLogitsLoss()(logits, target))
    assert torch.isclose(masked_dice_ce(logits, target, known), reference, rtol=1e-5)
    legacy = DiceCELoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, target)
    assert torch.isclose(masked_dice_ce(logits, target, known, multilabel_ce="softmax"), legacy, rtol=1e-5)
    index = torch.randint(0, 3, (2, 1, 24, 24), generator=generator).float()
    reference = DiceCELoss(softmax=True, to_onehot_y=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, index)
    assert torch.isclose(masked_dice_ce(logits, index, known, "multiclass"), reference, rtol=1e-5)
    # Whatever the network says on unknown pixels, and whatever the target holds there, the loss is the same.
    known[:, :, :8] = 0
    for mode, tgt in (("multilabel", target), ("multiclass", index)):
        base = masked_dice_ce(logits, tgt, known, mode)
        changed_logits, changed_target = logits.clone(), tgt.clone()
        changed_logits[:, :, :8] = 50.0 * torch.randn(2, 3, 8, 24, generator=generator)
        changed_target[:, :, :8] = 1.0 - changed_target[:, :, :8].clamp(0, 1)
        assert torch.isclose(masked_dice_ce(changed_logits, changed_target, known, mode), base, rtol=1e-6)
        assert not torch.isclose(masked_dice_ce(changed_logits, changed_target, torch.ones_like(known), mode), base)


def test_foreground_crops_centre_on_labels_not_on_unknown_pixels():
    from XraySegInferLib.transforms import random_crop

    masks = np.zeros((2, 96, 96), np.uint8)
    masks[:, :, :48] = 255  # unknown half
    masks[1, 70, 80] = 1  # the one labelled pixel
    image = np.zeros((96, 96), np.float32)
    rng = np.random.default_rng(0)
    for _ in range(5):
        _, crop = random_crop(image, masks, (32, 32), rng, foreground_probability=1.0)
        assert (crop[1] == 1).sum() == 1


def test_multilabel_bce_charges_every_class_that_claims_a_pixel_of_no_class():
    """Between two ribs (a pixel of no class) the per-class BCE grows with the logit a class puts there; the
    softmax cross-entropy of MONAI's multi-channel DiceCELoss (the term before chest 0.4.0) is blind to it."""
    import torch

    from XraySegInferLib.ignore import masked_dice_ce

    target = torch.zeros(1, 2, 8, 8)
    target[:, 0, :4] = 1.0  # class 0 in the top half, nothing in the bottom half
    known = torch.ones(1, 1, 8, 8)
    logits = torch.where(target > 0, 6.0, -6.0)
    claimed = logits.clone()
    claimed[:, 0, 4:] = 6.0  # class 0 paints the empty half as well
    rise = {ce: float(masked_dice_ce(claimed, target, known, multilabel_ce=ce)
                      - masked_dice_ce(logits, target, known, multilabel_ce=ce)) for ce in ("bce", "softmax")}
    # the Dice term alone: class 0's Dice falls from 1 to 2*32/(64+32), the mean over two classes rises by 1/6
    assert rise["softmax"] == pytest.approx(1 / 6, abs=0.01)
    # the BCE adds about 6 nats on 32 of the 2 x 64 class-pixels: 1.5
    assert rise["bce"] - rise["softmax"] == pytest.approx(1.5, abs=0.02)


def test_the_multilabel_cross_entropy_is_checked_and_an_old_checkpoint_resumes_only_with_its_own():
    """An unknown term is refused when the config is made; a checkpoint without the field (made before it
    existed, so trained with the softmax term) resumes with "softmax" and is refused with the new default."""
    from XraySegInferLib.errors import InputError
    from XraySegInferLib.training import TrainConfig, _check_resumable

    with pytest.raises(ValueError, match="multilabel_ce"):
        TrainConfig(multilabel_ce="focal")
    old = {"path": "checkpoint_last.safetensors",
           "config": {"architecture": TrainConfig().architecture, "mode": "multilabel"}}
    _check_resumable(old, TrainConfig(multilabel_ce="softmax"))
    with pytest.raises(InputError, match="multilabel_ce"):
        _check_resumable(old, TrainConfig())
