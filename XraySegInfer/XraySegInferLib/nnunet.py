"""Running models trained with nnU-Net v2 on our datasets (a results folder), when ``nnunetv2`` is installed.

A results folder (``.../nnUNetTrainer__nnUNetPlans__2d``) holds ``dataset.json``, ``plans.json`` and
``fold_*/checkpoint_final.pth``. Our datasets are region-based (overlapping bones), so the adapter asks nnU-Net
for the per-region probabilities and thresholds them at 0.5: overlaps are kept as with our own models.

nnU-Net checkpoints are pickles, and nnunetv2 unpickles them with ``weights_only=False``, which runs any code a
crafted file holds. So every checkpoint is first loaded here with ``torch.load(weights_only=True)`` (tensors,
containers, numbers and numpy scalars only: no code runs); a checkpoint that needs more is refused with the
globals it asks for, unless ``trust_pickle=True`` (``--trust-pickle``), which warns. nnunetv2 itself then loads
under ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``, so it gets no more than was checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import ModelPackageError


def _numpy_safe_globals() -> list:
    """numpy scalars and dtypes (nnU-Net's training log holds numpy floats): data, no code."""
    types = [np.dtype, np.float64, np.float32, np.int64, np.int32, np.bool_]
    types += [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8, np.bool_)]
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore
    return [scalar, *types]


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Every ``torch.load`` in the block behaves as ``weights_only=True`` (numpy scalars allowed)."""
    import torch

    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            yield
    finally:
        if before is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


def check_checkpoint_is_safe(path: str | Path, trust_pickle: bool = False) -> bool:
    """True if ``path`` loads with ``weights_only=True``. Otherwise :class:`ModelPackageError` naming what the
    pickle asks for, or (``trust_pickle``) a warning and False. Nothing from the file runs here."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelPackageError(f"nnU-Net checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception as error:  # noqa: BLE001 - UnpicklingError, a broken zip, EOF...
        try:
            asks = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))[:4])
        except Exception:  # noqa: BLE001 - not even a readable archive
            asks = ""
        reason = f"it asks for {asks}" if asks else (str(error).strip().splitlines() or [type(error).__name__])[0]
        if not trust_pickle:
            raise ModelPackageError(
                f"{path}: refusing to load this nnU-Net checkpoint: torch.load(weights_only=True) cannot read it "
                f"({reason[:200]}), and unpickling it fully could run code from the file. Pass --trust-pickle "
                "only if you trust where it came from") from None
        warnings.warn(f"--trust-pickle: unpickling {path} ({reason[:120]}); this runs any code the file holds",
                      stacklevel=2)
        return False


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
                 device: str = "auto", trust_pickle: bool = False):
        self.folder = Path(results_folder)
        available = sorted(p.name.split("_", 1)[1] for p in self.folder.glob("fold_*"))
        use = [str(f) for f in folds if str(f) in available] or available[:1]
        # Before nnunetv2 is even imported: its loader would unpickle the files.
        all_safe = all([check_checkpoint_is_safe(self.folder / f"fold_{f}" / checkpoint, trust_pickle) for f in use])
        if not nnunet_available():
            # No pip command here: nnunetv2's own requirements would replace Slicer's SimpleITK (and torch).
            raise ModelPackageError("this is an nnU-Net results folder, but nnunetv2 is not installed; in Slicer "
                                    "install the NNUNet extension (it installs nnunetv2 next to Slicer's torch and "
                                    "SimpleITK), outside Slicer 'make setup'; or use an XraySeg model package")
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        from .inference import pick_device

        try:
            dataset_json = json.loads((self.folder / "dataset.json").read_text())
            self.labels = {k: v for k, v in dataset_json["labels"].items() if k not in ("background", "ignore")}
        except (OSError, ValueError, KeyError, AttributeError) as error:
            raise ModelPackageError(f"{self.folder}/dataset.json is not a readable nnU-Net dataset.json "
                                    f"({type(error).__name__}: {error})") from None
        self.class_names = list(self.labels)
        self.colors = [(0.9, 0.6, 0.2)] * len(self.class_names)
        device = pick_device(device)
        self.predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                         perform_everything_on_device=device.type == "cuda",
                                         device=device, verbose=False, allow_tqdm=False)
        loading = weights_only_loading() if all_safe else contextlib.nullcontext()
        try:
            with loading:
                self.predictor.initialize_from_trained_model_folder(
                    str(self.folder), use_folds=tuple(int(f) if f.isdigit() else f for f in use),
                    checkpoint_name=checkpoint)
        except ModelPackageError:
            raise
        except Exception as error:  # noqa: BLE001 - nnunetv2 raises KeyError, RuntimeError... on a bad folder
            raise ModelPackageError(f"{self.folder}: nnU-Net could not load this results folder "
                                    f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})"
                                    ) from None

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
