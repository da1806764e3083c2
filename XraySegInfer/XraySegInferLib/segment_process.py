"""Segmentation of a radiograph node in a worker *process*: the network (torch, MONAI, CUDA) runs outside Slicer,
so a crash or a GPU out-of-memory there ends in one message instead of taking Slicer down, and Cancel stops it at
once. Qt-free; the widget polls :meth:`SegmentationProcess.poll` from a QTimer.

The parent reads the node as the in-process path does (``mrml_adapter.radiograph_from_node``: grid, spacing,
photometric), writes its pixels (``.npy``) and a JSON job into a private folder, and runs ``python -m
XraySegInferLib.segment_process JOB_DIR OUT`` with ``XraySegSimLib.background.BackgroundProcess`` (staged output:
OUT exists only after a successful run). The child loads the model, runs ``runner.run_prediction`` and writes
``prediction.npz`` (masks, probabilities; read back with ``allow_pickle=False``) and ``prediction.json``. Only then
does the parent add the segmentation and table nodes (``mrml_adapter.add_prediction_nodes``): a cancelled, failed
or killed run adds no node and leaves no file.

::

    run = SegmentationProcess.start(volume_node, entry, "Auto", cache_dir)   # entry: models.ModelEntry
    run.poll().state                # XraySegSimLib.background.RunState; .progress.fraction
    result = run.finish(scene)      # SegmentationResult once it SUCCEEDED (else raises with the run's message)
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .errors import XraySegError


class SegmentationProcess:
    """One segmentation of a radiograph node running in a child process."""

    def __init__(self, run, job_dir: Path, volume_node, entry) -> None:
        self.run, self.job_dir, self.volume_node, self.entry = run, job_dir, volume_node, entry
        self.started = time.perf_counter()

    @classmethod
    def start(cls, volume_node, entry, device: str = "Auto", cache_dir: str | Path | None = None,
              spacing_mm: tuple[float, float] | None = None, python: str | None = None) -> "SegmentationProcess":
        """Check the input (``InputError`` before anything starts), write the job, start the worker."""
        from XraySegSimLib.background import BackgroundProcess, default_python
        from .mrml_adapter import radiograph_from_node

        radiograph = radiograph_from_node(volume_node)
        job_dir = Path(tempfile.mkdtemp(prefix="xrayseg-segment-"))
        np.save(job_dir / "pixels.npy", np.ascontiguousarray(radiograph.pixels, np.float32))
        job = {"photometric": radiograph.photometric, "spacing_mm": radiograph.spacing_mm,
               "spacing_source": radiograph.spacing_source, "spacing_override": spacing_mm,
               "ijk_to_ras": None if radiograph.ijk_to_ras is None else np.asarray(radiograph.ijk_to_ras).tolist(),
               "model": {"id": entry.id, "label": entry.label, "path": str(entry.path), "kind": entry.kind,
                         "version": entry.version, "class_names": list(entry.class_names)},
               "device": device}
        (job_dir / "job.json").write_text(json.dumps(job))
        run = BackgroundProcess([python or default_python(), "-m", "XraySegInferLib.segment_process", str(job_dir),
                                 "{out}"], output_dir=job_dir / "result", name="the segmentation").start()
        return cls(run, job_dir, volume_node, entry)

    def poll(self):
        """``XraySegSimLib.background.RunStatus`` now (never blocks)."""
        return self.run.poll()

    def wait(self, timeout: float | None = None):
        return self.run.wait(timeout)

    def cancel(self):
        """Stop the worker now; nothing is added and the job folder is removed."""
        status = self.run.cancel()
        self.close()
        return status

    def close(self) -> None:
        shutil.rmtree(self.job_dir, ignore_errors=True)

    def finish(self, scene, name: str | None = None):
        """Add the result nodes (``mrml_adapter.SegmentationResult``) once the run succeeded; the job folder is
        removed either way. Raises ``XraySegError`` with the run's message otherwise."""
        from XraySegSimLib.background import RunState
        from .mrml_adapter import add_prediction_nodes

        status = self.run.wait()
        try:
            if status.state is not RunState.SUCCEEDED:
                raise XraySegError(status.message)
            out = Path(status.output_dir)
            meta = json.loads((out / "prediction.json").read_text())
            with np.load(out / "prediction.npz", allow_pickle=False) as arrays:
                prediction = SimpleNamespace(class_names=tuple(meta["class_names"]),
                                             colors=[tuple(c) for c in meta["colors"]],
                                             masks=arrays["masks"].astype(np.uint8),
                                             probabilities=arrays["probabilities"].astype(np.float32),
                                             spacing_mm=tuple(meta["spacing_mm"]),
                                             spacing_source=meta["spacing_source"], card=meta["card"])
            return add_prediction_nodes(scene, self.volume_node, prediction, meta["notes"], meta["card"], name,
                                        self.entry.label, meta["device_note"], time.perf_counter() - self.started)
        finally:
            self.close()


def _progress_line(fraction: float, message: str) -> None:
    """One tqdm-style line on stderr (per mille), the form ``XraySegSimLib.background`` reads."""
    from XraySegSimLib.background_output import progress_line

    progress_line("segmenting", int(round(1000 * max(0.0, min(1.0, fraction)))), 1000, message)


def main(argv: list[str] | None = None) -> int:
    """The worker: ``JOB_DIR OUT``; exit status 2 with one line for an error of ours."""
    from .child import watch_parent_from_environment

    watch_parent_from_environment()  # a crashed or closed Slicer leaves no worker running
    from .dependencies import resolve_device
    from .models import ModelEntry, load_entry
    from .reader import Radiograph
    from .runner import run_prediction

    job_dir, out = (Path(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        job = json.loads((job_dir / "job.json").read_text())
        model = job["model"]
        entry = ModelEntry(model["id"], model["label"], Path(model["path"]), model["kind"], model["version"],
                           list(model["class_names"]))
        device, device_note = resolve_device(job["device"])
        predictor = load_entry(entry, device)
        ijk_to_ras = None if job["ijk_to_ras"] is None else np.array(job["ijk_to_ras"])
        spacing = tuple(job["spacing_mm"]) if job["spacing_mm"] else None
        radiograph = Radiograph(np.load(job_dir / "pixels.npy", allow_pickle=False), job["photometric"], spacing,
                                job["spacing_source"], ijk_to_ras)
        override = tuple(job["spacing_override"]) if job["spacing_override"] else None
        prediction, notes = run_prediction(predictor, radiograph, override, _progress_line, None)
    except XraySegError as error:
        print(f"{error}", file=sys.stderr, flush=True)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "prediction.npz", masks=np.asarray(prediction.masks, np.uint8),
             probabilities=np.asarray(prediction.probabilities, np.float16))
    (out / "prediction.json").write_text(json.dumps({
        "class_names": list(prediction.class_names), "colors": [list(map(float, c)) for c in prediction.colors],
        "spacing_mm": list(map(float, prediction.spacing_mm)), "spacing_source": prediction.spacing_source,
        "notes": list(notes), "card": getattr(predictor, "card", None), "device_note": device_note}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
