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
import dataclasses
import json
import math
import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import views
from .errors import InputError, XraySegError
from .export_inputs import CaseInput, ClassMapping, load_case, load_mapping, names_table
from .export_layout import (DatasetLayout, atom_table, atoms_json, case_name, check_disk_space, dataset_json,
                            body_points_ras, expected_sample_bytes, labelled_centroid_ras, load_json, preview_rgb,
                            read_nrrd,
                            sample_masks, write_classes_json, write_image_2d, write_manifest, write_mask_stack,
                            write_png_fast)
from .io import atomic_path, write_json
from .truncation import IGNORE_MASK_VALUE, IGNORE_RULE, CutFaces
from .virtual_patient import VirtualPatientRanges, patient_of_view, setup_patient
from .domain_randomisation import add_devices, apply as apply_domain, check_level, clear_collimated_labels
from .domain_randomisation import domain_rng, draw_plan

FORMAT_VERSION = 1

# name: (low, high) of a uniform draw. Angles in degrees, shifts in mm, scales relative to the preset.
DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "lao_deg": (-10.0, 10.0),  # C-arm rotation about the isocentre (LAO +, RAO -)
    "cranial_deg": (-8.0, 8.0),  # CRA +, CAU -
    "roll_deg": (-5.0, 5.0),  # in-plane rotation about the principal ray
    "shift_r_mm": (-20.0, 20.0),  # isocentre shift along R, A, S
    "shift_a_mm": (-10.0, 10.0),
    "shift_s_mm": (-25.0, 25.0),
    "sdd_scale": (0.9, 1.1),  # SDD = preset SDD x this
    "magnification_scale": (0.95, 1.05),  # M = SDD / SID = preset M x this (kept >= 1.02)
    "pixel_scale": (0.85, 1.15),  # pixel spacing = (preset detector longer side / size) x this
}
# Views whose physics preset has another name (physics.PRESETS has no entry of their own).
PHYSICS_FOR_VIEW = {"chest-lateral": "chest-pa", "chest-ap": "chest-pa", "lumbar-ap": "pelvis-ap",
                    "carm-ap": "pelvis-ap", "wrist-oblique-pronated": "wrist-pa",
                    "wrist-oblique-supinated": "wrist-pa"}


@dataclass
class ExportConfig:
    """Everything that decides the dataset's content (stored in ``export.json``; resume checks it)."""

    out: str
    dataset_id: int = 501
    dataset_name: str = "XraySeg"
    view: str = "chest-pa"
    views_per_ct: int = 10
    size: int = 512
    physics: str = "auto"  # "auto" (the view's physics preset), a physics preset name, or "none"
    randomize_physics: bool = True
    ranges: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_RANGES))
    randomize_geometry: bool = True
    seed: int = 0
    test_fraction: float = 0.2
    test_ids: tuple[str, ...] | None = None
    isocenter: str = "labels"  # "labels" (centroid of the projected labels) or "center"
    previews: bool = True
    # Move the detector back along the principal ray when a drawn geometry puts it inside the body (the
    # projector integrates from the source to the detector only: anatomy beyond the plane would be cut off).
    detector_beyond_body: bool = True
    # Mark pixels whose ray crosses body beyond a cut face of the CT as nnU-Net's "ignore" (see truncation).
    ignore_truncated: bool = True
    # Virtual patients (see virtual_patient): 0 = the CT as it is; N > 0 = every sample is one of N random bodies
    # made from the CT (sample v is patient v % N), with these ranges (VirtualPatientRanges fields).
    virtual_patients: int = 0
    virtual_patient_ranges: dict = field(default_factory=lambda: VirtualPatientRanges().to_dict())
    # Image-domain randomisation (see domain_randomisation): "none", "light" or "strong".
    domain_randomisation: str = "none"

    def physics_preset(self) -> str | None:
        from . import physics

        if self.physics == "none":
            return None
        name = self.view if self.physics == "auto" else self.physics
        name = name if name in physics.PRESETS else PHYSICS_FOR_VIEW.get(name, name)
        if name not in physics.PRESETS:
            raise InputError(f"unknown physics preset '{self.physics}'; use 'auto', 'none' or one of "
                             f"{sorted(physics.PRESETS)}")
        return name

    def content_dict(self) -> dict[str, Any]:
        """The fields that must match on resume (not out, workers...)."""
        data = dataclasses.asdict(self)
        data.pop("out")
        data["ranges"] = {k: list(v) for k, v in sorted(self.ranges.items())}
        data["test_ids"] = list(self.test_ids) if self.test_ids is not None else None
        return data


