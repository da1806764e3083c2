"""2D segmentation networks from MONAI, built from a JSON-able description (stored in the model card).

``{"name": "UNet", "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1, "norm": "instance"}``
or ``{"name": "BasicUNet", "features": [16, 32, 64, 128, 256, 16]}``. ``in_channels`` is 1 (a radiograph);
``out_channels`` follows from the classes and the label mode: C + 1 (background) for "multiclass" (softmax),
C for "multilabel" (a sigmoid per class, overlaps allowed).

``{"name": "Ensemble", "members": N, "member": {...}}`` is the mean of N networks (``xrayseg ensemble``).

``"local_contrast_px": S`` (optional) puts a fixed local-contrast filter in front of the network (see
:class:`LocalContrast`); the network then sees edges at the scale of bones, not the image's global grey levels.
"""

from __future__ import annotations

import torch

from .ensemble import ENSEMBLE
from .errors import ModelPackageError

MODES = ("multilabel", "multiclass")

DEFAULT_ARCHITECTURE = {"name": "UNet", "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2],
                        "num_res_units": 1, "norm": "instance", "dropout": 0.0}


def out_channels_for(mode: str, n_classes: int) -> int:
    if mode not in MODES:
        raise ModelPackageError(f"label mode must be one of {MODES}, got {mode!r}")
    return n_classes + 1 if mode == "multiclass" else n_classes


class LocalContrast(torch.nn.Module):
    """Fixed input filter: ``(x - G(x)) / sqrt(G((x - G(x))^2) + floor^2)``, clipped to +-``clip``, with G a Gaussian
    of ``sigma_px`` pixels (at the model's spacing). It removes what differs most between simulated and real
    radiographs and between bodies (overall brightness, thickness gradients, vendor windowing) and keeps the local
    edges the bones make. ``floor`` (0.01 of the [0, 1] range) keeps flat regions from amplifying noise. No weights.
    """

    def __init__(self, sigma_px: float, floor: float = 0.01, clip: float = 4.0):
        super().__init__()
        if not 0 < sigma_px < float("inf"):
            raise ModelPackageError(f"local_contrast_px must be > 0, got {sigma_px}")
        self.sigma_px, self.floor, self.clip = float(sigma_px), float(floor), float(clip)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from .transforms import gaussian_blur

        with torch.autocast(image.device.type, enabled=False):  # the same float32 filter under AMP as on a CPU
            x = image.float()
            high_pass = x - gaussian_blur(x, self.sigma_px)
            local_std = torch.sqrt(gaussian_blur(high_pass * high_pass, self.sigma_px) + self.floor ** 2)
            return torch.clamp(high_pass / local_std, -self.clip, self.clip).to(image.dtype)


def build_network(architecture: dict, n_classes: int, mode: str) -> torch.nn.Module:
    """A MONAI network for 1-channel 2D input and the right number of outputs (see module docstring); an
    ``Ensemble`` architecture gives the mean of its members (:mod:`.ensemble`)."""
    if architecture.get("name") == ENSEMBLE:
        from .ensemble import build_ensemble

        return build_ensemble(architecture, n_classes, mode)
    arch = dict(architecture)
    sigma = arch.pop("local_contrast_px", None)
    network = _build_monai(arch, n_classes, mode, architecture)
    return torch.nn.Sequential(LocalContrast(float(sigma)), network) if sigma is not None else network


def _build_monai(arch: dict, n_classes: int, mode: str, architecture: dict) -> torch.nn.Module:
    from monai.networks import nets

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
    if architecture.get("name") == ENSEMBLE:
        return size_divisor(architecture["member"])
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
