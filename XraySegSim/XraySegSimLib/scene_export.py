"""Layer 2, the export bridge: realistic-physics preset names for the preview, and the batch export of the scene's
CT and labels (``export.run_export``) after writing them as NRRD."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InputError
from .labels import LabelClasses
from .volume import Volume


def physics_preset_names() -> tuple[str, ...]:
    from . import physics

    return tuple(physics.PRESETS)


def physics_preset_for(view: str, choice: str | None) -> str | None:
    """The ``physics.PRESETS`` name for a preview or an export: ``"none"`` (or None) gives None, ``"auto"``
    the view's own preset (as ``xrayseg export --physics auto``: chest-lateral/chest-ap use chest-pa,
    lumbar-ap/carm-ap use pelvis-ap), a preset name itself. Raises InputError for an unknown name."""
    from .export import ExportConfig

    return ExportConfig(out="", view=view, physics=choice or "none").physics_preset()


def _write_volume_nrrd(path: Path, volume: Volume) -> None:
    """A 3D NRRD (LPS, as Slicer and SimpleITK write it) of a Volume [k, j, i], written atomically."""
    import nrrd

    from .io import RAS_TO_LPS, atomic_path

    matrix = np.asarray(volume.ijk_to_ras, float)
    header = {"space": "left-posterior-superior", "kinds": ["domain"] * 3, "encoding": "raw",
              "space directions": (RAS_TO_LPS @ matrix[:3, :3]).T, "space origin": RAS_TO_LPS @ matrix[:3, 3]}
    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), np.ascontiguousarray(volume.array), header, index_order="C")


def _fingerprint(ct: Volume, labels: Volume, classes: LabelClasses) -> str:
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for volume in (ct, labels):
        digest.update(str((volume.array.shape, volume.array.dtype.str)).encode())
        digest.update(np.ascontiguousarray(volume.ijk_to_ras, np.float64).tobytes())
        digest.update(np.ascontiguousarray(volume.array).data)
    digest.update(json.dumps([[c.name, list(c.values)] for c in classes.classes]).encode())
    return digest.hexdigest()


def _unique_names(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        n = seen.get(name, 0) + 1
        seen[name] = n
        out.append(name if n == 1 else f"{name}_{n}")
    return out


@dataclasses.dataclass
class SceneExportJob:
    """An export of the scene's CT and labels, ready to run here (:meth:`run`) or in a worker process
    (:meth:`to_dict` / :meth:`from_dict`): the inputs are already written as NRRD in the dataset's ``.work``."""
    case: Any
    config: Any
    mapping: Any
    workers: int
    resume: bool
    root: Path
    input_paths: dict[str, Path]
    keep_inputs: bool = False
    created_root: bool = False  # the dataset folder is new: a refusal before the first sample removes it
    config_file: Path | None = None

    def run(self, progress=None, cancel=None):
        """``export.run_export`` on the prepared inputs; removes the NRRD copies once the export is complete."""
        import shutil

        from .export import run_export

        try:
            report = run_export([self.case], self.config, self.mapping, workers=max(1, int(self.workers)),
                                resume=self.resume, progress=progress, cancel=cancel)
        except InputError:
            if self.created_root and not (self.config_file and self.config_file.is_file()):
                shutil.rmtree(self.root, ignore_errors=True)  # refused before anything was exported
            raise
        if not self.keep_inputs and not report.cancelled and \
                report.n_ok == len(report.samples) == self.config.views_per_ct:
            for path in self.input_paths.values():
                path.unlink(missing_ok=True)
        return report

    def to_dict(self) -> dict:
        mapping = self.mapping
        return {"case": self.case.to_dict(), "config": dataclasses.asdict(self.config),
                "mapping": {"names": list(mapping.names), "members": [list(m) for m in mapping.members],
                            "colors": [list(c) for c in mapping.colors],
                            "default_names": {str(k): v for k, v in mapping.default_names.items()},
                            "spec": mapping.spec},
                "workers": int(self.workers), "resume": bool(self.resume), "root": str(self.root),
                "input_paths": {k: str(v) for k, v in self.input_paths.items()}, "keep_inputs": self.keep_inputs,
                "created_root": self.created_root, "config_file": str(self.config_file) if self.config_file else None}

    @classmethod
    def from_dict(cls, data: dict) -> "SceneExportJob":
        from .export import ExportConfig
        from .export_inputs import CaseInput, ClassMapping

        m = data["mapping"]
        config = dict(data["config"])
        config["ranges"] = {k: tuple(v) for k, v in config.get("ranges", {}).items()}
        if config.get("test_ids") is not None:
            config["test_ids"] = tuple(config["test_ids"])
        mapping = ClassMapping(tuple(m["names"]), tuple(tuple(x) for x in m["members"]),
                               tuple(tuple(c) for c in m["colors"]),
                               default_names={int(k): v for k, v in m["default_names"].items()}, spec=m["spec"])
        return cls(CaseInput(**data["case"]), ExportConfig(**config), mapping, data["workers"], data["resume"],
                   Path(data["root"]), {k: Path(v) for k, v in data["input_paths"].items()}, data["keep_inputs"],
                   data.get("created_root", False), Path(data["config_file"]) if data.get("config_file") else None)