@dataclass
class SampleOutcome:
    case: str
    ct_id: str
    split: str
    view: int | str
    status: str  # ok / skipped (already complete) / failed / cancelled
    message: str = ""

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CtTask:
    case: CaseInput
    split: str
    views: list[int]  # view indices still to make
    config: ExportConfig
    mapping: ClassMapping
    root: str
    threads: int | None
    device: str = "cpu"  # where the projector traces: "cpu" or "cuda" (resolved by run_export)


@dataclass
class ExportReport:
    root: Path
    samples: list[SampleOutcome]
    failed_cts: dict[str, str]
    elapsed_s: float
    cancelled: bool = False

    @property
    def n_ok(self) -> int:
        return sum(s.status in ("ok", "skipped") for s in self.samples)


# ---------------------------------------------------------------------------------------------------------------
# Randomisation


def sample_rng(seed: int, ct_id: str, view: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(ct_id.encode()), int(view)])


def _axis_rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = math.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def random_geometry(config: ExportConfig, isocenter: np.ndarray, rng: np.random.Generator):
    """(XrayGeometry, {name: value}) for one sample: draws every range of ``config.ranges`` in sorted order."""
    preset = views.PRESETS[config.view]
    draws = {}
    for name in sorted(DEFAULT_RANGES):
        low, high = config.ranges.get(name, DEFAULT_RANGES[name])
        value = float(rng.uniform(low, high))
        if not config.randomize_geometry:
            value = 1.0 if name.endswith("_scale") else 0.0
        draws[name] = value
    sdd = preset.source_to_detector_mm * draws["sdd_scale"]
    magnification = max(preset.source_to_detector_mm / preset.source_to_isocenter_mm * draws["magnification_scale"],
                        1.02)
    sid = sdd / magnification
    width, height = preset.detector_mm
    pixel = max(width, height) / config.size * draws["pixel_scale"]
    pixels = (max(1, round(width / max(width, height) * config.size)),
              max(1, round(height / max(width, height) * config.size)))
    detector_mm = (pixels[0] * pixel, pixels[1] * pixel)
    iso = np.asarray(isocenter, float) + np.array([draws["shift_r_mm"], draws["shift_a_mm"], draws["shift_s_mm"]])
    geometry = views.from_preset(config.view, iso, pixels, sdd, sid, detector_mm, draws["lao_deg"],
                                 draws["cranial_deg"])
    if draws["roll_deg"]:
        geometry = geometry.rotated(_axis_rotation(geometry.principal_direction, draws["roll_deg"]), about=iso)
    values = dict(draws, sdd_mm=sdd, sid_mm=sid, magnification=magnification, pixel_spacing_mm=pixel,
                  detector_mm=list(detector_mm), detector_pixels=list(pixels), isocenter_ras=iso.tolist(),
                  base_isocenter_ras=np.asarray(isocenter, float).tolist())
    return geometry, values


DETECTOR_CLEARANCE_MM = 1.0  # gap left between the body's farthest voxel and a pushed detector


