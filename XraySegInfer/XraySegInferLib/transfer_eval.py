"""Evaluation that measures transfer to bodies a model never saw: leave-one-body-out (LOBO).

Views of one CT share its anatomy, so held-out *views* of a training CT say little about other patients. LOBO
trains once per body B on the views of every other body and tests on all views of B; the per-class Dice of
each fold, and their mean over folds, is the figure that measures transfer. Folds are written as small
datasets of links into the exported one (nothing is copied), trained with :func:`training.train` and
evaluated with :func:`evaluate.evaluate_dataset`, exactly as ``xrayseg train`` and ``xrayseg evaluate`` do.

::

    report = leave_one_body_out("out/export/Dataset601_Chest", "out/lobo", TrainConfig(steps=1500))
    print(report.markdown())   # Dice per class and body, and the mean over bodies
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DatasetError

DATASET_FILES = ("dataset.json", "classes.json", "atoms.json", "export.json")
REPORT_FILE = "lobo.json"


@dataclass
class FoldResult:
    """One fold: trained without ``body``, tested on its ``cases`` views."""

    body: str
    train_bodies: list[str]
    train_images: int
    cases: int
    dice_per_class: dict[str, float]
    mean_dice: float
    train_seconds: float = float("nan")
    model: str = ""


@dataclass
class LoboReport:
    class_names: list[str]
    folds: list[FoldResult] = field(default_factory=list)

    def mean_per_class(self) -> dict[str, float]:
        """Mean over folds of each class's Dice (folds where the class is absent left out)."""
        out = {}
        for name in self.class_names:
            values = [f.dice_per_class.get(name, float("nan")) for f in self.folds]
            values = [v for v in values if v is not None and math.isfinite(v)]
            out[name] = float(np.mean(values)) if values else float("nan")
        return out

    @property
    def mean_dice(self) -> float:
        """Mean over classes of the per-class means over folds."""
        values = [v for v in self.mean_per_class().values() if math.isfinite(v)]
        return float(np.mean(values)) if values else float("nan")

    def to_dict(self) -> dict:
        return {"method": "leave-one-body-out: train without body B, test on every view of B",
                "classes": self.class_names, "mean_dice": _finite(self.mean_dice),
                "mean_dice_per_class": {k: _finite(v) for k, v in self.mean_per_class().items()},
                "folds": [{**f.__dict__, "mean_dice": _finite(f.mean_dice),
                           "train_seconds": _finite(f.train_seconds),
                           "dice_per_class": {k: _finite(v) for k, v in f.dice_per_class.items()}}
                          for f in self.folds]}

    def markdown(self) -> str:
        """A table: one row per class, one column per held-out body, and the mean over bodies."""
        head = "| class | " + " | ".join(f"{f.body} (held out, {f.cases} views)" for f in self.folds) + " | mean |"
        lines = [head, "|---|" + "---:|" * (len(self.folds) + 1)]
        means = self.mean_per_class()
        for name in self.class_names:
            cells = [_fmt(f.dice_per_class.get(name)) for f in self.folds]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt(means[name])} |")
        lines.append("| **mean** | " + " | ".join(f"**{_fmt(f.mean_dice)}**" for f in self.folds)
                     + f" | **{_fmt(self.mean_dice)}** |")
        return "\n".join(lines)

    def write(self, out_dir: str | Path) -> Path:
        from XraySegSimLib.io import atomic_path, write_json

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / REPORT_FILE, self.to_dict())
        with atomic_path(out / "lobo.md") as tmp:
            Path(tmp).write_text(self.markdown() + "\n")
        return out / REPORT_FILE


def _finite(value):
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _fmt(value) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{value:.3f}"


