"""Running a model without freezing the caller: progress, cancel, and batch over a folder. Qt-free, MRML-free.

**How the work is split (the design the Slicer module relies on).** The network runs in a worker *thread*
(torch releases the GIL), and the calling thread polls it every ``poll_s`` seconds, calling ``progress`` (the
Slicer widget's progress callback calls ``slicer.app.processEvents()``, so the GUI stays live and Cancel is
clickable). Progress is real: the network is wrapped so every sliding-window batch reports, and the wrapper
raises :class:`Cancelled` at the next batch once ``cancel()`` returned True. Nothing is written to the scene
or to disk by the worker; callers create nodes/files only from a finished :class:`Prediction`, so a cancelled
or failed run leaves nothing half-made. (A background *process*, as SlicerMONAIAuto3DSeg uses, would isolate
crashes too; it costs a model load per run and a data round trip, which a 2D model does not need.)

::

    prediction, notes = run_prediction(predictor, radiograph, progress=print_progress, cancel=lambda: False)
    report = run_batch(predictor, "in_folder", "out_folder", resume=True)    # .seg.nrrd per image + summary.csv
"""

from __future__ import annotations

import csv
import io
import math
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import XraySegError
from .reader import DICOM_SUFFIXES, ITK_SUFFIXES, PILLOW_SUFFIXES, Radiograph, read_radiograph

Progress = Callable[[float, str], None]
Cancel = Callable[[], bool]

TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
SUMMARY_FILE = "summary.csv"


class Cancelled(XraySegError):
    """The user cancelled the run; nothing was created."""


# ---- per-class results ----------------------------------------------------------------------------------------


def terminology_tag(snomed: dict | None) -> str | None:
    """Slicer's ``TerminologyEntry`` tag from a card class's ``snomed`` entry (category, type, modifier codes)."""
    if not snomed or "type" not in snomed:
        return None

    def code(c: dict | None) -> str:
        if not c:
            return "^^"
        return "^".join([c.get("CodingSchemeDesignator", ""), c.get("CodeValue", ""), c.get("CodeMeaning", "")])

    return "~".join([TERMINOLOGY_CONTEXT, code(snomed.get("category")), code(snomed.get("type")),
                     code(snomed.get("modifier")), ANATOMIC_CONTEXT, "^^", "^^"])


@dataclass
class ClassResult:
    name: str
    color: tuple[float, float, float]
    terminology: str | None
    pixels: int
    area_mm2: float
    mean_confidence: float  # mean foreground probability inside the mask (NaN when the mask is empty)


def class_results(prediction, card: dict | None) -> list[ClassResult]:
    classes = (card or {}).get("classes") or []
    snomed = {c["name"]: c.get("snomed") for c in classes}
    pixel = prediction.spacing_mm[0] * prediction.spacing_mm[1]
    out = []
    for index, name in enumerate(prediction.class_names):
        mask = np.asarray(prediction.masks[index], bool)
        n = int(mask.sum())
        probs = prediction.probabilities[index] if index < len(prediction.probabilities) else None
        confidence = float(probs[mask].mean()) if n and probs is not None else float("nan")
        out.append(ClassResult(name, tuple(float(c) for c in prediction.colors[index]),
                               terminology_tag(snomed.get(name)), n, n * pixel, confidence))
    return out


# ---- a cancellable run ----------------------------------------------------------------------------------------


class _WatchedNetwork:
    """Stands in for ``predictor.network``: counts the sliding-window calls and stops on cancel."""

    def __init__(self, network, stop: threading.Event) -> None:
        self.network, self.stop, self.calls = network, stop, 0

    def __call__(self, x):
        if self.stop.is_set():
            raise Cancelled("cancelled")
        out = self.network(x)
        self.calls += 1
        if self.stop.is_set():
            raise Cancelled("cancelled")
        return out

    def __getattr__(self, name):  # .to(), .eval(), parameters()... go to the real network
        return getattr(self.network, name)


def expected_calls(predictor, shape: tuple[int, int], spacing_mm: tuple[float, float]) -> int:
    """Network calls ``predictor.predict`` makes for an image of ``shape`` (the progress bar's length)."""
    from .transforms import resampled_size

    size = resampled_size(shape, spacing_mm, predictor.model.spacing_mm)
    patch = predictor.patch_size
    if size[0] <= patch[0] and size[1] <= patch[1]:
        windows = 1
        batches = 1
    else:
        windows = 1
        for n, roi in zip(size, patch):
            roi = min(roi, n) if n >= roi else roi
            interval = max(1, int(roi * (1 - predictor.overlap)))
            windows *= 1 if n <= roi else math.ceil((n - roi) / interval) + 1
        batches = math.ceil(windows / max(1, predictor.sw_batch_size))
    return batches * (2 if predictor.flip_tta else 1)


