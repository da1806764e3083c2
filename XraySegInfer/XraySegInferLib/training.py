"""Training on a dataset in our nnU-Net layout; the result is a model package (``<out>/model``).

* Validation split by CT (``SegmentationDataset.split_by_ct``); with one CT only, validation falls back to the
  training images (stated in the card).
* Images are normalised with THE shared normalisation (as at inference) and resampled to one pixel spacing
  (default: the median of the training images).
* Loss (``ignore.masked_dice_ce``, unknown pixels left out): multilabel -> batch Dice + a binary cross-entropy per
  class (``multilabel_ce="bce"``; ``"softmax"`` is the term of MONAI's ``DiceCELoss`` that trained the models before
  chest 0.4.0); multiclass -> Dice + CE (softmax).
* Checkpoints every ``val_every`` steps: ``checkpoint_last.safetensors`` (model, optimiser, AMP scaler, step,
  random states, history; see ``checkpoints``: nothing is unpickled) and ``checkpoint_best.safetensors``;
  ``resume=True`` continues from the last one, after checking that it fits this run's architecture.
* CUDA with AMP (fp16 autocast + GradScaler) when available, else CPU. tqdm shows loss and validation Dice.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoints import checkpoint_path, find_checkpoint, save_checkpoint
from .dataset import Case, SegmentationDataset, masks_to_label, read_dataset
from .ignore import IGNORE_VALUE, masked_dice_ce, split_ignore
from .errors import InputError
from .inference import pick_device, sliding_window_logits
from .networks import DEFAULT_ARCHITECTURE, build_network, size_divisor
from .package import make_card, save_package
from .transforms import AugmentConfig, augment_batch, left_right_pairs, random_crop, resample, resampled_size

LATERAL_VIEWS = ("lateral",)


@dataclass
class TrainConfig:
    mode: str = "multilabel"
    architecture: dict = field(default_factory=lambda: dict(DEFAULT_ARCHITECTURE))
    patch_size: int = 256
    inference_patch_size: int | None = None  # sliding-window tile in the card (default: patch_size)
    spacing_mm: float | None = None  # None: median of the training images
    batch_size: int = 8
    steps: int = 2000
    val_every: int = 200
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    augment: dict = field(default_factory=lambda: AugmentConfig().to_dict())
    window_percentiles: tuple[float, float] = (0.5, 99.5)
    gamma: float = 1.0
    device: str = "auto"
    amp: bool = True
    threads: int | None = None
    name: str = ""
    version: str = "0.1.0"
    max_val_images: int = 32
    # Multilabel cross-entropy term (ignore.masked_dice_ce): "bce" per class, or "softmax" as before 0.4.0.
    multilabel_ce: str = "bce"

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
        return cls(**data)

    def __post_init__(self) -> None:
        if self.multilabel_ce not in ("bce", "softmax"):
            raise ValueError(f"multilabel_ce must be 'bce' or 'softmax', got {self.multilabel_ce!r}")


@dataclass
class TrainResult:
    package: Path
    history: list[dict]
    best_dice: float
    steps: int
    seconds: float


@dataclass
class _Item:
    case: Case
    image: np.ndarray  # normalised, at the training spacing
    masks: np.ndarray  # (C, H, W) uint8 at the training spacing


def _load_items(dataset: SegmentationDataset, cases: list[Case], config: TrainConfig,
                spacing: tuple[float, float] | None) -> tuple[list[_Item], tuple[float, float]]:
    from XraySegSimLib.physics import normalize_radiograph

    raw = [(case, *dataset.load(case)) for case in cases]
    if spacing is None:
        spacing = (float(np.median([r[3][0] for r in raw])), float(np.median([r[3][1] for r in raw])))
    items = []
    for case, image, masks, case_spacing in raw:
        image = normalize_radiograph(image, "MONOCHROME2", tuple(config.window_percentiles), None, config.gamma)
        if any(abs(a / b - 1) > 0.01 for a, b in zip(case_spacing, spacing)):
            size = resampled_size(image.shape, case_spacing, spacing)
            image = resample(torch.from_numpy(image)[None, None], size)[0, 0].numpy()
            masks = resample(torch.from_numpy(masks.astype(np.float32))[None], size, "nearest")[0].numpy()
        items.append(_Item(case, image.astype(np.float32), masks.astype(np.uint8)))
    return items, spacing


def validate(network: torch.nn.Module, items: list[_Item], mode: str, patch: tuple[int, int], device: torch.device,
             amp: bool, divisor: int) -> np.ndarray:
    """Mean Dice per class over ``items`` (NaN for classes absent everywhere)."""
    from .metrics import per_class_metrics

    network.eval()
    scores = []
    for item in items:
        image = torch.from_numpy(item.image)[None, None].to(device)
        logits = sliding_window_logits(network, image, patch, 0.25, 4, amp, divisor)
        if mode == "multiclass":
            label = logits.argmax(1)[0].cpu().numpy()
            pred = np.stack([label == c for c in range(1, logits.shape[1])])
        else:
            pred = (logits[0] > 0).cpu().numpy()
        reference, known = split_ignore(item.masks)  # unknown pixels (truncation) count for nothing
        scores.append(per_class_metrics(pred & known, reference, hd95=False)["dice"])
    network.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.array(scores), axis=0)


def _batch(items: list[_Item], config: TrainConfig, patch: tuple[int, int], rng: np.random.Generator):
    images, masks = [], []
    for index in rng.integers(0, len(items), config.batch_size):
        image, mask = random_crop(items[index].image, items[index].masks, patch, rng)
        images.append(image)
        masks.append(mask)
    return (torch.from_numpy(np.stack(images)[:, None].astype(np.float32)),
            torch.from_numpy(np.stack(masks).astype(np.float32)))


def _patch_size(config: TrainConfig, items: list[_Item], divisor: int) -> tuple[int, int]:
    largest = (max(i.image.shape[0] for i in items), max(i.image.shape[1] for i in items))
    return tuple(int(min(config.patch_size, math.ceil(s / divisor) * divisor)) for s in largest)  # type: ignore


def _flip_allowed(cases: list[Case], config: AugmentConfig) -> bool:
    return config.flip_horizontal > 0 and not any(v in c.view.lower() for c in cases for v in LATERAL_VIEWS)


def _check_resumable(saved: dict, config: TrainConfig) -> None:
    """Refuse a checkpoint made with another network (architecture or label mode) or loss before any work."""
    before = dict(saved.get("config") or {})
    before.setdefault("multilabel_ce", "softmax")  # checkpoints from before the option were trained with it
    for key in ("architecture", "mode", "multilabel_ce"):
        if key in before and json.loads(json.dumps(before[key])) != json.loads(json.dumps(getattr(config, key))):
            raise InputError(
                f"cannot resume from {saved['path']}: it was trained with {key} {before[key]} but this run asks "
                f"for {getattr(config, key)}; use the same recipe/options, or another --out to start afresh")


def train(dataset_dir: str | Path, out_dir: str | Path, config: TrainConfig | None = None, resume: bool = False,
          progress: bool = True, log=print, trust_pickle: bool = False) -> TrainResult:
    """Train on ``dataset_dir`` and write ``<out_dir>/model`` (the package), checkpoints and history.json.

    ``trust_pickle``: on resume, also unpickle a legacy ``checkpoint_last.pt`` that ``weights_only=True``
    refuses (runs code from the file: only for files you made)."""
    from tqdm.auto import tqdm

    config = config or TrainConfig()
    started = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder")
    saved = find_checkpoint(out, "last", trust_pickle) if resume else None  # checked before any work
    if saved is not None:
        _check_resumable(saved, config)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(int(config.threads))
    device = pick_device(config.device)
    amp = bool(config.amp and device.type == "cuda")
    dataset = read_dataset(dataset_dir, require="train")
    train_cases, val_cases = dataset.split_by_ct(config.val_fraction, config.seed)
    aug = AugmentConfig.from_dict(config.augment)
    if aug.flip_horizontal > 0 and not _flip_allowed(train_cases, aug):
        warnings.warn("horizontal flips switched off: the dataset has lateral views", stacklevel=2)
        aug.flip_horizontal = 0.0
    spacing = (config.spacing_mm, config.spacing_mm) if config.spacing_mm else None
    items, spacing = _load_items(dataset, train_cases, config, spacing)
    val_note = "held-out CTs"
    if val_cases:
        rng_val = np.random.default_rng(config.seed)
        chosen = sorted(rng_val.permutation(len(val_cases))[: config.max_val_images])
        val_items, _ = _load_items(dataset, [val_cases[i] for i in chosen], config, spacing)
    else:
        warnings.warn("only one CT in the training set: validation uses training images", stacklevel=2)
        val_items, val_note = items[: config.max_val_images], "training images (one CT only)"
    n_classes = len(dataset.classes)
    divisor = size_divisor(config.architecture)
    patch = _patch_size(config, items, divisor)
    torch.manual_seed(config.seed)
    network = build_network(config.architecture, n_classes, config.mode).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    pairs = left_right_pairs(dataset.class_names)
    history: list[dict] = []
    step, best = 0, -1.0
    last_path, best_path = checkpoint_path(out, "last"), checkpoint_path(out, "best")
    if saved is not None:
        try:
            network.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
        except (RuntimeError, KeyError, ValueError, TypeError) as error:
            raise InputError(f"cannot resume from {saved['path']}: it does not fit this run's network "
                             f"({str(error).splitlines()[0][:200]}); use the same options, or another --out") from None
        scaler.load_state_dict(saved.get("scaler") or {})
        step, best, history = int(saved["step"]), float(saved["best_dice"]), list(saved["history"])
        rng.bit_generator.state = saved["numpy_rng"]
        generator.set_state(saved["torch_rng"])
        log(f"resumed from {saved['path']} at step {step}")
    network.train()
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="train", unit="step",
               dynamic_ncols=True)
    losses: list[float] = []
    val_dice = float("nan")
    while step < config.steps:
        lr = config.learning_rate * (1 - step / config.steps) ** 0.9
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, masks = _batch(items, config, patch, rng)
        images, masks = images.to(device), masks.to(device)
        # Unknown pixels ride along as one more mask plane, so the spatial augmentation moves them with the rest.
        unknown = (masks == IGNORE_VALUE).any(1, keepdim=True).to(masks.dtype)
        masks = torch.cat([(masks == 1).to(masks.dtype), unknown], 1)
        images, masks = augment_batch(images, masks, aug, generator, pairs)
        masks, unknown = masks[:, :-1], masks[:, -1:]
        target = masks if config.mode == "multilabel" else _label_target(masks)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = network(images)
        loss = masked_dice_ce(logits.float(), target, 1.0 - unknown, config.mode,
                              multilabel_ce=config.multilabel_ce)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", val_dice=f"{val_dice:.3f}")
        if step % config.val_every == 0 or step == config.steps:
            per_class = validate(network, val_items, config.mode, patch, device, amp, divisor)
            val_dice = float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")
            history.append({"step": step, "loss": float(np.mean(losses[-config.val_every:])), "lr": lr,
                            "val_dice": val_dice, "val_dice_per_class": [float(d) for d in per_class]})
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", val_dice=f"{val_dice:.3f}")
            if not math.isnan(val_dice) and val_dice > best:
                best = val_dice
                save_checkpoint(best_path, network.state_dict(), {"step": step, "val_dice": val_dice,
                                                                  "config": asdict(config)})
            save_checkpoint(last_path, network.state_dict(),
                            {"scaler": scaler.state_dict(), "step": step, "best_dice": best, "history": history,
                             "numpy_rng": rng.bit_generator.state, "config": asdict(config)},
                            optimizer.state_dict(), generator.get_state())
    bar.close()
    # The best weights of this run (or of the run it resumed): never a stale file of an earlier, other run.
    best_saved = find_checkpoint(out, "best", trust_pickle) if best > -1.0 else None
    if best_saved is not None and int(best_saved.get("step", -1)) == best_step(history, best):
        network.load_state_dict(best_saved["model"])
    best_entry = max((h for h in history if not math.isnan(h["val_dice"])), key=lambda h: h["val_dice"],
                     default=history[-1] if history else {})
    (out / "history.json").write_text(json.dumps(history, indent=1))
    card = make_card(
        name=config.name or dataset.name, architecture=config.architecture, mode=config.mode,
        classes=[{"name": c.name, "color": c.color} for c in dataset.classes], spacing_mm=spacing,
        patch_size=_inference_patch(config, patch, divisor), normalization={"window_percentiles": list(config.window_percentiles), "gamma": config.gamma,
                                         "input_photometric": "MONOCHROME2"},
        training=_training_summary(dataset, train_cases, val_cases, config, step, val_note, items, spacing),
        metrics={"validation": {"on": val_note, "step": best_entry.get("step"),
                                "mean_dice": best_entry.get("val_dice"),
                                "dice_per_class": dict(zip(dataset.class_names,
                                                           best_entry.get("val_dice_per_class", [])))}},
        version=config.version, flip_tta=aug.flip_horizontal > 0,
        field_of_view_mm=_field_of_view(items, spacing),
        description=f"{config.mode} {config.architecture.get('name')} trained on {dataset.name}")
    package = save_package(out / "model", network.cpu(), card)
    seconds = time.perf_counter() - started
    log(f"trained {step} steps in {seconds:.0f} s; best validation Dice {best:.3f} -> {package}")
    return TrainResult(package, history, best, step, seconds)


def best_step(history: list[dict], best: float) -> int | None:
    """The step whose validation Dice is ``best`` (the step the best checkpoint was written at)."""
    return next((int(h["step"]) for h in history if h.get("val_dice") == best), None)


def _inference_patch(config: TrainConfig, patch: tuple[int, int], divisor: int) -> tuple[int, int]:
    if not config.inference_patch_size:
        return patch
    size = int(math.ceil(config.inference_patch_size / divisor) * divisor)
    return (size, size)


# Recipes: named TrainConfig presets (``xrayseg train DATASET --recipe NAME``).
RECIPES: dict[str, dict] = {
    # The bundled chest model (issue 6, section 5; ``make train-sample``): DRRs of the sample chest CT with
    # realistic physics; classes ribs left/right, clavicles, scapulae, humeri, sternum, thoracic spine. Overlapping
    # bones -> multilabel. Exactly the configuration that trained Resources/Models/chest (its card's
    # ``training.config``; Testing/Python/test_infer_training.py checks that they agree), every field spelled out
    # so a change of a TrainConfig default cannot change it: a small U-Net (12-192 channels), batch 4, 3000 steps of
    # 256 px patches (about 8-9 min on 2 CPU cores), 512 px tiles at inference. Intensity augmentation only: the
    # export already randomises the geometry. No flips: the classes have sides. The multi-label cross-entropy of
    # MONAI's DiceCELoss ("softmax"), which trained 0.1.0 and the lumbar study's models.
    "chest-sample": {
        "mode": "multilabel",
        "architecture": {"name": "UNet", "channels": [12, 24, 48, 96, 192], "strides": [2, 2, 2, 2],
                         "num_res_units": 1, "norm": "instance", "dropout": 0.0},
        "patch_size": 256, "inference_patch_size": 512, "spacing_mm": None,
        "batch_size": 4, "steps": 3000, "val_every": 500, "learning_rate": 3e-3, "weight_decay": 1e-4,
        "val_fraction": 0.2, "seed": 0, "max_val_images": 8,
        "augment": {"probability": 0.8, "rotate_deg": 0.0, "scale": [1.0, 1.0], "translate_fraction": 0.0,
                    "contrast": [0.75, 1.25], "brightness": 0.1, "gamma": [0.7, 1.5], "noise_std": 0.04,
                    "blur_sigma_px": [0.5, 1.5], "blur_probability": 0.2, "flip_horizontal": 0.0},
        "window_percentiles": [0.5, 99.5], "gamma": 1.0, "amp": True, "multilabel_ce": "softmax",
        "name": "xrayseg-chest-bones", "version": "0.1.0",
    },
    # The retrained chest model (issue 10 item 6; ``make train-sample``): two bodies (the sample CT and the full
    # chest CT with transferred labels), virtual patients, the ignore label, strong image-domain randomisation.
    # Trained at 2.5 mm pixels (the whole 43 cm field in one 176 px patch, so every patch sees the whole thorax)
    # with a smaller U-Net (8-128 channels): on a CPU shared by eight jobs a step of the 256 px recipe cost ~17 s.
    # val_fraction 0: both bodies train (validation then uses training images); leave-one-body-out measures
    # transfer instead. Mild geometric augmentation on top of the export's view jitter. Since 0.4.0 left-right
    # flips (ribs_left and ribs_right swap with the image) and flip TTA: sides are read from the image position,
    # which put 0.4.0's ribs on their own sides of RG1 (without flips 11-31 % of the right ribs crossed over).
    "chest-transfer": {
        "mode": "multilabel",
        "architecture": {"name": "UNet", "channels": [8, 16, 32, 64, 128], "strides": [2, 2, 2, 2],
                         "num_res_units": 1, "norm": "instance", "dropout": 0.0},
        "patch_size": 176, "inference_patch_size": 192, "spacing_mm": 2.5,
        "batch_size": 4, "steps": 1500, "val_every": 250, "learning_rate": 3e-3, "weight_decay": 1e-4,
        "val_fraction": 0.0, "seed": 0, "max_val_images": 8,
        "augment": {"probability": 0.8, "rotate_deg": 4.0, "scale": [0.93, 1.07], "translate_fraction": 0.04,
                    "contrast": [0.7, 1.3], "brightness": 0.1, "gamma": [0.6, 1.6], "noise_std": 0.04,
                    "blur_sigma_px": [0.5, 1.2], "blur_probability": 0.2, "flip_horizontal": 0.5},
        "window_percentiles": [0.5, 99.5], "gamma": 1.0, "amp": True, "multilabel_ce": "bce",
        "name": "xrayseg-chest-bones", "version": "0.4.0",
    },
    # A quick smoke run for any dataset (minutes on CPU).
    "quick": {"architecture": {"name": "UNet", "channels": [8, 16, 32, 64], "strides": [2, 2, 2],
                               "num_res_units": 0, "norm": "instance"},
              "patch_size": 128, "steps": 300, "val_every": 100, "learning_rate": 1e-2},
}


def _label_target(masks: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) class index from (N, C, H, W) masks: later classes over earlier (as ``masks_to_label``)."""
    label = torch.zeros_like(masks[:, :1])
    for index in range(masks.shape[1]):
        label = torch.where(masks[:, index: index + 1] > 0, torch.full_like(label, index + 1), label)
    return label


