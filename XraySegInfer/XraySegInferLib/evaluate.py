"""Evaluate a model package (or any predictor) on a dataset split; writes metrics.csv, cases.csv, metrics.md."""

from __future__ import annotations

from pathlib import Path

from .dataset import read_dataset
from .errors import DatasetError
from .ignore import split_ignore
from .metrics import EvaluationReport, evaluate_case


def evaluate_dataset(predictor, dataset_dir: str | Path, out_dir: str | Path | None = None, split: str = "test",
                     hd95: bool = True, progress: bool = False, val_fraction: float = 0.2,
                     seed: int = 0) -> EvaluationReport:
    """Run ``predictor`` (``inference.Predictor`` or the nnU-Net adapter) on every image of ``split``
    ("test": imagesTs; "val": the held-out CTs of imagesTr, as in training; "train": all of imagesTr) and
    compare with the reference masks. The prediction's classes must match the dataset's, by name."""
    from tqdm.auto import tqdm

    from .reader import read_radiograph

    if split not in ("test", "val", "train"):
        raise DatasetError(f"unknown split {split!r}; choose test, val or train")
    # A dataset may hold only one of imagesTr/imagesTs (a held-out export, a test-only set): only the split
    # asked for must have images.
    dataset = read_dataset(dataset_dir, require="test" if split == "test" else "train")
    names = list(predictor.class_names)
    missing = [n for n in dataset.class_names if n not in names]
    if missing:
        raise DatasetError(f"the model does not predict the dataset's classes {missing}; its classes are {names}")
    order = [names.index(n) for n in dataset.class_names]
    if split == "val":
        cases = dataset.split_by_ct(val_fraction, seed)[1]
        if not cases:
            cts = sorted({c.ct_id for c in dataset.split("train")})
            raise DatasetError(f"{dataset.root}: split 'val' (the held-out CTs of imagesTr) is empty: imagesTr holds "
                               f"{len(cts)} CT(s); use --split train to evaluate on all of imagesTr")
    else:
        cases = dataset.split(split)
    if not cases:
        raise DatasetError(f"{dataset.root}: no images in split '{split}'")
    report = EvaluationReport(dataset.class_names)
    for case in tqdm(cases, disable=not progress, desc="evaluate", unit="image"):
        _, reference, spacing = dataset.load(case)
        prediction = predictor.predict(read_radiograph(case.image), spacing)
        reference, known = split_ignore(reference)  # unknown pixels (truncation) count for nothing
        result = evaluate_case(prediction.masks[order] & known, reference, dataset.class_names, spacing, hd95)
        report.add(case.case_id, case.view, result)
    if out_dir is not None:
        report.write(out_dir)
    return report
