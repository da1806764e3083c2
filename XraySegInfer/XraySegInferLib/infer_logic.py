"""The Infer module's logic without Qt: models (bundled, imported, nnU-Net), the predictor in memory, segmentation
of a radiograph node here or in a background process, batch folders. ``XraySegInfer.XraySegInferLogic`` is this
class plus Slicer's module logic; the method names are the module's Python console API. The subclass gives the
scene (``_scene()``) and the installer (``self.dependencies``).
"""

from __future__ import annotations

from pathlib import Path


class InferLogic:
    """Models, predictor and runs; ``cache_dir`` holds imported models; ``dependencies`` is an
    ``XraySegInferLib.dependencies.Dependencies``."""

    def __init__(self, cache_dir: str | Path, dependencies, scene=None) -> None:
        self.cacheDir = Path(cache_dir)
        self.dependencies = dependencies
        self.scene = scene
        self._predictors: dict = {}

    def _scene(self):
        if self.scene is None:
            raise ValueError("no scene: give InferLogic a scene")
        return self.scene

    # ---- models ----
    def models(self):
        from .models import available_models
        return available_models(self.cacheDir)

    def model(self, modelId=None):
        """The model entry of ``modelId`` (default: the first, i.e. the bundled model)."""
        from .errors import ModelPackageError
        entries = self.models()
        if not entries:
            raise ModelPackageError("no model available: import a model package or an nnU-Net results folder")
        if not modelId:
            return entries[0]
        for entry in entries:
            if entry.id == modelId:
                return entry
        raise ModelPackageError(f"no model with id {modelId!r}; available: {', '.join(e.id for e in entries)}")

    def importModel(self, path):
        from .models import import_model
        self._predictors.clear()
        return import_model(path, self.cacheDir)

    def clearCache(self) -> int:
        from .models import clear_cache
        self._predictors.clear()
        return clear_cache(self.cacheDir)

    def predictor(self, modelId=None, device="Auto"):
        """(predictor, device note); loaded once per (model, device)."""
        self.dependencies.ensure()
        from .dependencies import resolve_device
        from .models import load_entry
        entry = self.model(modelId)
        torchDevice, note = resolve_device(device)
        key = (entry.id, str(entry.path), torchDevice)
        if key not in self._predictors:
            self._predictors = {key: load_entry(entry, torchDevice)}  # keep one model in memory
        return self._predictors[key], note, entry

    # ---- run ----
    def segment(self, volumeNode, modelId=None, device="Auto", progress=None, cancel=None, spacingMm=None):
        """Segment the radiograph ``volumeNode``: returns ``XraySegInferLib.mrml_adapter.SegmentationResult``
        (segmentation node on the radiograph's grid, table node, notes). Raises ``InputError`` for a 3D or RGB
        volume, ``ModelPackageError`` for a bad model, ``Cancelled`` on cancel; nothing is added then."""
        from .mrml_adapter import radiograph_from_node, segment_radiograph
        radiograph_from_node(volumeNode)  # a bad input is refused before a model is loaded
        predictor, note, entry = self.predictor(modelId, device)
        return segment_radiograph(self._scene(), volumeNode, predictor, progress, cancel, spacingMm,
                                  model_label=entry.label, device_note=note)

    def startSegmentation(self, volumeNode, modelId=None, device="Auto", spacingMm=None):
        """Start segmenting ``volumeNode`` in a background process (the module's Segment button); returns its
        ``XraySegInferLib.segment_process.SegmentationProcess``: ``poll()``, ``cancel()``, and ``finish(scene)``
        which adds the nodes. A bad input is refused before anything starts."""
        from .mrml_adapter import radiograph_from_node
        from .segment_process import SegmentationProcess
        radiograph_from_node(volumeNode)
        self.dependencies.ensure()  # the worker runs in this Python: torch, MONAI... must be there
        return SegmentationProcess.start(volumeNode, self.model(modelId), device, self.cacheDir, spacingMm)

    def runBatch(self, inputFolder, outputFolder, modelId=None, device="Auto", resume=True, progress=None,
                 cancel=None):
        """Every radiograph under ``inputFolder`` -> ``outputFolder/<name>.seg.nrrd`` + ``summary.csv``
        (``XraySegInferLib.runner.run_batch``); returns its ``BatchReport``."""
        from .runner import run_batch
        predictor, note, entry = self.predictor(modelId, device)
        return run_batch(predictor, inputFolder, outputFolder, resume=resume, progress=progress, cancel=cancel)

    def loadBatchSummary(self, report):
        from .mrml_adapter import table_from_csv
        if report.summary_csv.is_file():
            return table_from_csv(self._scene(), report.summary_csv)


__all__ = ["InferLogic"]
