"""Inference on radiographs: normalise, resample to the model's spacing, sliding window with overlap, optional
flip TTA, back to the input grid; masks (overlaps kept), a label image and per-class areas in mm^2.

fp16 (autocast) on CUDA; CPU otherwise, or when CUDA fails (out of memory), with a warning.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .networks import probabilities, size_divisor
from .package import LoadedModel, load_package
from .reader import Radiograph, SpacingWarning, check_radiograph_pixels, read_radiograph
from .transforms import left_right_pairs, resample, resampled_size


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU. An explicit CUDA device that this torch build or machine lacks
    falls back to the CPU with a warning (as the README promises); an unknown name is an ``InputError``."""
    from .errors import InputError

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (chosen.index is not None and chosen.index >= count):
            warnings.warn(f"device {device!r} is not available here (this torch build or machine has "
                          f"{count} CUDA device(s)); running on the CPU", stacklevel=2)
            return torch.device("cpu")
    elif chosen.type not in ("cpu", "mps"):
        raise InputError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return chosen


def sliding_window_logits(network: torch.nn.Module, image: torch.Tensor, patch_size: tuple[int, int],
                          overlap: float = 0.25, sw_batch_size: int = 4, amp: bool = False,
                          divisor: int = 16) -> torch.Tensor:
    """Logits (1, K, h, w) for a (1, 1, h, w) image. An image no larger than the patch runs in one pass (padded
    to a multiple of ``divisor``); larger ones go through MONAI's sliding window with Gaussian blending."""
    from monai.inferers import sliding_window_inference

    h, w = image.shape[-2:]
    with torch.no_grad(), torch.autocast(image.device.type, dtype=torch.float16, enabled=amp):
        if h <= patch_size[0] and w <= patch_size[1]:
            ph, pw = (-h) % divisor, (-w) % divisor
            padded = torch.nn.functional.pad(image, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
            out = network(padded)
            return out[..., ph // 2: ph // 2 + h, pw // 2: pw // 2 + w].float()
        out = sliding_window_inference(image, roi_size=tuple(patch_size), sw_batch_size=sw_batch_size,
                                       predictor=network, overlap=overlap, mode="gaussian",
                                       padding_mode="replicate")
    return out.float()


@dataclass
class Prediction:
    """Result on the input grid. ``masks`` (C, H, W) bool keep overlaps; ``label_image`` (H, W): later classes
    painted over earlier ones (multilabel) or the arg-max (multiclass); 0 = background."""

    probabilities: np.ndarray
    masks: np.ndarray
    label_image: np.ndarray
    class_names: list[str]
    colors: list[tuple[float, float, float]]
    spacing_mm: tuple[float, float]
    spacing_source: str
    normalized: np.ndarray
    radiograph: Radiograph | None = None
    timings_ms: dict = field(default_factory=dict)

    @property
    def areas_mm2(self) -> dict[str, float]:
        pixel = self.spacing_mm[0] * self.spacing_mm[1]
        return {name: float(self.masks[i].sum() * pixel) for i, name in enumerate(self.class_names)}


class Predictor:
    """Runs a loaded model package on radiographs (see module docstring)."""

    def __init__(self, model: LoadedModel, device: str | torch.device | None = "auto", overlap: float | None = None,
                 flip_tta: bool | None = None, sw_batch_size: int = 4, threshold: float | None = None):
        self.model = model
        self.card = model.card
        self.device = pick_device(device)
        self.network = model.network.to(self.device).eval()
        inference = self.card.get("inference", {})
        self.overlap = float(inference.get("sliding_window_overlap", 0.25) if overlap is None else overlap)
        allowed = bool(inference.get("flip_tta", False))
        if flip_tta and not allowed:
            warnings.warn("flip TTA is not allowed by this model's card (its anatomy is not left/right "
                          "symmetric or it was trained without flips); running without", stacklevel=2)
        self.flip_tta = allowed if flip_tta is None else bool(flip_tta and allowed)
        self.sw_batch_size = sw_batch_size
        self.threshold = float(threshold if threshold is not None else inference.get("threshold") or 0.5)
        self.patch_size = tuple(int(p) for p in self.card["input"]["patch_size"])
        self.divisor = size_divisor(self.card["architecture"])
        self.swap = left_right_pairs(model.class_names)

    @classmethod
    def from_package(cls, path: str | Path, device: str | torch.device | None = "auto", **kwargs) -> "Predictor":
        device = pick_device(device)
        return cls(load_package(path, device), device, **kwargs)

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    def resolve_spacing(self, radiograph: Radiograph, override: tuple[float, float] | None = None
                        ) -> tuple[tuple[float, float], str]:
        """(row_mm, col_mm) and where it came from: --spacing, the file, or a fallback (with a warning)."""
        if override is not None:
            return (float(override[0]), float(override[1])), "given"
        if radiograph.spacing_mm is not None:
            return radiograph.spacing_mm, radiograph.spacing_source
        fov = self.card["input"].get("field_of_view_mm")
        if fov:
            pixel = max(fov) / max(radiograph.shape)
            warnings.warn(f"no pixel spacing in {radiograph.path}; assuming the image spans the model's training "
                          f"field of view ({max(fov):.0f} mm on its longer side): {pixel:.3f} mm/pixel. Give "
                          "--spacing ROW_MM COL_MM for correct areas", SpacingWarning, stacklevel=2)
            return (pixel, pixel), "fallback: training field of view"
        spacing = self.model.spacing_mm
        warnings.warn(f"no pixel spacing in {radiograph.path}; assuming the model's own {spacing[0]:.3f} mm. Give "
                      "--spacing ROW_MM COL_MM for correct areas", SpacingWarning, stacklevel=2)
        return spacing, "fallback: model spacing"

    def _forward(self, image: torch.Tensor, amp: bool) -> torch.Tensor:
        logits = sliding_window_logits(self.network, image, self.patch_size, self.overlap, self.sw_batch_size, amp,
                                       self.divisor)
        probs = torch.softmax(logits, 1) if self.model.mode == "multiclass" else torch.sigmoid(logits)
        if self.flip_tta:
            flipped = sliding_window_logits(self.network, torch.flip(image, (-1,)), self.patch_size, self.overlap,
                                            self.sw_batch_size, amp, self.divisor)
            other = torch.flip(torch.softmax(flipped, 1) if self.model.mode == "multiclass"
                               else torch.sigmoid(flipped), (-1,))
            offset = 1 if self.model.mode == "multiclass" else 0
            order = list(range(other.shape[1]))
            for i, j in self.swap:
                order[i + offset], order[j + offset] = j + offset, i + offset
            probs = 0.5 * (probs + other[:, order])
        return probs

    def predict_normalized(self, image: np.ndarray, spacing_mm: tuple[float, float]) -> np.ndarray:
        """Per-class probabilities (C, H, W) on the grid of a normalised [0, 1] image with ``spacing_mm``
        (for multiclass models: including the background first, C + 1 channels)."""
        tensor = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
        size = resampled_size(tensor.shape[-2:], spacing_mm, self.model.spacing_mm)
        amp = self.device.type == "cuda"
        try:
            x = resample(tensor.to(self.device), size)
            probs = self._forward(x, amp)
            probs = resample(probs, tuple(image.shape))
        except torch.cuda.OutOfMemoryError:  # pragma: no cover - needs a GPU
            warnings.warn("CUDA out of memory; running this image on the CPU", stacklevel=2)
            self.network.to("cpu")
            self.device = torch.device("cpu")
            return self.predict_normalized(image, spacing_mm)
        return probs[0].float().cpu().numpy()

    def predict(self, radiograph: Radiograph, spacing_mm: tuple[float, float] | None = None) -> Prediction:
        started = time.perf_counter()
        check_radiograph_pixels(radiograph.pixels, str(radiograph.path or "the radiograph"))
        spacing, source = self.resolve_spacing(radiograph, spacing_mm)
        norm = self.card.get("normalization", {})
        normalized = radiograph.normalized(tuple(norm.get("window_percentiles", (0.5, 99.5))),
                                           float(norm.get("gamma", 1.0)))
        t_norm = time.perf_counter()
        probs = self.predict_normalized(normalized, spacing)
        t_net = time.perf_counter()
        masks, label, probs = self.decide(probs)
        colors = [tuple(c["color"]) for c in self.card["classes"]]
        timings = {"normalize": (t_norm - started) * 1e3, "network": (t_net - t_norm) * 1e3,
                   "total": (time.perf_counter() - started) * 1e3}
        return Prediction(probs, masks, label, self.class_names, colors, spacing, source, normalized, radiograph,
                          timings)

    def decide(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(masks, label image, foreground probabilities (C, H, W)) from the network's probabilities."""
        from .dataset import masks_to_label

        if self.model.mode == "multiclass":
            label = probs.argmax(0)
            masks = np.stack([label == c for c in range(1, probs.shape[0])])
            return masks, label.astype(np.uint16 if probs.shape[0] > 255 else np.uint8), probs[1:]
        masks = probs > self.threshold
        label = masks_to_label(masks)
        return masks, label.astype(np.uint16 if probs.shape[0] > 254 else np.uint8), probs

    def predict_file(self, path: str | Path, spacing_mm: tuple[float, float] | None = None,
                     photometric: str | None = None) -> Prediction:
        return self.predict(read_radiograph(path, photometric), spacing_mm)


# ---- writing results ------------------------------------------------------------------------------------------


def placement_geometry(ijk_to_ras: np.ndarray, shape: tuple[int, int]):
    """An ``XrayGeometry`` whose detector is the image grid (so XraySegSimLib.io writes NRRDs in place)."""
    from XraySegSimLib.geometry import XrayGeometry

    m = np.asarray(ijk_to_ras, float)
    col_mm, row_mm = np.linalg.norm(m[:3, 0]), np.linalg.norm(m[:3, 1])
    u, v = m[:3, 0] / col_mm, m[:3, 1] / row_mm
    rows, cols = shape
    center = m[:3, 3] + (cols - 1) / 2 * col_mm * u + (rows - 1) / 2 * row_mm * v
    normal = np.cross(u, v)
    return XrayGeometry(center - 1000.0 * normal, center, u, v, (cols, rows), (col_mm, row_mm), view="radiograph")


def write_prediction(prediction: Prediction, out_dir: str | Path, model_name: str = "") -> dict[str, Path]:
    """Write ``labels.nrrd`` (label image), ``labels.seg.nrrd`` (one layer per class, overlaps kept; Slicer reads
    names and colours), ``overlay.png`` and ``segmentation.json`` (classes, areas in mm^2, spacing and its
    source, timings), the JSON last. Files lie on the input image's grid."""
    from XraySegSimLib.io import write_detector_image, write_json, write_png, write_segmentation_nrrd
    from XraySegSimLib.labels import LabelClass, LabelClasses
    from XraySegSimLib.overlay import labels_rgb, overlay_rgb

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    radiograph = prediction.radiograph
    plain = Radiograph(prediction.normalized, spacing_mm=prediction.spacing_mm).placement()
    own = radiograph.ijk_to_ras if radiograph is not None else None
    try:
        geometry = placement_geometry(own if own is not None else plain, prediction.label_image.shape)
    except Exception:  # noqa: BLE001 - e.g. a sheared grid: write a plain one
        geometry = placement_geometry(plain, prediction.label_image.shape)
    classes = LabelClasses(tuple(LabelClass(name, (i + 1,), tuple(color))
                                 for i, (name, color) in enumerate(zip(prediction.class_names, prediction.colors))))
    paths = {"labels": out / "labels.nrrd", "segmentation": out / "labels.seg.nrrd", "overlay_png": out / "overlay.png",
             "labels_png": out / "labels.png", "json": out / "segmentation.json"}
    write_detector_image(paths["labels"], prediction.label_image, geometry)
    write_segmentation_nrrd(paths["segmentation"], prediction.masks, classes, geometry)
    gray = (np.clip(prediction.normalized, 0, 1) * 255).round().astype(np.uint8)
    write_png(paths["overlay_png"], overlay_rgb(gray, prediction.masks, prediction.label_image, classes))
    write_png(paths["labels_png"], labels_rgb(prediction.label_image, classes))
    areas = prediction.areas_mm2
    write_json(paths["json"], {
        "input": str(radiograph.path) if radiograph is not None and radiograph.path else None,
        "model": model_name,
        "size": [int(prediction.label_image.shape[1]), int(prediction.label_image.shape[0])],
        "spacing_mm": {"row": prediction.spacing_mm[0], "column": prediction.spacing_mm[1],
                       "source": prediction.spacing_source},
        "classes": [{"index": i + 1, "name": n, "color": list(prediction.colors[i]), "area_mm2": round(areas[n], 2),
                     "pixels": int(prediction.masks[i].sum())} for i, n in enumerate(prediction.class_names)],
        "label_image_rule": "0 = background; where masks overlap, the later class is shown (labels.seg.nrrd keeps "
                            "every mask)",
        "timings_ms": {k: round(v, 1) for k, v in prediction.timings_ms.items()},
    })
    return paths