def keep_detector_beyond_body(geometry, values: dict, body_ras: np.ndarray | None, voxel_axes: np.ndarray):
    """(geometry, values): the detector moved back along the principal ray (source, isocentre, pixel pitch and
    pixel count kept; SDD and magnification grow) so that the whole body lies between source and detector.

    ``body_ras`` (3, N): points whose convex hull holds the body's voxel centres (``body_points_ras``);
    ``voxel_axes``: the CT's 3x3 IJK->RAS (a voxel's box reaches ``0.5 * sum |axis . n|`` beyond its centre
    along ``n``). ``values["detector_pushed_mm"]`` records the move (0 when none was needed)."""
    values = dict(values, detector_pushed_mm=0.0)
    if body_ras is None or body_ras.shape[1] == 0:
        return geometry, values
    n = geometry.principal_direction
    s = geometry.source
    depth = (body_ras[0] - s[0]) * n[0] + (body_ras[1] - s[1]) * n[1] + (body_ras[2] - s[2]) * n[2]
    reach = float(depth.max()) + 0.5 * float(np.abs(np.asarray(voxel_axes, float).T @ n).sum())
    push = reach + DETECTOR_CLEARANCE_MM - geometry.source_to_detector_distance
    if push <= 0:
        return geometry, values
    geometry = dataclasses.replace(geometry, detector_center=geometry.detector_center + push * n)
    values.update(detector_pushed_mm=push, sdd_final_mm=geometry.source_to_detector_distance,
                  magnification_final=geometry.magnification)
    return geometry, values


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------------------------------------------------
# The worker: one CT, all its views


def _physics_draw(config: ExportConfig, rng: np.random.Generator):
    from . import physics

    name = config.physics_preset()
    if name is None:
        return None, None
    params = physics.randomized(name, rng) if config.randomize_physics else physics.preset(name)
    return name, params


def _image(result, params, rng) -> np.ndarray:
    from . import physics

    if params is None:
        body = result.line_integral > 1e-3
        return physics.normalize_radiograph(result.line_integral, "MONOCHROME2", mask=body if body.any() else None)
    return physics.simulate_radiograph(result, params, rng).image


@dataclass
class _SampleJob:
    """What the writer thread needs to finish one rendered sample (everything after the render)."""

    case: str
    split: str
    view: int
    result: Any  # DrrResult
    geometry: Any
    values: dict
    physics_name: str | None
    params: Any
    rng: np.random.Generator  # after the geometry and physics draws: the noise comes next
    render_ms: float
    patient: dict | None = None  # the virtual patient's values, None for the CT as it is


@dataclass
class _CtContext:
    """Per-CT constants of the writer thread."""

    layout: DatasetLayout
    case_in: CaseInput
    config: ExportConfig
    mapping: ClassMapping
    ct_grid: Any
    local_to_global: np.ndarray
    cut_faces: Any = None  # truncation.CutFaces of the CT, or None (no ignore label)