def prepare_scene_export(scene, ct_node, labels_node, out: str | Path, view: str = "chest-pa",
                         views_per_ct: int = 10, size: int = 512, physics: str = "auto", seed: int = 0,
                         test_fraction: float = 0.2, workers: int = 1, resume: bool = False,
                         dataset_id: int = 501, dataset_name: str = "XraySeg",
                         keep_inputs: bool = False, virtual_patients: int = 0,
                         domain_randomisation: str = "none", suppress_contrast: bool = False) -> SceneExportJob:
    """Check the options and inputs and write the CT and labels as NRRD into the dataset's ``.work`` (see
    :func:`export_training_set`); returns the job. ``virtual_patients``, ``domain_randomisation`` and
    ``suppress_contrast`` are ``xrayseg export``'s ``--virtual-patients``, ``--domain-randomisation`` and
    ``--suppress-contrast`` (here applied to the CT before it is written, from the labels' segment or class
    names; its report is in dataset.json's class spec). Refused (InputError): as :func:`export_training_set`,
    with nothing left behind."""
    import shutil

    from . import views as views_module
    from .scene_inputs import labels_from_node, volume_from_node  # MRML: the worker process never needs it
    from .export import ExportConfig
    from .export_inputs import CaseInput, ClassMapping, sanitize_id
    from .export_layout import DatasetLayout

    if ct_node is None:
        raise InputError("choose a CT volume to export from")
    if out is None or str(out).strip() in ("", "."):
        raise InputError("choose an output folder for the training set")
    if view not in views_module.PRESETS:
        raise InputError(f"unknown view '{view}'; choose one of: {', '.join(views_module.PRESET_NAMES)}")
    if int(views_per_ct) < 1 or int(size) < 8:
        raise InputError("the export needs at least 1 view per CT and at least 8 pixels")
    if not 0.0 <= float(test_fraction) <= 1.0:
        raise InputError(f"the test fraction must be in [0, 1], got {test_fraction}")
    physics_preset_for(view, physics)  # validates the physics choice
    if labels_node is None:
        raise InputError("choose the bone labels (a segmentation or a label map): a training set needs labels")
    ct = volume_from_node(ct_node)
    labels, classes = labels_from_node(scene, labels_node, ct_node)
    if labels is None or classes is None or not len(classes):
        raise InputError(f"{labels_node.GetName()}: holds no label classes to export")
    contrast = None
    if suppress_contrast:  # from the raw labels, whose organ values the compaction below sets to 0
        from .contrast import suppress_contrast as make_virtual_non_contrast

        named = {int(v): c.name for c in classes.classes for v in c.values}
        if not labels_node.IsA("vtkMRMLSegmentationNode"):  # a label map's other values: as xrayseg export reads
            from .export_inputs import names_table  # them, by the TotalSegmentator v1 table

            named = {**names_table(None), **named}
        hu, contrast = make_virtual_non_contrast(ct.array, labels.array, named,
                                                 np.linalg.norm(ct.ijk_to_ras[:3, :3], axis=0))
        ct = Volume(hu, ct.ijk_to_ras, ct.name)
    # Class i (in the input's order) becomes label value i + 1; values of no class (e.g. the organs of a
    # TotalSegmentator label map) become 0, so the exporter sees exactly the classes the preview shows.
    names = _unique_names(classes.names)
    lut = np.zeros(max(max(c.values) for c in classes.classes) + 1, np.uint16 if len(names) > 255 else np.uint8)
    for index, cls in enumerate(classes.classes, start=1):
        lut[list(cls.values)] = index
    raw = np.asarray(labels.array)
    compact = lut[np.clip(raw, 0, len(lut) - 1)] * (raw < len(lut))
    labels = Volume(compact.astype(lut.dtype, copy=False), labels.ijk_to_ras, labels.name)
    mapping = ClassMapping(tuple(names), tuple((i,) for i in range(1, len(names) + 1)),
                           tuple(tuple(float(x) for x in c.color) for c in classes.classes),
                           default_names={i: n for i, n in enumerate(names, start=1)},
                           spec={"slicer_scene": {"labels": labels_node.GetName(), "classes": names,
                                                  "contrast_suppression": contrast}})
    config = ExportConfig(out=str(out), dataset_id=int(dataset_id), dataset_name=dataset_name, view=view,
                          views_per_ct=int(views_per_ct), size=int(size), physics=physics, seed=int(seed),
                          test_fraction=float(test_fraction), virtual_patients=int(virtual_patients),
                          domain_randomisation=str(domain_randomisation))
    if config.virtual_patients < 0:
        raise InputError(f"virtual patients: {config.virtual_patients}; give 0 (the CT as it is) or a positive count")
    from .domain_randomisation import check_level

    check_level(config.domain_randomisation)  # none, light or strong
    layout = DatasetLayout.create(out, config.dataset_id, config.dataset_name)
    if layout.config.is_file() and not resume:
        raise InputError(f"{layout.root} already holds an export: tick 'Resume' to continue it, or choose another "
                         "output folder")
    created = not layout.root.exists()
    folder = layout.root / ".work" / "scene_inputs"
    record = layout.root / ".work" / "scene_inputs.json"
    fingerprint = _fingerprint(ct, labels, classes)
    if record.is_file():
        previous = json.loads(record.read_text()).get("fingerprint")
        if previous != fingerprint:
            raise InputError(f"{layout.root} holds an export of other inputs (CT, labels or classes changed): "
                             "choose another output folder")
    paths = {"ct": folder / "ct.nrrd", "labels": folder / "labels.nrrd", "names": folder / "names.csv"}
    try:
        if not (record.is_file() and all(p.is_file() for p in paths.values())):
            from .io import atomic_path, write_json

            _write_volume_nrrd(paths["ct"], ct)
            _write_volume_nrrd(paths["labels"], labels)
            with atomic_path(paths["names"]) as tmp:
                with open(tmp, "w", newline="") as handle:
                    writer = csv.writer(handle)
                    writer.writerow(["value", "name"])
                    for index, name in enumerate(names, start=1):
                        writer.writerow([index, name])
            write_json(record, {"fingerprint": fingerprint, "ct_node": ct_node.GetName(),
                                "labels_node": labels_node.GetName(), "classes": names})
        case = CaseInput(sanitize_id(ct_node.GetName() or "ct"), str(paths["ct"]), str(paths["labels"]),
                         str(paths["names"]))
    except InputError:
        if created and not layout.config.is_file():  # refused before anything was exported: leave nothing
            shutil.rmtree(layout.root, ignore_errors=True)
        raise
    return SceneExportJob(case, config, mapping, int(workers), bool(resume), layout.root, paths, keep_inputs,
                          created, layout.config)