def _field_of_view(items: list[_Item], spacing: tuple[float, float]) -> tuple[float, float]:
    rows = float(np.median([i.image.shape[0] for i in items])) * spacing[0]
    cols = float(np.median([i.image.shape[1] for i in items])) * spacing[1]
    return rows, cols


def _training_summary(dataset: SegmentationDataset, train_cases, val_cases, config: TrainConfig, steps: int,
                      val_note: str, items: list[_Item], spacing) -> dict:
    views: dict[str, int] = {}
    for case in train_cases:
        views[case.view or "?"] = views.get(case.view or "?", 0) + 1
    return {"dataset": dataset.name, "train_images": len(train_cases), "validation_images": len(val_cases),
            "train_cts": sorted({c.ct_id for c in train_cases}), "validation_cts": sorted({c.ct_id for c in val_cases}),
            "views": views, "validation_on": val_note, "steps": steps,
            "image_size_median": [int(np.median([i.image.shape[0] for i in items])),
                                  int(np.median([i.image.shape[1] for i in items]))],
            "config": {k: v for k, v in asdict(config).items() if k not in ("device", "threads")},
            "foreground_fraction": [float(np.mean([(i.masks[c] == 1).mean() for i in items]))
                                    for c in range(len(dataset.classes))]}


__all__ = ["RECIPES", "TrainConfig", "TrainResult", "masks_to_label", "train", "validate"]
