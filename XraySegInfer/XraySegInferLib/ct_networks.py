"""3D networks for CT bone segmentation: MONAI's V-Net, full size or built narrower from MONAI's own V-Net blocks.

MONAI's ``VNet`` has a fixed width (16 channels at full resolution, 256 at the bottom: 45.6 M parameters, 182 MB),
too big to bundle with the extension and slow on a CPU. ``CompactVNet`` keeps the V-Net design of Milletari et al.
(5x5x5 residual convolution stages, strided-convolution down-sampling, transposed-convolution up-sampling, PReLU/ELU,
skip connections by concatenation), assembled from MONAI's ``InputTransition``/``DownTransition``/``UpTransition``/
``OutputTransition`` with a chosen base width and depth. The architecture dict in the model card says which.

``norm``: MONAI's V-Net blocks use batch normalisation. At the batch sizes a CPU affords (2 patches), its running
statistics do not describe whole-volume sliding windows: the first femur model scored 0.75 Dice on its own training
femur in eval mode and 0.87 with batch statistics. ``"norm": "instance"`` swaps every BatchNorm3d for an affine
InstanceNorm3d, which behaves the same in training and inference; cards without ``norm`` keep batch norm.
"""

from __future__ import annotations

from typing import Any

# The bundled femur demonstrator: 8 channels at full resolution, 3 down-sampling stages (3.2 M parameters, stored as float16: 6.4 MB).
DEFAULT_ARCHITECTURE: dict[str, Any] = {"name": "vnet-compact", "base_channels": 8, "depth": 3, "dropout": 0.2,
                                         "norm": "instance"}


def build_ct_network(architecture: dict[str, Any], out_channels: int):
    """A 3D network from the card's ``architecture``: ``vnet`` (MONAI VNet as is) or ``vnet-compact``."""
    from monai.networks.nets import VNet

    name = architecture.get("name")
    if name == "vnet":
        network = VNet(spatial_dims=3, in_channels=1, out_channels=out_channels,
                       dropout_prob_down=architecture.get("dropout", 0.5),
                       dropout_prob_up=(architecture.get("dropout", 0.5),) * 2)
    elif name == "vnet-compact":
        network = _compact_vnet(int(architecture["base_channels"]), int(architecture["depth"]), out_channels,
                                float(architecture.get("dropout", 0.0)))
    else:
        raise ValueError(f"unknown 3D architecture '{name}' (expected vnet or vnet-compact)")
    norm = architecture.get("norm", "batch")
    if norm == "instance":
        _batch_to_instance_norm(network)
    elif norm != "batch":
        raise ValueError(f"unknown normalisation '{norm}' (expected batch or instance)")
    return network


def _batch_to_instance_norm(module) -> None:
    """Replace every BatchNorm3d below ``module`` by an affine InstanceNorm3d of the same width (in place)."""
    import torch

    for child_name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm3d):
            setattr(module, child_name, torch.nn.InstanceNorm3d(child.num_features, affine=True))
        else:
            _batch_to_instance_norm(child)


def size_divisor(architecture: dict[str, Any]) -> int:
    """Patch sides must be multiples of this (one halving per down-sampling stage)."""
    return 2 ** (4 if architecture.get("name") == "vnet" else int(architecture["depth"]))


def _compact_vnet(base: int, depth: int, out_channels: int, dropout: float):
    import torch
    from monai.networks.nets.vnet import DownTransition, InputTransition, OutputTransition, UpTransition

    act = ("elu", {"inplace": True})
    # Convolutions per stage as in the V-Net paper (1, 2, 3, 3, ...), fewer on the way up.
    down_convs = [1, 2, 3, 2][:depth] + [2] * max(0, depth - 4)
    deep_dropout = dropout if dropout > 0 else None

    class CompactVNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input = InputTransition(3, 1, base, act)
            self.down = torch.nn.ModuleList()
            self.up = torch.nn.ModuleList()
            channels = base
            for level, convs in enumerate(down_convs):
                deep = level >= depth - 2
                self.down.append(DownTransition(3, channels, convs, act,
                                                dropout_prob=deep_dropout if deep else None))
                channels *= 2
            for level in range(depth):
                # UpTransition(in, out): up-convolve to out/2 channels (the size of the matching skip), concatenate
                # the skip, convolve at ``out``; as in MONAI's VNet, out halves at each level after the first.
                out = base * 2 ** (depth - level)
                deep = level < 2
                self.up.append(UpTransition(3, channels, out, 2 if deep else 1, act,
                                            dropout_prob=(deep_dropout, dropout) if deep else (None, 0.0)))
                channels = out
            self.output = OutputTransition(3, channels, out_channels, act)

        def forward(self, x):
            skips = [self.input(x)]
            for stage in self.down:
                skips.append(stage(skips[-1]))
            y = skips.pop()
            for stage in self.up:
                y = stage(y, skips.pop())
            return self.output(y)

    return CompactVNet()
