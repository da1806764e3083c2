"""Unknown pixels ("ignore"): excluded from the training loss and from the metrics.

The exporter marks the pixels whose ray crosses body beyond a cut face of the CT (``XraySegSimLib.truncation``):
in ``labelsTr`` with nnU-Net v2's ``"ignore"`` label (dataset.json), in the mask stacks with ``IGNORE_VALUE`` in
every class plane. In memory our masks are uint8 (C, H, W): 0/1 per class, ``IGNORE_VALUE`` where unknown.
"""

from __future__ import annotations

import numpy as np

IGNORE_VALUE = 255  # = XraySegSimLib.truncation.IGNORE_MASK_VALUE


def split_ignore(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(binary masks (C, H, W) bool, known pixels (H, W) bool) from masks that may hold ``IGNORE_VALUE``."""
    masks = np.asarray(masks)
    unknown = (masks == IGNORE_VALUE).any(axis=0) if masks.shape[0] else np.zeros(masks.shape[1:], bool)
    return (masks == 1) & ~unknown, ~unknown


def masked_dice_ce(logits, target, known, mode: str = "multilabel", smooth: float = 1e-5):
    """Dice + cross-entropy over the known pixels only; with every pixel known it equals MONAI's
    ``DiceCELoss(sigmoid=True | softmax=True, to_onehot_y=..., batch=True, smooth_nr=smooth, smooth_dr=smooth)``
    (tested), so an export without unknown pixels trains as before.

    ``logits`` (N, C, H, W); ``target``: (N, C, H, W) binary (multilabel) or (N, 1, H, W) class index with
    C = classes + background (multiclass); ``known`` (N, 1, H, W) 1 = known, 0 = ignored."""
    import torch
    import torch.nn.functional as F

    weight = known.to(logits.dtype)
    if mode == "multilabel":
        probability = torch.sigmoid(logits)
        onehot = target.to(logits.dtype)
        # As MONAI's DiceCELoss with more than one channel: softmax cross-entropy against the multi-hot target
        # taken as class probabilities (not a per-class BCE), which is what trained the bundled model.
        per_pixel = -(onehot * torch.log_softmax(logits, dim=1)).sum(1, keepdim=True)
        ce = (per_pixel * weight).sum() / weight.sum().clamp_min(1.0)
    else:
        probability = torch.softmax(logits, dim=1)
        index = target[:, 0].long()
        onehot = F.one_hot(index, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
        per_pixel = F.cross_entropy(logits, index, reduction="none")
        ce = (per_pixel * weight[:, 0]).sum() / weight.sum().clamp_min(1.0)
    dims = (0, 2, 3)  # batch=True: one Dice per class over the whole batch
    intersection = (probability * onehot * weight).sum(dims)
    total = (probability * weight).sum(dims) + (onehot * weight).sum(dims)
    dice = 1.0 - (2.0 * intersection + smooth) / (total + smooth)
    return dice.mean() + ce
