"""The 3D training loss (ct_training.dice_l2_loss): per-patch or batch Dice, the cross-entropy term, the L2 term."""

from __future__ import annotations

import math

import pytest


def test_batch_dice_charges_the_false_positives_of_a_patch_without_the_structure():
    """Per-patch Dice: an empty patch with soft false positives scores ~1 whatever it predicts (a gradient of order
    the smoothing term, 1e-5); batch Dice: its false positives lower the one Dice of the batch, by the
    hand-computed amount, and push its logits down."""
    import torch

    from XraySegInferLib.ct_training import dice_l2_loss

    network = torch.nn.Conv3d(1, 1, 1)
    target = torch.zeros(2, 1, 2, 2, 2)
    target[0, 0, 0] = 1  # patch 0: 4 foreground voxels, predicted exactly; patch 1: empty, 4 voxels predicted
    logits = torch.full((2, 2, 2, 2, 2), -50.0)
    logits[:, 1] = 50.0 * (2 * target[:, 0] - 1)
    logits[1, 1, 0] = 50.0
    logits[:, 0] = -logits[:, 1]
    per_patch = dice_l2_loss(network, logits, target, 0.0)[1]
    batch = dice_l2_loss(network, logits, target, 0.0, batch_dice=True)[1]
    assert float(per_patch) == pytest.approx(0.5, abs=1e-3)  # (0 + 1) / 2
    assert float(batch) == pytest.approx(1 - 2 * 4 / (8 + 4), abs=1e-3)  # tp 4, 8 predicted, 4 true
    soft = logits.clone()
    soft[1] = 0.0  # the empty patch: probability 0.5 everywhere
    gradients = {}
    for batch_dice in (False, True):
        x = soft.clone().requires_grad_(True)
        dice_l2_loss(network, x, target, 0.0, batch_dice=batch_dice)[1].backward()
        gradients[batch_dice] = float(x.grad[1, 1].abs().max())
    assert gradients[False] < 1e-5 < 1e-2 < gradients[True]


def test_the_cross_entropy_term_is_the_hand_computed_mean_over_voxels():
    """--ce-weight w: total = Dice + w * CE + lambda * L2, CE the mean over voxels of -log softmax of the true class;
    w = 0 leaves the loss as it was."""
    import torch

    from XraySegInferLib.ct_training import dice_l2_loss

    network = torch.nn.Conv3d(1, 1, 1, bias=False).requires_grad_(False)
    network.weight.fill_(2.0)  # L2 = 4
    target = torch.zeros(1, 1, 1, 1, 2)
    target[0, 0, 0, 0, 1] = 1  # voxel 0 background, voxel 1 foreground
    logits = torch.zeros(1, 2, 1, 1, 2)
    logits[0, 1, 0, 0, 0] = math.log(3.0)  # voxel 0: p(fg) = 3/4, so -log p(bg) = log 4
    logits[0, 1, 0, 0, 1] = 0.0  # voxel 1: p(fg) = 1/2, -log p(fg) = log 2
    plain, dice, l2 = dice_l2_loss(network, logits, target, 0.01)
    assert float(l2) == pytest.approx(4.0) and float(plain) == pytest.approx(float(dice) + 0.04, abs=1e-6)
    with_ce = dice_l2_loss(network, logits, target, 0.01, ce_weight=0.5)[0]
    expected_ce = (math.log(4.0) + math.log(2.0)) / 2
    assert float(with_ce) == pytest.approx(float(plain) + 0.5 * expected_ce, abs=1e-6)
