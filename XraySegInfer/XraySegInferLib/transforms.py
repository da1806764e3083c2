"""Resampling and radiograph augmentation (on torch batches, so they run on the GPU when training there).

Augmentations suited to radiographs: contrast/brightness, gamma, Gaussian noise, Gaussian blur and a small
affine (rotation, scale, translation). Flips are OFF by default: a flipped PA chest puts the heart on the wrong
side and a flipped lateral is another projection. Horizontal flips are opt-in per dataset
(``AugmentConfig.flip_horizontal``); when on, classes named ``*left*``/``*right*`` swap along with the image.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    probability: float = 0.8  # chance per sample that each group below is drawn at all
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate_fraction: float = 0.05
    contrast: tuple[float, float] = (0.75, 1.25)
    brightness: float = 0.1
    gamma: tuple[float, float] = (0.7, 1.5)
    noise_std: float = 0.04
    blur_sigma_px: tuple[float, float] = (0.5, 1.5)
    blur_probability: float = 0.2
    flip_horizontal: float = 0.0  # opt-in; never for lateral views

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "AugmentConfig":
        data = dict(data or {})
        for key in ("scale", "contrast", "gamma", "blur_sigma_px"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def left_right_pairs(names: list[str]) -> list[tuple[int, int]]:
    """Index pairs of classes that swap under a left/right flip (``rib_left_3`` <-> ``rib_right_3``)."""
    pairs = []
    for i, name in enumerate(names):
        if re.search(r"left", name, re.IGNORECASE):
            twin = re.sub(r"left", "right", name, flags=re.IGNORECASE)
            for j, other in enumerate(names):
                if other.lower() == twin.lower():
                    pairs.append((i, j))
    return pairs


def resample(array: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resample (N, C, H, W) to ``size``; area-antialiased when shrinking an image, nearest for labels."""
    if tuple(array.shape[-2:]) == tuple(size):
        return array
    if mode == "nearest":
        return F.interpolate(array, size=size, mode="nearest-exact")
    shrinking = size[0] < array.shape[-2] or size[1] < array.shape[-1]
    return F.interpolate(array, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def resampled_size(shape: tuple[int, int], spacing: tuple[float, float], target: tuple[float, float]) -> tuple[int, int]:
    """Pixels covering the same field of view at ``target`` spacing (row_mm, col_mm)."""
    return (max(1, int(round(shape[0] * spacing[0] / target[0]))), max(1, int(round(shape[1] * spacing[1] / target[1]))))


def _gaussian_kernel(sigma: float, device, dtype) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, H, W), reflect padding (replicate along a side shorter than the kernel's
    radius, where reflection is undefined)."""
    k = _gaussian_kernel(sigma, image.device, image.dtype)
    r = (k.numel() - 1) // 2
    across, down = ("reflect" if r < n else "replicate" for n in (image.shape[-1], image.shape[-2]))
    out = F.conv2d(F.pad(image, (r, r, 0, 0), mode=across), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, r, r), mode=down), k.view(1, 1, -1, 1))


def augment_batch(images: torch.Tensor, masks: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                  flip_pairs: list[tuple[int, int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment (N, 1, H, W) images in [0, 1] and (N, C, H, W) binary float masks; returns new tensors."""
    n = images.shape[0]
    device = images.device

    def uniform(low: float, high: float, size: int = n) -> torch.Tensor:
        return low + (high - low) * torch.rand(size, generator=generator).to(device)

    def chosen(p: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) < p).to(device)

    images, masks = images.clone(), masks.clone()
    # Spatial: small affine, same for image and masks.
    use = chosen(config.probability)
    angle = torch.deg2rad(uniform(-config.rotate_deg, config.rotate_deg)) * use
    scale = torch.where(use, uniform(*config.scale), torch.ones(n, device=device))
    shift = uniform(-config.translate_fraction, config.translate_fraction, 2 * n).view(n, 2) * 2 * use[:, None]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    if config.flip_horizontal > 0:
        flip = chosen(config.flip_horizontal)
        theta[:, 0, 0] = torch.where(flip, -theta[:, 0, 0], theta[:, 0, 0])
        theta[:, 1, 0] = torch.where(flip, -theta[:, 1, 0], theta[:, 1, 0])
        for i, j in flip_pairs or []:
            mi, mj = masks[flip, i].clone(), masks[flip, j].clone()
            masks[flip, i], masks[flip, j] = mj, mi
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    masks = (F.grid_sample(masks, grid.to(masks.dtype), mode="bilinear", padding_mode="zeros",
                           align_corners=False) > 0.5).to(masks.dtype)
    # Intensity: contrast about the mean, brightness, gamma.
    use = chosen(config.probability)[:, None, None, None]
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(*config.contrast)[:, None, None, None]
    brightness = uniform(-config.brightness, config.brightness)[:, None, None, None]
    images = torch.where(use, ((images - mean) * contrast + mean + brightness).clamp(0, 1), images)
    use = chosen(config.probability)[:, None, None, None]
    log_gamma = uniform(math.log(config.gamma[0]), math.log(config.gamma[1]))[:, None, None, None]
    images = torch.where(use, images.clamp(1e-6, 1) ** torch.exp(log_gamma), images)
    # Blur (detector/focal spot), then noise.
    blur = chosen(config.blur_probability)
    for index in torch.nonzero(blur).flatten().tolist():
        sigma = float(uniform(*config.blur_sigma_px, 1)[0])
        images[index: index + 1] = gaussian_blur(images[index: index + 1], sigma)
    use = chosen(config.probability)[:, None, None, None]
    std = uniform(0, config.noise_std)[:, None, None, None]
    noise = torch.randn(images.shape, generator=generator).to(device) * std
    images = torch.where(use, images + noise, images)
    return images, masks


def random_crop(image: np.ndarray, masks: np.ndarray, size: tuple[int, int], rng: np.random.Generator,
                foreground_probability: float = 0.33) -> tuple[np.ndarray, np.ndarray]:
    """A (size) crop of (H, W) image and (C, H, W) masks, zero-padded when smaller; with
    ``foreground_probability`` the crop is centred on a random labelled pixel (value 1; unknown pixels, 255,
    are not foreground)."""
    h, w = image.shape
    ph, pw = max(0, size[0] - h), max(0, size[1] - w)
    if ph or pw:
        pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
        image = np.pad(image, pads, mode="constant")
        masks = np.pad(masks, ((0, 0),) + pads, mode="constant")
        h, w = image.shape
    labelled = (masks == 1).any(axis=0)
    if rng.random() < foreground_probability and labelled.any():
        ys, xs = np.nonzero(labelled)
        k = rng.integers(len(ys))
        y0 = int(np.clip(ys[k] - size[0] // 2, 0, h - size[0]))
        x0 = int(np.clip(xs[k] - size[1] // 2, 0, w - size[1]))
    else:
        y0 = int(rng.integers(0, h - size[0] + 1))
        x0 = int(rng.integers(0, w - size[1] + 1))
    return image[y0: y0 + size[0], x0: x0 + size[1]], masks[:, y0: y0 + size[0], x0: x0 + size[1]]
