"""Running models trained with nnU-Net v2 on our datasets (a results folder), when ``nnunetv2`` is installed.

A results folder (``.../nnUNetTrainer__nnUNetPlans__2d``) holds ``dataset.json``, ``plans.json`` and
``fold_*/checkpoint_final.pth``. Our datasets are region-based (overlapping bones), so the adapter asks nnU-Net
for the per-region probabilities and thresholds them at 0.5: overlaps are kept as with our own models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import ModelPackageError


def nnunet_available() -> bool:
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        return False
    return True


def is_nnunet_results_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "plans.json").is_file() and (path / "dataset.json").is_file() and \
        any(path.glob("fold_*"))


class NnUNetPredictorAdapter:
    """Same ``predict(radiograph, spacing)`` / ``class_names`` interface as ``inference.Predictor``."""

    def __init__(self, results_folder: str | Path, folds: tuple = ("all",), checkpoint: str = "checkpoint_final.pth",
                 device: str = "auto"):
        if not nnunet_available():
            raise ModelPackageError("this is an nnU-Net results folder, but nnunetv2 is not installed; install it "
                                    "(pip install nnunetv2 -c constraints.txt) or use an XraySeg model package")
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        self.folder = Path(results_folder)
        dataset_json = json.loads((self.folder / "dataset.json").read_text())
        self.labels = {k: v for k, v in dataset_json["labels"].items() if k not in ("background", "ignore")}
        self.class_names = list(self.labels)
        self.colors = [(0.9, 0.6, 0.2)] * len(self.class_names)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        available = sorted(p.name.split("_", 1)[1] for p in self.folder.glob("fold_*"))
        use = [f for f in folds if str(f) in available] or available[:1]
        self.predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                         perform_everything_on_device=device == "cuda",
                                         device=torch.device(device), verbose=False, allow_tqdm=False)
        self.predictor.initialize_from_trained_model_folder(
            str(self.folder), use_folds=tuple(int(f) if f.isdigit() else f for f in use), checkpoint_name=checkpoint)

    def predict(self, radiograph, spacing_mm=None):
        from .inference import Prediction

        spacing = spacing_mm or radiograph.spacing_mm or (1.0, 1.0)
        image = radiograph.normalized()
        props = {"spacing": [999.0, float(spacing[0]), float(spacing[1])]}
        seg, probs = self.predictor.predict_single_npy_array(image[None, None].astype(np.float32), props, None,
                                                             None, True)
        probs = np.asarray(probs)[:, 0] if np.asarray(probs).ndim == 4 else np.asarray(probs)
        region_based = any(isinstance(v, (list, tuple)) for v in self.labels.values())
        if region_based:
            masks = probs[-len(self.class_names):] > 0.5
        else:
            masks = np.stack([np.asarray(seg)[0] == int(v) for v in self.labels.values()])
        from .dataset import masks_to_label

        return Prediction(probs, masks, masks_to_label(masks).astype(np.uint8), self.class_names, self.colors,
                          tuple(spacing), radiograph.spacing_source, image, radiograph)