def run_prediction(predictor, radiograph: Radiograph, spacing_mm: tuple[float, float] | None = None,
                   progress: Progress | None = None, cancel: Cancel | None = None, poll_s: float = 0.05):
    """``(Prediction, notes)``: runs ``predictor.predict`` in a worker thread (see module docstring). ``notes``
    are the warnings worth showing (pixel spacing guessed, CUDA fell back to CPU...). Raises :class:`Cancelled`
    when ``cancel()`` turns True before the result is complete."""
    progress = progress or (lambda fraction, message: None)
    cancel = cancel or (lambda: False)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if spacing_mm is None and hasattr(predictor, "resolve_spacing"):
            spacing_mm, spacing_source = predictor.resolve_spacing(radiograph)
        else:
            spacing_source = "given"
    notes += [str(w.message) for w in caught]
    stop = threading.Event()
    watched = None
    if hasattr(predictor, "network"):
        watched = _WatchedNetwork(predictor.network, stop)
        predictor.network = watched
        total = expected_calls(predictor, radiograph.shape, spacing_mm)
    else:  # nnU-Net adapter: no per-window progress; cancel abandons its result
        total = 0
    outcome: dict = {}

    def work():
        try:
            with warnings.catch_warnings(record=True) as inner:
                warnings.simplefilter("always")
                outcome["prediction"] = predictor.predict(radiograph, spacing_mm)
            outcome["warnings"] = [str(w.message) for w in inner]
        except BaseException as error:  # noqa: BLE001 - re-raised in the calling thread
            outcome["error"] = error

    thread = threading.Thread(target=work, name="XraySegInfer", daemon=True)
    started = time.perf_counter()
    progress(0.0, "running the model")
    thread.start()
    try:
        while thread.is_alive():
            thread.join(poll_s)
            if cancel():
                stop.set()
                thread.join()  # returns at the next window (or when the adapter finishes)
                raise Cancelled("cancelled by the user; no result was created")
            done = watched.calls if watched is not None else 0
            fraction = min(0.99, done / total) if total else min(0.9, (time.perf_counter() - started) / 30.0)
            progress(fraction, f"model: {done}/{total} windows" if total else "model running")
    finally:
        if watched is not None:
            predictor.network = watched.network
    if "error" in outcome:
        raise outcome["error"]
    prediction = outcome["prediction"]
    if spacing_source != "given" and hasattr(prediction, "spacing_source"):
        prediction.spacing_source = spacing_source
    notes += outcome.get("warnings", [])
    progress(1.0, "done")
    return prediction, notes


# ---- .seg.nrrd with terminology ---------------------------------------------------------------------------------


def write_seg_nrrd(path: str | Path, masks: np.ndarray, ijk_to_ras: np.ndarray, results: list[ClassResult]) -> None:
    """Slicer ``.seg.nrrd``: one layer per class (overlaps kept), names, colours and terminology, on the grid
    ``ijk_to_ras`` (any direction, oblique included), written atomically."""
    import nrrd
    from XraySegSimLib.io import atomic_path

    m = np.asarray(ijk_to_ras, float)
    lps = np.diag([-1.0, -1.0, 1.0]) @ m[:3]
    _, rows, cols = masks.shape
    array = np.ascontiguousarray(np.moveaxis(np.asarray(masks, np.uint8), 0, -1)[None])  # k, j, i, layer
    header = {
        "encoding": "gzip", "space": "left-posterior-superior",
        "space directions": np.vstack([np.full(3, np.nan), lps[:, :3].T]),
        "space origin": lps[:, 3], "kinds": ["list", "domain", "domain", "domain"],
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
        "Segmentation_ConversionParameters": "Reference image geometry|" + "".join(f"{v:.10g};" for v in m.ravel())
        + f"0;{cols - 1};0;{rows - 1};0;0;|Image geometry description",
    }
    for index, result in enumerate(results):
        prefix = f"Segment{index}_"
        header.update({prefix + "ID": result.name, prefix + "Name": result.name, prefix + "NameAutoGenerated": "0",
                       prefix + "Color": " ".join(f"{c:.4f}" for c in result.color), prefix + "ColorAutoGenerated": "0",
                       prefix + "Layer": str(index), prefix + "LabelValue": "1",
                       prefix + "Extent": f"0 {cols - 1} 0 {rows - 1} 0 0",
                       prefix + "Tags": (f"TerminologyEntry:{result.terminology}|" if result.terminology else "|")})
    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), array, header, index_order="C")


# ---- batch --------------------------------------------------------------------------------------------------------


@dataclass
class BatchReport:
    out_dir: Path
    done: list[str] = field(default_factory=list)       # processed in this run
    skipped: list[str] = field(default_factory=list)    # already done (resume)
    failed: dict[str, str] = field(default_factory=dict)
    cancelled: bool = False

    @property
    def summary_csv(self) -> Path:
        return self.out_dir / SUMMARY_FILE


