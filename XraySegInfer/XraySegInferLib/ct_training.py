"""Patch training of a 3D V-Net on CT, with the femur paper's loss: Dice + lambda * L2.

Loss = soft Dice loss of the foreground (softmax, background excluded) + ``l2_weight`` * the sum of squared
convolution weights (biases and normalisation parameters excluded). The L2 term is the paper's "L2 regulariser": it
penalises large weights (as weight decay does, but added to the loss explicitly so that its value is logged and the
optimiser stays plain Adam). Default lambda = 1e-4: at initialisation the term is about 4% of the loss (bundled network: sum of squares ~270).

Augmentation: random left-right flips (so one network serves both sides), affine (rotation, scale), intensity
scale/shift and noise; optionally synthetic metal implants (``metal_fraction``, ct_augment).

Every step draws its patches and augmentations from generators seeded by (seed, step), so a resumed run is
bit-identical to an uninterrupted one. Checkpoints are safetensors + JSON (never pickle).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .ct_augment import add_synthetic_implant
from .ct_data import HU_RANGE, CtDataset, MetalSuppression, load_case, read_ct_dataset
from .ct_networks import DEFAULT_ARCHITECTURE, size_divisor
from .errors import DatasetError, InputError

CHECKPOINT = "checkpoint_last"


@dataclass
class CtTrainConfig:
    steps: int = 600
    batch_size: int = 2
    patch_size: tuple[int, int, int] = (64, 64, 64)  # voxels (k, j, i)
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)  # (x, y, z) as SimpleITK gives it
    learning_rate: float = 1e-3
    l2_weight: float = 1e-4
    foreground_fraction: float = 0.7  # share of patches centred on a foreground voxel
    checkpoint_every: int = 100
    architecture: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_ARCHITECTURE))
    seed: int = 0
    device: str = "auto"
    name: str = "CT bone segmentation (3D V-Net)"
    # Cases whose id contains the text are drawn ``factor`` times as often as the others (e.g. one real CT femur
    # among many phantom femurs): [[text, factor], ...].
    oversample: list[list[Any]] = field(default_factory=list)
    init_from: str = ""  # a 3D model package whose weights start the run (fine-tuning); empty: random start
    flip: bool = True  # random left-right flips (off: the augmentation of the first bundled femur model)
    # The body side the training cases show ("left"/"right"; empty: either). On a whole CT, ct-segment predicts the
    # other side on the mirrored CT and keeps the largest component per side (ct_sides).
    trained_side: str = ""
    batch_dice: bool = False  # one Dice over the batch (see dice_l2_loss)
    ce_weight: float = 0.0  # weight of a cross-entropy term added to the loss (see dice_l2_loss; 0: off)
    metal_fraction: float = 0.0  # share of patches given a synthetic metal implant (ct_augment)
    metal_outside: float = 0.0  # share of those rods laid anywhere in the patch, not only inside the structure
    # Metal above this HU (and its rim) set to metal_fill_hu in training and segmentation (0: off; ct_data).
    suppress_metal_above_hu: float = 0.0
    metal_fill_hu: float = 150.0

    @property
    def metal_suppression(self) -> MetalSuppression | None:
        if not self.suppress_metal_above_hu:
            return None
        return MetalSuppression(self.suppress_metal_above_hu, self.metal_fill_hu)


def l2_penalty(network) -> Any:
    """Sum of squared convolution weights (the tensors with more than one dimension)."""
    return sum((p ** 2).sum() for name, p in network.named_parameters() if p.ndim > 1)


def dice_l2_loss(network, logits, target, l2_weight: float, batch_dice: bool = False, ce_weight: float = 0.0):
    """(total, dice part, L2 part) for logits (B, 2, ...) and a binary target (B, 1, ...).

    ``batch_dice``: one Dice over the whole batch instead of the mean of per-patch Dice. A patch without the
    structure then still costs its false positives (its own Dice is ~1 whatever it predicts, so it gives no
    gradient): needed when many patches lie away from the structure (femur-data --train-region half-body).
    ``ce_weight``: adds that times the voxel-wise cross-entropy (mean over voxels) to the total, as nnU-Net's
    Dice + CE loss does: every voxel then has a gradient, not only those the Dice ratio weighs."""
    import torch.nn.functional as F
    from monai.losses import DiceLoss

    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=batch_dice)(logits, target)
    l2 = l2_penalty(network)
    total = dice + l2_weight * l2
    if ce_weight:
        total = total + ce_weight * F.cross_entropy(logits, target[:, 0].long())
    return total, dice, l2


def _augmentation(seed: int, flip: bool = True):
    from monai.transforms import (Compose, RandAffined, RandFlipd, RandGaussianNoised, RandScaleIntensityd,
                                  RandShiftIntensityd)

    # Left-right flips: one network for either side (a left femur mirrored is a right one).
    flips = [RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=2)] if flip else []
    transforms = Compose([
        *flips,
        RandAffined(keys=("image", "label"), prob=0.8, rotate_range=(0.17, 0.17, 0.17), scale_range=(0.1,) * 3,
                    mode=("bilinear", "nearest"), padding_mode="border"),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
        RandGaussianNoised(keys="image", std=0.03, prob=0.3),
    ])
    transforms.set_random_state(seed=seed)
    return transforms


def _crop(array: np.ndarray, centre: np.ndarray, size: tuple[int, int, int], fill: float) -> np.ndarray:
    """A ``size`` box of ``array`` centred on ``centre``, padded with ``fill`` beyond the edges."""
    out = np.full(size, fill, dtype=array.dtype)
    start = centre - np.array(size) // 2
    src_lo, src_hi = np.maximum(start, 0), np.minimum(start + size, array.shape)
    dst_lo = src_lo - start
    dst_hi = dst_lo + (src_hi - src_lo)
    out[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))] = array[tuple(slice(a, b) for a, b in zip(src_lo, src_hi))]
    return out


def case_weights(case_ids: list[str], oversample: list[list[Any]]) -> np.ndarray:
    """Probabilities of drawing each case: 1 each, times ``factor`` for every ``[text, factor]`` its id contains."""
    weights = np.ones(len(case_ids))
    for text, factor in oversample:
        if float(factor) <= 0:
            raise InputError(f"--oversample {text} {factor}: the factor must be positive")
        hits = np.array([str(text) in case_id for case_id in case_ids])
        if not hits.any():
            raise InputError(f"--oversample {text}: no training case id contains '{text}'")
        weights[hits] *= float(factor)
    return weights / weights.sum()


def _batch(volumes: list[tuple[np.ndarray, np.ndarray]], foreground: list[np.ndarray], config: CtTrainConfig,
           step: int, weights: np.ndarray):
    import torch

    rng = np.random.default_rng([config.seed, step])
    transforms = _augmentation(int(rng.integers(2 ** 31)), config.flip)
    uniform = bool(np.allclose(weights, weights[0]))
    images, labels = [], []
    for _ in range(config.batch_size):
        # Uniform draws as before oversampling existed, so that earlier runs are reproduced.
        index = int(rng.integers(len(volumes))) if uniform else int(rng.choice(len(volumes), p=weights))
        image, label = volumes[index]
        if rng.random() < config.foreground_fraction and len(foreground[index]):
            centre = foreground[index][int(rng.integers(len(foreground[index])))]
        else:
            centre = np.array([int(rng.integers(n)) for n in image.shape])
        image_patch, label_patch = _crop(image, centre, config.patch_size, -1.0), _crop(label, centre, config.patch_size, 0)
        # Drawn only when asked for, so that runs without implants keep their random streams.
        if config.metal_fraction > 0 and rng.random() < config.metal_fraction:
            # Painted as real metal looks after the run's preprocessing: saturated, or suppressed to the fill.
            metal_hu = config.metal_fill_hu if config.metal_suppression else HU_RANGE[1]
            image_patch = add_synthetic_implant(image_patch, label_patch, rng, metal_hu / 1000.0,
                                                config.metal_outside)
        sample = transforms({"image": image_patch[None], "label": label_patch[None].astype(np.float32)})
        images.append(torch.as_tensor(np.asarray(sample["image"]), dtype=torch.float32))
        labels.append(torch.as_tensor(np.asarray(sample["label"]), dtype=torch.float32).round())
    return torch.stack(images), torch.stack(labels)


def _save_checkpoint(out: Path, network, optimiser, step: int, config: CtTrainConfig, history: list) -> None:
    from safetensors.torch import save_file
    from XraySegSimLib.io import atomic_path, write_json

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    state = optimiser.state_dict()
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous().reshape(value.shape)
    with atomic_path(out / f"{CHECKPOINT}.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json(out / f"{CHECKPOINT}.json", {"step": step, "config": asdict(config), "history": history,
                                             "param_groups": state["param_groups"]})


def _load_checkpoint(out: Path, network, optimiser, config: CtTrainConfig) -> tuple[int, list]:
    from safetensors.torch import load_file

    try:
        meta = json.loads((out / f"{CHECKPOINT}.json").read_text())
        tensors = load_file(str(out / f"{CHECKPOINT}.safetensors"))
    except (OSError, ValueError, RuntimeError) as error:
        raise InputError(f"cannot resume from {out}: its checkpoint is missing or damaged ({error}); start again "
                         "without --resume in a new folder") from None
    # Everything but the number of steps must match (a resume may extend the run; the learning rate is constant).
    # A setting the checkpoint predates had its default then.
    defaults = json.loads(json.dumps(asdict(CtTrainConfig())))
    saved, wanted = {**defaults, **meta["config"]}, json.loads(json.dumps(asdict(config)))
    saved.pop("steps"), wanted.pop("steps")
    if saved != wanted:
        raise InputError(f"cannot resume from {out}: it was trained with other settings; use the same options "
                         "or a new --out folder")
    network.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimiser.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"]), list(meta["history"])


def _initial_weights(network, package: str, architecture: dict[str, Any]) -> None:
    """Load a 3D package's weights into ``network``; its architecture must be the run's."""
    from .ct_package import load_ct_package

    model = load_ct_package(package)
    if model.card["architecture"] != architecture:
        raise InputError(f"--init-from {package}: its architecture {model.card['architecture']} is not this run's "
                         f"{architecture}; use the same network options")
    network.load_state_dict(model.network.state_dict())


def _check_patch(config: CtTrainConfig) -> None:
    divisor = size_divisor(config.architecture)
    if any(s <= 0 or s % divisor for s in config.patch_size):
        raise InputError(f"--patch-size must be positive multiples of {divisor} for this network, got "
                         f"{config.patch_size}")


def train_ct(dataset_dir: str | Path, out_dir: str | Path, config: CtTrainConfig | None = None,
             resume: bool = False, progress: Callable[[int, int, float], None] | None = None) -> Path:
    """Train on a 3D dataset's imagesTr/labelsTr; write ``out_dir/model`` (package) and checkpoints.

    Returns the package folder. ``progress(step, steps, loss)`` is called after every step.
    """
    import torch

    from .ct_networks import build_ct_network
    from .ct_package import save_ct_package
    from .inference import pick_device

    config = config or CtTrainConfig()
    _check_patch(config)
    dataset: CtDataset = read_ct_dataset(dataset_dir)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not resume:
        raise InputError(f"{out} already holds files; give a new --out folder, or --resume to continue there")
    out.mkdir(parents=True, exist_ok=True)
    volumes = [load_case(case, config.spacing_mm, config.metal_suppression) for case in dataset.train]
    foreground = [np.argwhere(label > 0) for _, label in volumes]
    if not any(len(f) for f in foreground):
        raise DatasetError(f"{dataset.root}: the training labels are all empty")
    weights = case_weights([c.case_id for c in dataset.train], config.oversample)
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    network = build_ct_network(config.architecture, 2)
    if config.init_from and not resume:
        _initial_weights(network, config.init_from, config.architecture)
    network = network.to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    step, history = _load_checkpoint(out, network, optimiser, config) if resume else (0, [])
    started = time.perf_counter()
    network.train()
    while step < config.steps:
        torch.manual_seed(config.seed * 1_000_003 + step)  # dropout draws, step-seeded for exact resume
        images, labels = _batch(volumes, foreground, config, step, weights)
        loss, dice, l2 = dice_l2_loss(network, network(images.to(device)), labels.to(device), config.l2_weight,
                                      config.batch_dice, config.ce_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        history.append({"step": step, "loss": round(float(loss.detach()), 6), "dice_loss": round(float(dice.detach()), 6),
                        "l2": round(float(l2.detach()), 3)})
        if progress:
            progress(step, config.steps, float(loss.detach()))
        if step % config.checkpoint_every == 0 or step == config.steps:
            _save_checkpoint(out, network, optimiser, step, config, history)
    seconds = time.perf_counter() - started
    card = {
        "name": config.name, "structure": dataset.structure, "architecture": config.architecture,
        "spacing_mm": list(config.spacing_mm), "patch_size": list(config.patch_size), "hu_window": [-1000, 2000],
        "training": {"dataset": dataset.root.name, "cases": [c.case_id for c in dataset.train],
                     "steps": config.steps, "batch_size": config.batch_size, "learning_rate": config.learning_rate,
                     "loss": ("batch " if config.batch_dice else "") + "Dice + " +
                             (f"{config.ce_weight:g} * cross-entropy + " if config.ce_weight else "") +
                             f"{config.l2_weight:g} * sum of squared convolution weights",
                     "final_loss": _tail_mean(history), "seconds_this_run": round(seconds, 1),
                     "seed": config.seed, "oversample": config.oversample,
                     "augmentation": training_augmentation(config),
                     "init_from": Path(config.init_from).name if config.init_from else None},
        "metrics": {},
    }
    if config.trained_side:
        card["trained_side"] = config.trained_side
    if config.metal_suppression:
        card["metal_suppression"] = config.metal_suppression.to_card()
    return save_ct_package(out / "model", network.eval(), card)


def training_augmentation(config: CtTrainConfig) -> dict[str, Any]:
    """What the card says of a run's patches and augmentation."""
    return {"foreground_fraction": config.foreground_fraction, "left_right_flips": config.flip,
            "metal_fraction": config.metal_fraction, "metal_outside": config.metal_outside,
            "affine": "p 0.8, rotation +-0.17 rad, scale +-10 %", "intensity": "scale +-10 %, shift +-0.1, noise 0.03"}


def _tail_mean(history: list, n: int = 20) -> float:
    values = [h["loss"] for h in history[-n:]]
    return round(float(np.mean(values)), 5) if values else math.nan