def export_training_set(scene, ct_node, labels_node, out: str | Path, view: str = "chest-pa",
                        views_per_ct: int = 10, size: int = 512, physics: str = "auto", seed: int = 0,
                        test_fraction: float = 0.2, workers: int = 1, resume: bool = False,
                        progress: Callable[[int, int, str], None] | None = None,
                        cancel: Callable[[], bool] | None = None, dataset_id: int = 501,
                        dataset_name: str = "XraySeg", keep_inputs: bool = False, virtual_patients: int = 0,
                        domain_randomisation: str = "none", suppress_contrast: bool = False):
    """Batch-export randomised views of the scene's CT with its labels (``export.run_export``, nnU-Net v2
    layout under ``<out>/Dataset<ID>_<Name>``); returns its ``ExportReport``.

    The CT and its labels are converted as :meth:`XraySimScene.render` converts them (world RAS, parent
    transforms applied; a segmentation's segments or a label map's classes, with names and colours), then
    written atomically as NRRD (+ a names table) into the dataset's ``.work/scene_inputs/``, since the exporter
    reads its cases from files (its worker processes get paths, not arrays). The classes of the dataset are
    the input's segments (label maps: its classes), in order. ``progress(done, total, message)`` and
    ``cancel()`` are passed on: a cancelled export stops after the sample in flight and stays resumable
    (``resume=True`` with the same options and inputs; other inputs are refused). On a complete export the
    NRRD copies are removed unless ``keep_inputs``.

    Refused (InputError, nothing written): no CT, no output folder, no labels or no label classes, an unknown
    view or physics preset, fewer than 1 view or 8 pixels, an existing export in the folder without
    ``resume``."""
    job = prepare_scene_export(scene, ct_node, labels_node, out, view, views_per_ct, size, physics, seed,
                               test_fraction, workers, resume, dataset_id, dataset_name, keep_inputs,
                               virtual_patients, domain_randomisation, suppress_contrast)
    return job.run(progress=progress, cancel=cancel)
