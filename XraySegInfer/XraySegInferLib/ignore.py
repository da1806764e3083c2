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


def masked_dice_ce(logits, target, known, mode: str = "multilabel", smooth: float = 1e-5,
                   multilabel_ce: str = "bce"):
    """Dice + cross-entropy over the known pixels only (batch Dice: one per class over the whole batch).

    Multilabel, ``multilabel_ce="bce"`` (default): a binary cross-entropy per class and pixel, so a pixel that
    belongs to no class (between two ribs) costs every class that claims it; with every pixel known it equals
    MONAI's ``DiceLoss(sigmoid=True, batch=True)`` + ``BCEWithLogitsLoss()`` (tested). ``"softmax"`` is what
    MONAI's ``DiceCELoss(sigmoid=True)`` does with more than one channel, and what trained the models before
    0.4.0 of the chest model: a softmax cross-entropy against the multi-hot target, which is zero on pixels of
    no class, so there only the Dice term pushes back; those models painted whole hemithoraces as "ribs".
    Multiclass: softmax cross-entropy, as MONAI's ``DiceCELoss(softmax=True, to_onehot_y=True)``.

    ``logits`` (N, C, H, W); ``target``: (N, C, H, W) binary (multilabel) or (N, 1, H, W) class index with
    C = classes + background (multiclass); ``known`` (N, 1, H, W) 1 = known, 0 = ignored."""
    import torch
    import torch.nn.functional as F

    weight = known.to(logits.dtype)
    if mode == "multilabel":
        probability = torch.sigmoid(logits)
        onehot = target.to(logits.dtype)
        if multilabel_ce == "bce":
            per_element = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
            ce = (per_element * weight).sum() / (weight.sum() * logits.shape[1]).clamp_min(1.0)
        elif multilabel_ce == "softmax":
            per_pixel = -(onehot * torch.log_softmax(logits, dim=1)).sum(1, keepdim=True)
            ce = (per_pixel * weight).sum() / weight.sum().clamp_min(1.0)
        else:
            raise ValueError(f"multilabel_ce must be 'bce' or 'softmax', got {multilabel_ce!r}")
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