def _finish_sample(ctx: _CtContext, job: _SampleJob) -> None:
    """Image, masks, combination codes, preview, sidecar; all files written atomically, the sidecar last.

    Runs in the CT's writer thread while the next view renders (the projector releases the GIL); its kernels
    are serial and release the GIL too."""
    layout, config, mapping, case_in = ctx.layout, ctx.config, ctx.mapping, ctx.case_in
    result, geometry, case, split, params = job.result, job.geometry, job.case, job.split, job.params
    # Domain randomisation: its own generator, so switching it on changes no other draw.
    plan = draw_plan(config.domain_randomisation, domain_rng(config.seed, case_in.ct_id, job.view),
                     result.line_integral.shape)
    add_devices(result, plan)  # metal before the physics
    image = apply_domain(_image(result, params, job.rng), plan)
    collimated = clear_collimated_labels(result, plan)  # nothing is seen behind the collimator
    masks, codes, combos, top, counts, bits = sample_masks(result.thickness_mm, result.min_mask_thickness_mm,
                                                           ctx.local_to_global, len(mapping))
    present_local = np.flatnonzero(counts)
    present = [int(ctx.local_to_global[c]) + 1 for c in present_local]
    projected = np.zeros(len(mapping), np.int64)
    projected[ctx.local_to_global] = counts
    spacing = geometry.spacing
    write_image_2d(layout.image(case, split), image.astype(np.float32), spacing)
    ignored = ctx.cut_faces.mask(geometry) if ctx.cut_faces is not None else np.zeros(codes.shape, bool)
    n_ignored = int(ignored.sum())
    stack = masks
    if n_ignored:  # unknown pixels: IGNORE_MASK_VALUE in every class plane (masks stays 0/1 for the preview)
        stack = masks.copy()
        stack[:, ignored] = IGNORE_MASK_VALUE
    write_mask_stack(layout.masks(case, split), stack, spacing, mapping.names)
    with atomic_path(layout.codes(case)) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, codes=codes, combos=np.array(json.dumps([list(c) for c in combos])),
                     ignored=np.packbits(ignored))
    if config.previews:
        gray = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        # Tint: the highest class index of each pixel's combination; outlines show the others.
        rgb = preview_rgb(gray, masks, top, mapping.colors, present, bits)
        if n_ignored:  # unknown pixels: magenta hatching
            rows, cols = np.indices(ignored.shape)
            rgb[ignored & ((rows + cols) % 8 < 2)] = (255, 0, 255)
        write_png_fast(layout.preview(case), rgb)
    sidecar = {
        "format_version": FORMAT_VERSION,
        "case": case, "ct_id": case_in.ct_id, "split": split, "view_index": job.view,
        "inputs": case_in.to_dict(), "ct_grid": ctx.ct_grid,
        "view_preset": config.view, "seed": config.seed,
        "rng": {"entropy": [int(config.seed), zlib.crc32(case_in.ct_id.encode()), int(job.view)],
                "order": "geometry draws (sorted names), physics.randomized, noise"},
        "randomization": job.values,
        "geometry": geometry.to_dict(),
        "spacing_mm": list(geometry.spacing), "size": list(geometry.size),
        "physics": None if params is None else {"preset": job.physics_name, "randomized":
                                                config.randomize_physics,
                                                "params": _jsonable(params)},
        "image": {"quantity": "processed radiograph in [0, 1], MONOCHROME2 (dense = bright)"
                  if params is not None else "naive DRR line integral normalised with "
                  "physics.normalize_radiograph (0.5-99.5 % over the body), MONOCHROME2",
                  "dtype": "float32"},
        "classes": mapping.names,
        "classes_present": present,
        "projected_pixels": projected.tolist(),
        "combinations": [list(c) for c in combos if c],
        "mask_rule": f"path length through the class >= {result.min_mask_thickness_mm:.3g} mm",
        "ignored_pixels": n_ignored,
        "virtual_patient": job.patient,
        "domain_randomisation": plan,
        "collimated_pixels": collimated,
        "ignore_rule": IGNORE_RULE if ctx.cut_faces is not None else None,
        "unknown_label_values_ignored": list(result.unknown_label_values),
        "render_ms": round(job.render_ms, 1),
        "files": {k: str(p.relative_to(layout.root)) for k, p in {
            "image": layout.image(case, split), "label": layout.label(case, split),
            "masks": layout.masks(case, split), "preview": layout.preview(case)}.items()},
    }
    write_json(layout.sidecar(case), sidecar)  # last: the sample is complete


# Rows per chunk of the render's parallel loop: chunks are handed out dynamically, so when the writer thread
# takes a core for a moment the other render threads take over its rows (the default, static split waits for
# the slowest thread). The rows are independent: the output does not depend on the scheduling.
RENDER_CHUNK_ROWS = 4


def _set_chunksize(rows: int) -> int:
    """numba's parallel chunk size of the calling thread (its previous value is returned)."""
    try:
        import numba

        previous = numba.get_parallel_chunksize()
        numba.set_parallel_chunksize(rows)
        return previous
    except Exception:  # pragma: no cover - old numba: static scheduling
        return 0