def subset_dataset(dataset, cases: list, out_dir: str | Path) -> Path:
    """A dataset folder holding only ``cases`` (all in imagesTr), as links to the files of ``dataset``; written
    under a temporary name and renamed, so a half-made subset never remains."""
    from .dataset import SPLIT_FOLDERS

    out = Path(out_dir) / dataset.root.name
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in DATASET_FILES:
        if (dataset.root / name).is_file():
            shutil.copyfile(dataset.root / name, staging / name)
    images, labels, masks = SPLIT_FOLDERS["train"]
    for folder in (images, labels, masks, "sidecars"):
        (staging / folder).mkdir()
    for case in cases:
        _link(case.image, staging / images / case.image.name)
        if case.label is not None:
            _link(case.label, staging / labels / case.label.name)
        if case.mask is not None:
            _link(case.mask, staging / masks / case.mask.name)
        if case.sidecar is not None:
            _link(case.sidecar, staging / "sidecars" / case.sidecar.name)
    manifest = dataset.root / "manifest.csv"
    if manifest.is_file():
        wanted = {c.case_id for c in cases}
        with open(manifest, newline="") as handle:
            reader = csv.DictReader(handle)
            rows = [r for r in reader if r.get("case") in wanted]
            fields = reader.fieldnames or []
        with open(staging / "manifest.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fields)
            writer.writeheader()
            writer.writerows(rows)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    return out


def merge_datasets(dataset_dirs: list[str | Path], out_dir: str | Path, name: str | None = None) -> Path:
    """One dataset folder (links, all views in imagesTr) holding the views of several exports of the same classes,
    e.g. one export per CT; the first export's dataset.json and classes are kept. Case ids must not clash."""
    from .dataset import read_dataset

    datasets = [read_dataset(d) for d in dataset_dirs]
    first = datasets[0]
    for other in datasets[1:]:
        if other.class_names != first.class_names:
            raise DatasetError(f"{other.root} has classes {other.class_names}, {first.root} has "
                               f"{first.class_names}; export them with the same --classes")
    cases = [c for d in datasets for c in d.cases]
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise DatasetError("the datasets share case ids; export each CT with its own id")
    target = Path(out_dir)
    root = subset_dataset(first, cases, target)
    if name and root.name != name:
        final = root.with_name(name)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(root, final)
        root = final
    if len(datasets) > 1:
        rows, fields = [], []
        for d in datasets:
            path = d.root / "manifest.csv"
            if path.is_file():
                with open(path, newline="") as handle:
                    reader = csv.DictReader(handle)
                    rows += list(reader)
                    fields += [f for f in reader.fieldnames or [] if f not in fields]
        with open(root / "manifest.csv", "w", newline="") as handle:  # every export's rows
            writer = csv.DictWriter(handle, fields)
            writer.writeheader()
            writer.writerows(rows)
    return root


def _link(source: Path, target: Path) -> None:
    try:
        os.symlink(Path(source).resolve(), target)
    except OSError:  # file systems without symlinks
        shutil.copyfile(source, target)


def leave_one_body_out(dataset_dir: str | Path | list, out_dir: str | Path, config=None, bodies: list[str] | None = None,
                       hd95: bool = False, progress: bool = False, log=print,
                       test_dataset_dir: str | Path | list | None = None) -> LoboReport:
    """Train without each body in turn and test on its views (see module docstring). ``bodies``: the CT ids to
    hold out (default: every CT of the dataset, train and test splits together). ``test_dataset_dir``: take the
    test views of B from this dataset instead (e.g. plain exports, without the training set's virtual patients
    and image-domain randomisation); its CTs must include every held-out body. Writes, under ``out_dir``,
    ``<body>/train`` (the fold's run and model), ``<body>/eval`` (metrics.csv, metrics.md) and lobo.json/lobo.md.
    """
    from .dataset import read_dataset
    from .evaluate import evaluate_dataset
    from .inference import Predictor
    from .training import TrainConfig, train

    config = config or TrainConfig()
    # Merged datasets go in a folder of this call's own (runs for other bodies may share out_dir in parallel).
    tag = "-".join(bodies) if bodies else "all"
    if isinstance(dataset_dir, (list, tuple)):  # one export per body: merged by links
        dataset_dir = (dataset_dir[0] if len(dataset_dir) == 1
                       else merge_datasets(dataset_dir, Path(out_dir) / f"data-{tag}"))
    dataset = read_dataset(dataset_dir)
    tests = dataset
    if test_dataset_dir is not None:
        if isinstance(test_dataset_dir, (list, tuple)):
            test_dataset_dir = (test_dataset_dir[0] if len(test_dataset_dir) == 1
                                else merge_datasets(test_dataset_dir, Path(out_dir) / f"data-test-{tag}"))
        tests = read_dataset(test_dataset_dir)
        if tests.class_names != dataset.class_names:
            raise DatasetError(f"the test dataset's classes {tests.class_names} differ from the training "
                               f"dataset's {dataset.class_names}; export both with the same --classes")
    all_bodies = sorted({c.ct_id for c in dataset.cases})
    if len(all_bodies) < 2:
        raise DatasetError(f"{dataset.root}: leave-one-body-out needs views of at least two CTs; it has "
                           f"{len(all_bodies)} ({', '.join(all_bodies)}); export more CTs into one dataset")
    chosen = bodies or all_bodies
    unknown = [b for b in chosen if b not in all_bodies]
    if unknown:
        raise DatasetError(f"unknown bodies {unknown}; the dataset's CTs are {all_bodies}")
    untested = [b for b in chosen if not any(c.ct_id == b for c in tests.cases)]
    if untested:
        raise DatasetError(f"the test dataset {tests.root} has no views of {untested}; export them too")
    out = Path(out_dir)
    report = LoboReport(dataset.class_names)
    for body in chosen:
        fold = out / body
        train_cases = [c for c in dataset.cases if c.ct_id != body]
        test_cases = [c for c in tests.cases if c.ct_id == body]
        train_root = subset_dataset(dataset, train_cases, fold / "data-train")
        test_root = subset_dataset(tests, test_cases, fold / "data-test")
        log(f"fold {body}: training on {len(train_cases)} views of {sorted({c.ct_id for c in train_cases})}, "
            f"testing on {len(test_cases)} views of {body}")
        package, seconds = _finished_fold(fold / "train", train_cases, config)
        if package is None:
            result = train(train_root, fold / "train", config, progress=progress, log=log)
            package, seconds = result.package, result.seconds
        else:
            log(f"fold {body}: reusing {package} (trained on the same CTs with the same recipe)")
        predictor = Predictor.from_package(package, config.device)
        evaluation = evaluate_dataset(predictor, test_root, fold / "eval", "train", hd95=hd95, progress=progress)
        per_class = {r["class"]: float(r["dice"]) for r in evaluation.per_class()}
        finite = [v for v in per_class.values() if math.isfinite(v)]
        if any(c.ct_id == body for c in train_cases):  # pragma: no cover - guards the split above
            raise AssertionError(f"fold {body} trained on its own views")
        report.folds.append(FoldResult(body, sorted({c.ct_id for c in train_cases}), len(train_cases),
                                       len(test_cases), per_class, float(np.mean(finite)) if finite else math.nan,
                                       seconds, str(package)))
        _merge_saved_folds(report, out)
        report.write(out)  # after every fold: a long run that stops keeps the folds it finished
    return report


def _finished_fold(run: Path, train_cases: list, config) -> tuple[Path | None, float]:
    """(package, NaN) of a fold already trained in ``run`` on exactly these CTs and views with this configuration
    (an interrupted LOBO run, or a fold trained ahead with ``xrayseg train``), else (None, NaN)."""
    from dataclasses import asdict

    card_path = run / "model" / "model.json"
    if not card_path.is_file():
        return None, math.nan
    training = json.loads(card_path.read_text()).get("training", {})
    wanted = json.loads(json.dumps({k: v for k, v in asdict(config).items() if k not in ("device", "threads")}))
    seen = sorted(set(training.get("train_cts", [])) | set(training.get("validation_cts", [])))
    same = (seen == sorted({c.ct_id for c in train_cases})
            and training.get("train_images", 0) + training.get("validation_images", 0) == len(train_cases)
            and training.get("config") == wanted)
    return (run / "model", math.nan) if same else (None, math.nan)  # its time is in its own log


def _merge_saved_folds(report: LoboReport, out: Path) -> None:
    """Add the folds of other bodies already in ``out/lobo.json`` (an earlier or a parallel run with other
    ``bodies`` and the same classes), so that runs per body make one report."""
    path = out / REPORT_FILE
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if saved.get("classes") != report.class_names:
        return
    mine = {f.body for f in report.folds}
    nan = float("nan")
    for entry in saved.get("folds", []):
        if entry.get("body") in mine:
            continue
        report.folds.append(FoldResult(
            entry["body"], list(entry.get("train_bodies", [])), int(entry.get("train_images", 0)),
            int(entry.get("cases", 0)),
            {k: (nan if v is None else float(v)) for k, v in entry.get("dice_per_class", {}).items()},
            nan if entry.get("mean_dice") is None else float(entry["mean_dice"]),
            nan if entry.get("train_seconds") is None else float(entry["train_seconds"]), entry.get("model", "")))
    report.folds.sort(key=lambda f: f.body)


def read_lobo(path: str | Path) -> dict:
    """The lobo.json of a finished run (a folder or the file)."""
    path = Path(path)
    return json.loads((path / REPORT_FILE if path.is_dir() else path).read_text())
