"""The export's worker: one CT, all its pending views (``process_ct``), each rendered, then finished (image,
masks, codes, preview, sidecar) by a writer thread while the next view renders."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .domain_randomisation import add_devices, apply as apply_domain, clear_collimated_labels
from .domain_randomisation import domain_rng, draw_plan
from .errors import InputError, XraySegError
from .export_config import FORMAT_VERSION, CtTask, ExportConfig, SampleOutcome, to_jsonable
from .export_geometry import (body_points_ras, keep_detector_beyond_body, labelled_centroid_ras, random_geometry,
                              sample_rng)
from .export_inputs import CaseInput, ClassMapping, load_case
from .export_layout import DatasetLayout, case_name
from .export_mask_runs import sample_mask_runs
from .export_masks import sample_masks, with_ignored
from .export_nrrd import write_image_2d, write_mask_stack
from .export_preview import preview_factor, preview_rgb, thumbnail_inputs, write_png_fast
from .io import atomic_path, write_json
from .truncation import IGNORE_MASK_VALUE, CutFaces
from .virtual_patient import VirtualPatientRanges, patient_of_view, setup_patient


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
    contrast: dict | None = None  # contrast.suppress_contrast's report, or None (suppression off)


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
    ignored = ctx.cut_faces.mask(geometry) if ctx.cut_faces is not None else None
    n_ignored = int(ignored.sum()) if ignored is not None else 0
    # <= 64 classes: the stack as runs with the ignore value in it (the preview reads the bit sets); beyond, the
    # preview reads the 0/1 planes, so the ignore value is written over them after the preview.
    as_runs = 0 < len(ctx.local_to_global) and len(mapping) <= 64
    made = (sample_mask_runs if as_runs else sample_masks)(
        result.thickness_mm, result.min_mask_thickness_mm, ctx.local_to_global, len(mapping),
        ignored if as_runs and n_ignored else None, IGNORE_MASK_VALUE, rows_hit=result.class_rows)
    masks, codes, combos, top, counts, bits = made
    if ignored is None:
        ignored = np.zeros(codes.shape, bool)
    present_local = np.flatnonzero(counts)
    present = [int(ctx.local_to_global[c]) + 1 for c in present_local]
    projected = np.zeros(len(mapping), np.int64)
    projected[ctx.local_to_global] = counts
    spacing = geometry.spacing
    write_image_2d(layout.image(case, split), image.astype(np.float32), spacing)
    if config.previews:  # before with_ignored: beyond 64 classes the preview reads the 0/1 masks
        gray = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        # Tint: the highest class index of each pixel's combination; outlines show the others.
        # Unknown pixels: magenta hatching.
        small = thumbnail_inputs(preview_factor(gray.shape, config.preview_max_px), gray,
                                 None if as_runs else masks, top, bits, ignored if n_ignored else None)
        rgb = preview_rgb(small[0], small[1], small[2], mapping.colors, present, small[3], hatch=small[4])
        write_png_fast(layout.preview(case), rgb)
    # Unknown pixels: IGNORE_MASK_VALUE in every class plane, written over the masks (no copy).
    stack = with_ignored(masks, ignored, IGNORE_MASK_VALUE, in_place=True) if n_ignored and not as_runs else masks
    write_mask_stack(layout.masks(case, split), stack, spacing, mapping.names)
    with atomic_path(layout.codes(case)) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, codes=codes, combos=np.array(json.dumps([list(c) for c in combos])),
                     ignored=np.packbits(ignored))
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
                                                "params": to_jsonable(params)},
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
        "ignore_rule": ctx.cut_faces.rule if ctx.cut_faces is not None else None,
        "contrast_suppression": ctx.contrast,
        "unknown_label_values_ignored": list(result.unknown_label_values),
        "render_ms": round(job.render_ms, 1),
        "files": {k: str(p.relative_to(layout.root)) for k, p in {
            "image": layout.image(case, split), "label": layout.label(case, split),
            "masks": layout.masks(case, split), "preview": layout.preview(case)}.items()},
    }
    write_json(layout.sidecar(case), sidecar)  # last: the sample is complete


# Rows per chunk of the render's parallel loop, meant to hand chunks out dynamically. Measured (thread id of
# each row): numba's OpenMP layer, the one installed here, keeps its static split of one contiguous part per
# thread whatever the chunk size; DrrProjector's row order (blocks of rows dealt to the threads in turn) is
# what balances them. The rows are independent: the output does not depend on the scheduling.
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


def _suppress_contrast(loaded) -> dict:
    """The loaded CT made virtual non-contrast (in place of its HU); returns the suppression's report."""
    from .contrast import suppress_contrast

    if loaded.labels is None or not loaded.names:
        return {"suppressed_ml": 0.0, "note": "no label map: nothing to seed the suppression"}
    spacing = np.linalg.norm(loaded.ct.ijk_to_ras[:3, :3], axis=0)
    hu, report = suppress_contrast(loaded.ct.array, loaded.labels.array, loaded.names, spacing)
    loaded.ct = dataclasses.replace(loaded.ct, array=hu) if hu is not loaded.ct.array else loaded.ct
    return report


def _process_ct(task: CtTask, started: float, layout: DatasetLayout, outcomes: list[dict],
                report: dict[str, Any]) -> dict[str, Any]:
    from .labels import LabelClasses
    from .materials import MaterialModel
    from .projector import DrrProjector

    case_in, config, mapping = task.case, task.config, task.mapping
    try:
        loaded = load_case(case_in, mapping)
        contrast = _suppress_contrast(loaded) if config.suppress_contrast else None
        classes_ct = mapping.classes_for(loaded.names) if loaded.labels is not None else LabelClasses(())
        physics_on = config.physics_preset() is not None
        projector = DrrProjector(loaded.ct, loaded.labels, classes_ct if loaded.labels is not None else None,
                                 threads=task.threads, names_table=loaded.names,
                                 materials=MaterialModel() if physics_on else None, device=task.device)
        # The projector keeps its own copy of the voxels: free the CT's and the labels' before anything decodes it.
        loaded.ct, loaded.labels = loaded.ct.grid_only(), None
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
        if config.virtual_patients:  # the base CT only feeds the patients' warps, from its words: keep those only
            projector.drop_palette()
        else:
            projector.release_packed()
        del loaded
        report["notes"] = []
        report["unknown_label_values"] = list(projector.unknown_values)
    except (XraySegError, OSError, ValueError, MemoryError) as error:
        report["error"] = f"{type(error).__name__}: {error}" if not isinstance(error, XraySegError) else str(error)
        return report
    global_index = {name: i for i, name in enumerate(mapping.names)}
    local_to_global = np.array([global_index[c.name] for c in projector.classes.classes], np.int64)
    ctx = _CtContext(layout, case_in, config, mapping, ct_grid, local_to_global, cut_faces, contrast)
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