def _set_numba_threads(threads: int | None) -> None:
    """numba's thread count is per calling thread: set it in every thread that runs kernels."""
    if threads:
        try:
            import numba

            numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        except Exception:  # pragma: no cover - numba missing is caught elsewhere
            pass


def process_ct(task: CtTask) -> dict[str, Any]:
    """Render and write every pending view of one CT. Never raises for a bad CT: returns its error."""
    started = time.perf_counter()
    layout = DatasetLayout(Path(task.root))
    outcomes: list[dict] = []
    report: dict[str, Any] = {"ct_id": task.case.ct_id, "error": None, "samples": outcomes, "notes": [],
                              "unknown_label_values": []}
    _set_numba_threads(task.threads)
    previous_chunk = _set_chunksize(RENDER_CHUNK_ROWS)
    try:
        return _process_ct(task, started, layout, outcomes, report)
    finally:
        _set_chunksize(previous_chunk)


def _process_ct(task: CtTask, started: float, layout: DatasetLayout, outcomes: list[dict],
                report: dict[str, Any]) -> dict[str, Any]:
    from .labels import LabelClasses
    from .materials import MaterialModel
    from .projector import DrrProjector

    case_in, config, mapping = task.case, task.config, task.mapping
    try:
        loaded = load_case(case_in, mapping)
        classes_ct = mapping.classes_for(loaded.names) if loaded.labels is not None else LabelClasses(())
        physics_on = config.physics_preset() is not None
        projector = DrrProjector(loaded.ct, loaded.labels, classes_ct if loaded.labels is not None else None,
                                 threads=task.threads, names_table=loaded.names,
                                 materials=MaterialModel() if physics_on else None, device=task.device)
        if config.isocenter == "labels" and len(projector.classes):
            base_iso = labelled_centroid_ras(projector.packed, loaded.ct.ijk_to_ras)
            if base_iso is None:
                raise InputError(f"{loaded.ct.name or 'volume'}: the mask is empty, it has no centroid")
        else:
            base_iso = loaded.ct.center_ras
        ct_grid = loaded.ct.describe_grid()
        body_ras = body_points_ras(projector.packed, projector.ct.ijk_to_ras) if config.detector_beyond_body \
            else None
        voxel_axes = projector.ct.ijk_to_ras[:3, :3]
        cut_faces = CutFaces(projector.packed, projector.ct.ras_to_ijk) if config.ignore_truncated else None
        del loaded.ct.array, loaded  # the projector keeps its packed copy only
        report["notes"] = []
        report["unknown_label_values"] = list(projector.unknown_values)
    except (XraySegError, OSError, ValueError, MemoryError) as error:
        report["error"] = f"{type(error).__name__}: {error}" if not isinstance(error, XraySegError) else str(error)
        return report
    global_index = {name: i for i, name in enumerate(mapping.names)}
    local_to_global = np.array([global_index[c.name] for c in projector.classes.classes], np.int64)
    ctx = _CtContext(layout, case_in, config, mapping, ct_grid, local_to_global, cut_faces)
    # One writer thread finishes each sample (image, masks, codes, preview, files) while the next view renders.
    writer = cf.ThreadPoolExecutor(1, initializer=_set_numba_threads, initargs=(task.threads,))
    pending: list[tuple[cf.Future, int]] = []  # (future, index of its row in outcomes)

    def settle(future: cf.Future, row: int) -> None:
        try:
            future.result()
        except (XraySegError, ValueError, OSError) as error:
            outcomes[row] = dict(outcomes[row], status="failed", message=str(error))

    try:
        base_projector, current_patient = projector, None
        n_patients = config.virtual_patients
        # Views grouped by virtual patient, so each one is built once per task.
        for view in sorted(task.views, key=lambda v: (patient_of_view(v, n_patients), v) if n_patients else v):
            case = case_name(case_in.ct_id, view)
            if n_patients and not layout.cancel_flag.exists() and (
                    current_patient is None or current_patient.values["index"] != patient_of_view(view, n_patients)):
                projector = current_patient = None  # free the previous body before building the next
                try:
                    current_patient = setup_patient(
                        base_projector, VirtualPatientRanges.from_dict(config.virtual_patient_ranges), config.seed,
                        case_in.ct_id, patient_of_view(view, n_patients), config.isocenter == "labels",
                        config.detector_beyond_body, config.ignore_truncated, task.threads)
                except (XraySegError, ValueError, MemoryError) as error:
                    outcomes.append(SampleOutcome(case, case_in.ct_id, task.split, view, "failed", str(error)).row())
                    continue
                projector, base_iso = current_patient.projector, current_patient.isocenter
                body_ras, voxel_axes = current_patient.body_ras, current_patient.voxel_axes
                ctx = dataclasses.replace(ctx, cut_faces=current_patient.cut_faces)
            if layout.cancel_flag.exists():
                outcomes.append(SampleOutcome(case, case_in.ct_id, task.split, view, "cancelled").row())
                continue
            try:
                rng = sample_rng(config.seed, case_in.ct_id, view)
                geometry, values = random_geometry(config, base_iso, rng)
                if config.detector_beyond_body:
                    geometry, values = keep_detector_beyond_body(geometry, values, body_ras, voxel_axes)
                physics_name, params = _physics_draw(config, rng)
                t0 = time.perf_counter()
                result = projector.render(geometry)
                render_ms = (time.perf_counter() - t0) * 1000
            except (XraySegError, ValueError, OSError) as error:
                outcomes.append(SampleOutcome(case, case_in.ct_id, task.split, view, "failed", str(error)).row())
                continue
            # Bounded overlap: at most one sample waits to be finished while the next one renders.
            while len(pending) >= 2:
                settle(*pending.pop(0))
            job = _SampleJob(case, task.split, view, result, geometry, values, physics_name, params, rng, render_ms,
                             current_patient.values if current_patient is not None else None)
            del result
            outcomes.append(SampleOutcome(case, case_in.ct_id, task.split, view, "ok").row())
            pending.append((writer.submit(_finish_sample, ctx, job), len(outcomes) - 1))
            del job
        for item in pending:
            settle(*item)
    finally:
        writer.shutdown(wait=True)
    report["elapsed_s"] = time.perf_counter() - started
    return report


