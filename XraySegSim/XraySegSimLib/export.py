"""Batch export of training sets: randomised views of many CTs, in nnU-Net v2's raw dataset layout.

``xrayseg export`` and the Slicer module both call :func:`run_export`.

Dataset contract (``<out>/Dataset<ID>_<Name>/``, ID 3 digits, default 501, Name default "XraySeg")
--------------------------------------------------------------------------------------------------
* ``imagesTr/<case>_0000.nrrd``, ``labelsTr/<case>.nrrd``; test split: ``imagesTs/``, ``labelsTs/``. Case id:
  ``<ctid>_v<NNNN>`` (ctid: letters, digits, underscores).
* Images: 2D NRRD, float32, the processed radiograph in [0, 1], MONOCHROME2 (dense = bright), spacing = the
  detector pixel spacing in mm (column, row). With ``physics="none"`` the naive DRR (line integral) normalised
  with ``physics.normalize_radiograph`` (0.5-99.5 % window over the pixels whose rays cross the body).
* Labels: 2D NRRD, uint8 (uint16 beyond 255 atoms), the REGION encoding of overlaps: each combination of
  overlapping classes is one integer *atom* (atoms 1..C are the single classes, reserved; combinations of 2+
  classes follow, see ``export_layout``). ``dataset.json``: ``labels`` maps "background" to 0 and each class
  name to the list of atoms containing it (nnU-Net v2 region-based training), ``regions_class_order`` =
  [1..C], ``channel_names`` {"0": "radiograph"}, ``file_ending`` ".nrrd", ``numTraining``,
  ``overwrite_image_reader_writer`` "SimpleITKIO". ``atoms.json``: atom -> list of class indices (1-based).
* ``masksTr/<case>.nrrd`` / ``masksTs``: uint8 (C, H, W) stack of overlapping binary masks, one per class in
  dataset order (``nrrd.read(path, index_order="C")``); a class absent from a CT is all-zero there.
* ``sidecars/<case>.json``: geometry (with ``P`` 3x4 and the detector IJK->RAS), CT id and paths, physics
  parameters used, every randomised value, classes present, unknown label values, the files. Written last:
  a sample is complete exactly when its sidecar exists.
* ``previews/<case>.png``: overlay preview. ``manifest.csv``: case, ct_id, split, view (the view preset name),
  view_index (the sample's index ``v`` in its CT), status, message; one row per sample, plus one row per failed
  CT (case, view and view_index empty). ``classes.json``: index, name, colour (RGB 0..1),
  member patterns and source label values. ``export.json``: the configuration (checked on ``--resume``).
* Split by CT, never by view: ``test_fraction`` of the CTs (rounded, at least one train CT) chosen with the
  seed, or an explicit list of test CT ids (or a ``split`` column in the pairs CSV).

Behaviour
---------
* Randomisation is reproducible: sample ``v`` of CT ``ctid`` draws from ``default_rng([seed, crc32(ctid), v])``
  whatever the order, the number of workers or interruptions. Geometry around the view preset (C-arm LAO/CRA
  and roll about the principal ray, isocentre shift, SDD, magnification, pixel spacing: see
  ``DEFAULT_RANGES``), then the physics draw (``physics.randomized``) and its noise.
* The detector stays beyond the body: when a drawn geometry puts any body voxel (HU > -500, or labelled) at
  or past the detector plane, the detector moves back along the principal ray until the body clears it by
  ``DETECTOR_CLEARANCE_MM`` (source, isocentre and pixel pitch kept: SDD and magnification grow); the sidecar's
  ``randomization.detector_pushed_mm`` records the move (0: none). Deterministic, no random draw.
* Every file is written atomically; the sidecar last. ``resume=True`` re-checks each sample (sidecar and its
  files present), rebuilds incomplete ones, and skips the rest. Labels are (re)written by the final step from
  per-sample combination codes, once the dataset-wide atom table is known.
* A CT that cannot be read or rendered is reported (manifest row, status "failed") and the export goes on.
* Disk space is checked up front from the expected size.
* Parallelism: one task = one CT with all its views (one CT in memory per worker); local worker processes
  (``workers``), each with ``threads`` numba threads (default cores / workers), or a Dask cluster
  (``scheduler="tcp://host:port"``, or a ``distributed.Client``). Workers overlap file writing with rendering.
* ``progress(done, total, message)`` is called as samples complete; ``cancel()`` returning True stops the
  export after the samples in flight (the dataset stays resumable).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import views
from .errors import InputError
from .export_config import (DEFAULT_RANGES, FORMAT_VERSION, PHYSICS_FOR_VIEW, CtTask, ExportConfig, ExportReport,
                            SampleOutcome, to_jsonable)
from .export_finalize import finalize
from .export_inputs import CaseInput, ClassMapping, load_mapping
from .export_layout import DatasetLayout, case_name, check_disk_space, expected_sample_bytes, load_json, sample_complete
from .export_worker import process_ct
from .io import write_json
from .domain_randomisation import check_level
from .virtual_patient import VirtualPatientRanges

__all__ = ["DEFAULT_RANGES", "PHYSICS_FOR_VIEW", "ExportConfig", "ExportReport", "SampleOutcome", "assign_splits",
           "available_cores", "finalize", "run_export"]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity: taskset, containers), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def assign_splits(cases: Sequence[CaseInput], config: ExportConfig) -> dict[str, str]:
    """{ct_id: 'train' | 'test'}: explicit ids, else CSV split column, else ``test_fraction`` with the seed."""
    ids = [c.ct_id for c in cases]
    if config.test_ids is not None:
        unknown = sorted(set(config.test_ids) - set(ids))
        if unknown:
            raise InputError(f"test CT ids not among the inputs: {', '.join(unknown)} (inputs: {', '.join(ids)})")
        return {i: "test" if i in config.test_ids else "train" for i in ids}
    forced = {c.ct_id: c.split for c in cases if c.split}
    free = sorted(i for i in ids if i not in forced)
    n_test = int(round(config.test_fraction * len(ids))) - sum(s == "test" for s in forced.values())
    n_test = max(0, min(n_test, len(free) - (0 if any(s == "train" for s in forced.values()) else 1)))
    order = np.random.default_rng([int(config.seed), 0x5E11]).permutation(len(free))
    test = {free[i] for i in order[:n_test]}
    return {i: forced.get(i) or ("test" if i in test else "train") for i in ids}


def _remove_partials(root: Path) -> int:
    removed = 0
    for tmp in root.rglob(".*.part"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _executor(workers: int, scheduler, threads: int | None):
    """(submit(fn, arg) -> future, as_completed-like wait, close)."""
    if scheduler is not None:
        from distributed import Client

        client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
        own = client is not scheduler

        def close():
            if own:
                client.close()

        return (lambda fn, arg: client.submit(fn, arg, pure=False)), close, "dask"
    if workers <= 1:
        pool = cf.ThreadPoolExecutor(1)  # in-process; the coordinator thread stays free for progress/cancel
    else:
        import multiprocessing

        from .process_guard import worker_initializer

        # Workers die with this process (kill -9 included) and leave Ctrl-C to it.
        pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=worker_initializer, initargs=(os.getpid(),))
    return pool.submit, (lambda: pool.shutdown(wait=True, cancel_futures=True)), "local"


def _wait_any(futures: list, timeout: float, kind: str):
    if kind == "dask":  # distributed.wait raises on timeout: poll instead
        deadline = time.monotonic() + timeout
        while True:
            done = [f for f in futures if f.done()]
            if done or time.monotonic() >= deadline:
                return done
            time.sleep(0.02)
    done, _ = cf.wait(futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)
    return list(done)


def _with_defaults(options: dict, defaults: dict) -> dict:
    """``options`` with every option it lacks read as its default, one level into groups of options (dicts)."""
    merged = {**defaults, **options}
    for key, default in defaults.items():
        if isinstance(default, dict) and isinstance(merged[key], dict):
            merged[key] = {**default, **merged[key]}
    return merged


def run_export(
    cases: Sequence[CaseInput],
    config: ExportConfig,
    mapping: ClassMapping | None = None,
    workers: int = 1,
    threads: int | None = None,
    scheduler=None,
    resume: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    device: str = "cpu",
) -> ExportReport:
    """Export ``config.views_per_ct`` randomised samples of every case (see the module docstring).
    ``device``: "cpu", "cuda" or "auto" for the DRRs (same samples on either; not part of the dataset's config)."""
    from .projector_gpu import resolve_device

    started = time.perf_counter()
    device = resolve_device(device)  # "cuda" without a GPU: InputError before anything is written
    mapping = mapping or load_mapping("bones")
    if config.view not in views.PRESETS:
        raise InputError(f"unknown view '{config.view}'; choose one of: {', '.join(views.PRESET_NAMES)}")
    if config.virtual_patients < 0:
        raise InputError(f"--virtual-patients {config.virtual_patients}: give 0 (off) or a positive count")
    VirtualPatientRanges.from_dict(config.virtual_patient_ranges)  # validates
    check_level(config.domain_randomisation)
    if config.views_per_ct < 1 or config.size < 8:
        raise InputError("views_per_ct must be >= 1 and size >= 8 pixels")
    config.physics_preset()  # validates
    if not cases:
        raise InputError("no CTs to export")
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise InputError(f"--out {config.out} is a file; give a folder (it is created if needed)")
    layout = DatasetLayout.create(config.out, config.dataset_id, config.dataset_name)
    from .export_resume import check_same_inputs, input_fingerprints

    content = {"format_version": FORMAT_VERSION, "config": config.content_dict(),
               "classes": list(mapping.names), "mapping": to_jsonable(mapping.spec),
               "cases": [c.to_dict() for c in cases], "inputs": input_fingerprints(cases)}
    if layout.config.is_file():
        previous = load_json(layout.config)
        if not resume:
            raise InputError(f"{layout.root} already holds an export; pass --resume to continue it, or choose "
                             "another --out / --dataset-id")
        # An option added after the export was made is read as its default (old exports stay resumable), also
        # inside a group of options such as virtual_patient_ranges (the scanner blur came later).
        defaults = to_jsonable(type(config)(out=config.out).content_dict())
        previous["config"] = _with_defaults(previous.get("config", {}), defaults)
        now = {"config": _with_defaults(to_jsonable(content["config"]), defaults),
               "classes": to_jsonable(content["classes"])}
        changed = [k for k in ("config", "classes") if previous.get(k) != now[k]]
        if changed:
            raise InputError(f"cannot resume {layout.root}: its {' and '.join(changed)} differ from this run's; "
                             "use the same options (seed, views, size, classes...) or another --out")
        check_same_inputs(layout.root, previous, content["inputs"])  # by path and SHA-256, before any change
    splits = assign_splits(cases, config)
    if resume:
        _remove_partials(layout.root)
    pending: dict[str, list[int]] = {}
    skipped: list[SampleOutcome] = []
    for case in cases:
        todo = []
        for view in range(config.views_per_ct):
            name = case_name(case.ct_id, view)
            if resume and sample_complete(layout, name, splits[case.ct_id], config.previews):
                skipped.append(SampleOutcome(name, case.ct_id, splits[case.ct_id], view, "skipped"))
            else:
                todo.append(view)
        if todo:
            pending[case.ct_id] = todo
    total = len(cases) * config.views_per_ct
    remaining = sum(len(v) for v in pending.values())
    pixels = config.size * config.size
    check_disk_space(layout.root, remaining * expected_sample_bytes(1, pixels, len(mapping), config.previews))
    for folder in layout.folders():
        folder.mkdir(parents=True, exist_ok=True)
    write_json(layout.config, to_jsonable(content))
    layout.cancel_flag.unlink(missing_ok=True)
    if threads is None and scheduler is None:
        threads = max(1, available_cores() // max(1, workers))
    submit, close, kind = _executor(workers, scheduler, threads)
    futures = {}
    outcomes: list[SampleOutcome] = list(skipped)
    failed: dict[str, str] = {}
    cancelled = False
    done_count = len(skipped)
    if progress:
        progress(done_count, total, "starting")
    try:
        by_id = {c.ct_id: c for c in cases}
        for ct_id, todo in pending.items():
            task = CtTask(by_id[ct_id], splits[ct_id], todo, config, mapping, str(layout.root), threads, device)
            futures[submit(process_ct, task)] = ct_id
        live = list(futures)
        last_count = -1
        while live:
            finished = _wait_any(live, 0.3, kind)
            for future in finished:
                live.remove(future)
                ct_id = futures[future]
                try:
                    report = future.result()
                except Exception as error:  # a crashed worker: report the CT, go on
                    report = {"ct_id": ct_id, "error": f"worker failed: {type(error).__name__}: {error}",
                              "samples": []}
                if report["error"]:
                    failed[ct_id] = report["error"]
                for row in report["samples"]:
                    if report["error"] and row["status"] == "ok" and not sample_complete(
                            layout, row["case"], row["split"], config.previews):
                        row = dict(row, status="failed", message=report["error"])
                    outcomes.append(SampleOutcome(**row))
            if cancel is not None and not cancelled and cancel():
                cancelled = True
                layout.cancel_flag.parent.mkdir(parents=True, exist_ok=True)
                layout.cancel_flag.touch()
            if progress:
                count = min(total, sum(1 for _ in (layout.root / "sidecars").glob("*.json")))
                if count != last_count:
                    progress(count, total, f"{count}/{total} samples")
                    last_count = count
    finally:
        close()
        layout.cancel_flag.unlink(missing_ok=True)
    report = ExportReport(layout.root, outcomes, failed, 0.0, cancelled)
    finalize(layout, cases, splits, config, mapping, outcomes, failed)
    report.elapsed_s = time.perf_counter() - started
    if progress:
        progress(sum(s.status in ("ok", "skipped") for s in outcomes), total, "done")
    return report