def radiograph_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    known = PILLOW_SUFFIXES | ITK_SUFFIXES | (DICOM_SUFFIXES - {""})
    files = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        name = path.name.lower()
        suffix = ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()
        if name.endswith(".seg.nrrd") or name == SUMMARY_FILE:
            continue
        if suffix in known or (suffix == "" and _is_dicom(path)):
            files.append(path)
    return files


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _output_name(folder: Path, path: Path) -> str:
    rel = path.relative_to(folder).as_posix()
    for suffix in (".nii.gz", path.suffix):
        if suffix and rel.lower().endswith(suffix.lower()):
            rel = rel[: -len(suffix)]
            break
    return rel.replace("/", "__") + ".seg.nrrd"


def _read_summary(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_summary(path: Path, rows: list[dict], class_names: list[str]) -> None:
    from XraySegSimLib.io import atomic_path

    fields = ["file", "output", "status", "message", "seconds", "spacing_row_mm", "spacing_col_mm", "spacing_source"]
    for name in class_names:
        fields += [f"{name}_area_mm2", f"{name}_confidence"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def run_batch(predictor, in_dir: str | Path, out_dir: str | Path, resume: bool = True,
              progress: Progress | None = None, cancel: Cancel | None = None,
              spacing_mm: tuple[float, float] | None = None) -> BatchReport:
    """Segment every radiograph under ``in_dir``: ``<out_dir>/<name>.seg.nrrd`` each (on the image's own grid)
    and ``<out_dir>/summary.csv`` (one row per file: status, spacing, area in mm^2 and mean confidence per
    class), rewritten after every file. With ``resume`` files already done are skipped. A file that cannot be
    read gets status ``error`` and the batch goes on. Cancel stops within the current image, which is not
    written; the summary keeps what was done, and the next run with ``resume`` continues."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise XraySegError(f"input folder not found: {in_dir}")
    progress = progress or (lambda fraction, message: None)
    cancel = cancel or (lambda: False)
    files = radiograph_files(in_dir)
    if not files:
        raise XraySegError(f"{in_dir}: no radiographs (DICOM, PNG, JPEG, TIFF, NRRD, NIfTI, MHA) found")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = out_dir / SUMMARY_FILE
    card = getattr(predictor, "card", None)
    class_names = list(predictor.class_names)
    previous = {r["file"]: r for r in _read_summary(summary)} if resume else {}
    rows: dict[str, dict] = dict(previous)
    report = BatchReport(out_dir)
    for index, path in enumerate(files):
        key = path.relative_to(in_dir).as_posix()
        output = out_dir / _output_name(in_dir, path)
        if resume and previous.get(key, {}).get("status") == "ok" and output.is_file():
            report.skipped.append(key)
            continue
        if cancel():
            report.cancelled = True
            break

        def step(fraction, message, index=index, key=key):
            progress((index + fraction) / len(files), f"{index + 1}/{len(files)} {key}: {message}")

        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                radiograph = read_radiograph(path)
            prediction, notes = run_prediction(predictor, radiograph, spacing_mm, step, cancel)
        except Cancelled:
            report.cancelled = True
            break
        except XraySegError as error:
            rows[key] = {"file": key, "output": "", "status": "error", "message": str(error)}
            report.failed[key] = str(error)
            _write_summary(summary, list(rows.values()), class_names)
            continue
        results = class_results(prediction, card)
        own = radiograph.ijk_to_ras
        placement = own if own is not None else Radiograph(prediction.normalized,
                                                           spacing_mm=prediction.spacing_mm).placement()
        write_seg_nrrd(output, prediction.masks, placement, results)
        row = {"file": key, "output": output.name, "status": "ok", "message": " | ".join(notes),
               "seconds": f"{time.perf_counter() - started:.2f}", "spacing_row_mm": f"{prediction.spacing_mm[0]:.6g}",
               "spacing_col_mm": f"{prediction.spacing_mm[1]:.6g}", "spacing_source": prediction.spacing_source}
        for result in results:
            row[f"{result.name}_area_mm2"] = f"{result.area_mm2:.2f}"
            row[f"{result.name}_confidence"] = "" if math.isnan(result.mean_confidence) else \
                f"{result.mean_confidence:.4f}"
        rows[key] = row
        report.done.append(key)
        _write_summary(summary, list(rows.values()), class_names)
    progress(1.0, "cancelled" if report.cancelled else "done")
    return report


__all__ = ["BatchReport", "Cancelled", "ClassResult", "class_results", "expected_calls", "radiograph_files",
           "run_batch", "run_prediction", "terminology_tag", "write_seg_nrrd"]