# ---------------------------------------------------------------------------------------------------------------
# The coordinator


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


def sample_complete(layout: DatasetLayout, case: str, split: str, previews: bool) -> bool:
    return layout.sidecar(case).is_file() and all(p.is_file() for p in layout.sample_files(case, split, previews))


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
               "classes": list(mapping.names), "mapping": _jsonable(mapping.spec),
               "cases": [c.to_dict() for c in cases], "inputs": input_fingerprints(cases)}
    if layout.config.is_file():
        previous = load_json(layout.config)
        if not resume:
            raise InputError(f"{layout.root} already holds an export; pass --resume to continue it, or choose "
                             "another --out / --dataset-id")
        changed = [k for k in ("config", "classes") if previous.get(k) != _jsonable(content[k])]
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
    write_json(layout.config, _jsonable(content))
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


def finalize(layout: DatasetLayout, cases: Sequence[CaseInput], splits: dict[str, str], config: ExportConfig,
             mapping: ClassMapping, outcomes: list[SampleOutcome], failed: dict[str, str]) -> None:
    """Atoms over all complete samples -> labels; remove orphans; classes.json, atoms.json, manifest,
    dataset.json (last)."""
    complete: list[tuple[str, str]] = []
    unknown: dict[str, list[int]] = {}
    combos_all: set[tuple[int, ...]] = set()
    any_ignored = False
    for case in cases:
        for view in range(config.views_per_ct):
            name, split = case_name(case.ct_id, view), splits[case.ct_id]
            if sample_complete(layout, name, split, config.previews):
                complete.append((name, split))
                sidecar = load_json(layout.sidecar(name))
                combos_all.update(tuple(c) for c in sidecar["combinations"])
                any_ignored = any_ignored or bool(sidecar.get("ignored_pixels"))
                unknown[name] = sidecar.get("unknown_label_values_ignored") or []
    complete_names = {n for n, _ in complete}
    # Orphans: files of samples whose sidecar was never written (interrupted, failed): nnU-Net must not see them.
    for folder in ("imagesTr", "imagesTs", "labelsTr", "labelsTs", "masksTr", "masksTs", "previews"):
        for path in (layout.root / folder).glob("*"):
            stem = path.name.split(".")[0]
            stem = stem[:-5] if stem.endswith("_0000") and folder.startswith("images") else stem
            if stem not in complete_names:
                path.unlink(missing_ok=True)
    table = atom_table(len(mapping), combos_all)
    previous = layout.root / "atoms.json"
    new_atoms = atoms_json(table, mapping.names)
    same_table = previous.is_file() and load_json(previous) == _jsonable(new_atoms)
    # nnU-Net v2: the ignore label must be the highest label value, one above the last atom.
    ignore_label = max(table.values()) + 1 if any_ignored else None
    dtype = np.uint8 if max(table.values()) + 1 < 256 else np.uint16
    for name, split in complete:
        target = layout.label(name, split)
        if same_table and target.is_file():
            continue
        with np.load(layout.codes(name)) as data:
            codes, combos = data["codes"], json.loads(str(data["combos"]))
            ignored = (np.unpackbits(data["ignored"], count=codes.size).reshape(codes.shape).astype(bool)
                       if "ignored" in data.files else None)
        lut = np.array([table[tuple(c)] for c in combos], dtype)
        spacing = load_json(layout.sidecar(name))["spacing_mm"]
        label = lut[codes]
        if ignore_label is not None and ignored is not None:
            label[ignored] = ignore_label
        write_image_2d(target, label, spacing, encoding="gzip")
    write_classes_json(layout.root / "classes.json", mapping.describe(names_table(mapping.default_names)))
    write_json(previous, new_atoms)
    rows = []
    status = {(o.case): o for o in outcomes}
    for case in cases:
        if case.ct_id in failed and not any(n.startswith(case.ct_id + "_v") for n in complete_names):
            rows.append({"case": "", "ct_id": case.ct_id, "split": splits[case.ct_id], "view": "",
                         "status": "failed", "message": failed[case.ct_id]})
            continue
        for view in range(config.views_per_ct):
            name = case_name(case.ct_id, view)
            if name in complete_names:
                note = f"label values {unknown[name]} are not in the names table: ignored" if unknown[name] else ""
                rows.append({"case": name, "ct_id": case.ct_id, "split": splits[case.ct_id], "view": config.view,
                             "view_index": view, "status": "ok", "message": note})
            else:
                o = status.get(name)
                rows.append({"case": name, "ct_id": case.ct_id, "split": splits[case.ct_id], "view": config.view,
                             "view_index": view, "status": o.status if o and o.status != "ok" else "incomplete",
                             "message": (o.message if o else "") or failed.get(case.ct_id, "")})
    write_manifest(layout.root / "manifest.csv", rows)
    n_train = sum(split == "train" for _, split in complete)
    write_json(layout.root / "dataset.json", dataset_json(
        config.dataset_name, mapping.names, table, n_train, len(complete) - n_train, ignore_label=ignore_label,
        extra={"xrayseg": {"format_version": FORMAT_VERSION, "view": config.view, "size": config.size,
                           "physics": config.physics, "seed": config.seed,
                           "test_ct_ids": sorted(i for i, s in splits.items() if s == "test")}}))
