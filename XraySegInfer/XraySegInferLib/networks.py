"""2D segmentation networks from MONAI, built from a JSON-able description (stored in the model card).

``{"name": "UNet", "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1, "norm": "instance"}``
or ``{"name": "BasicUNet", "features": [16, 32, 64, 128, 256, 16]}``. ``in_channels`` is 1 (a radiograph);
``out_channels`` follows from the classes and the label mode: C + 1 (background) for "multiclass" (softmax),
C for "multilabel" (a sigmoid per class, overlaps allowed).
"""

from __future__ import annotations

import torch

from .errors import ModelPackageError

MODES = ("multilabel", "multiclass")

DEFAULT_ARCHITECTURE = {"name": "UNet", "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2],
                        "num_res_units": 1, "norm": "instance", "dropout": 0.0}


def out_channels_for(mode: str, n_classes: int) -> int:
    if mode not in MODES:
        raise ModelPackageError(f"label mode must be one of {MODES}, got {mode!r}")
    return n_classes + 1 if mode == "multiclass" else n_classes


def build_network(architecture: dict, n_classes: int, mode: str) -> torch.nn.Module:
    """A MONAI network for 1-channel 2D input and the right number of outputs (see module docstring)."""
    from monai.networks import nets

    arch = dict(architecture)
    name = arch.pop("name", "UNet")
    out = out_channels_for(mode, n_classes)
    arch.pop("in_channels", None)
    arch.pop("out_channels", None)
    try:
        if name == "UNet":
            return nets.UNet(spatial_dims=2, in_channels=1, out_channels=out,
                             channels=tuple(arch.pop("channels")), strides=tuple(arch.pop("strides")), **arch)
        if name == "BasicUNet":
            return nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=out,
                                  features=tuple(arch.pop("features", (16, 32, 64, 128, 256, 16))), **arch)
    except (TypeError, KeyError, ValueError, AssertionError) as error:
        raise ModelPackageError(f"cannot build network {name} from {architecture}: {error}") from error
    raise ModelPackageError(f"unknown network {name!r}; use UNet or BasicUNet")


def size_divisor(architecture: dict) -> int:
    """Input sizes must be multiples of this (the product of the strides)."""
    if architecture.get("name", "UNet") == "BasicUNet":
        return 16
    divisor = 1
    for s in architecture.get("strides", [2, 2, 2, 2]):
        divisor *= int(s)
    return divisor


def probabilities(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-class foreground probabilities (N, C, H, W) for either mode (multiclass drops the background)."""
    if mode == "multiclass":
        return torch.softmax(logits.float(), dim=1)[:, 1:]
    return torch.sigmoid(logits.float())
