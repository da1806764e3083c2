"""Instance-aware vs semantic segmentation of the lumbar spine on radiographs (the lumbar paper's comparison).

Two model families, scored on the same images against per-level reference masks (L1 ... L5, S1):

* **semantic**: one class, "vertebra". Instances are its connected components (8-connectivity, at least
  ``MIN_COMPONENT_FRACTION`` of the median component), ordered from the top of the image (superior) down and given
  the levels in that order, starting at the highest level in the reference. Two vertebrae that merge into one blob
  become one instance, and every level below it shifts: this is the semantic model's typical failure.
* **instance-aware**: one class per level (multi-label, so overlaps survive); the instance of a level is the
  largest connected component of its class.

Matching rule of the **recognition rate**: a reference vertebra counts as recognised when the predicted instance
with *the same level* overlaps it with IoU >= 0.5. Also per level: Dice; and the lumbar paper's four scores (pixel
accuracy, mean accuracy, mean IoU, frequency-weighted IoU) on the label image of the levels (classes: background +
levels), and on the binary vertebra-vs-background image.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import confusion_matrix, connected_components, fcn_scores, largest_component

LEVELS = ("L1", "L2", "L3", "L4", "L5", "S1")
# ``--classes`` spec of a per-level export from TotalSegmentator names (the CTs and the lumbar phantom use them).
LEVEL_CLASSES = "".join(f"{level} = vertebrae_{level}\n" for level in LEVELS)
MIN_COMPONENT_FRACTION = 0.2
IOU_THRESHOLD = 0.5


def level_of(name: str) -> str | None:
    """'vertebrae_L3' / 'L3' -> 'L3'; None for anything else."""
    tail = name.rsplit("_", 1)[-1].upper()
    return tail if tail in LEVELS else None


def semantic_instances(mask: np.ndarray, first_level: str) -> dict[str, np.ndarray]:
    """Levels for the components of a binary vertebra mask, top to bottom from ``first_level``."""
    components, count = connected_components(mask.astype(bool))
    if count == 0:
        return {}
    sizes = np.bincount(components.ravel())[1:]
    keep = [k + 1 for k in range(count) if sizes[k] >= MIN_COMPONENT_FRACTION * np.median(sizes)]
    rows = {k: float(np.argwhere(components == k)[:, 0].mean()) for k in keep}
    ordered = sorted(keep, key=rows.get)
    start = LEVELS.index(first_level)
    return {LEVELS[start + n]: components == k for n, k in enumerate(ordered) if start + n < len(LEVELS)}


def multilabel_instances(masks: np.ndarray, class_names: list[str]) -> dict[str, np.ndarray]:
    """The largest component of each level's class."""
    out = {}
    for mask, name in zip(masks, class_names):
        level = level_of(name)
        if level and mask.any():
            out[level] = largest_component(mask.astype(bool), np.ones((3, 3), int))  # 8-connected, as semantic_instances
    return out


def _label_image(instances: dict[str, np.ndarray], levels: list[str], shape) -> np.ndarray:
    label = np.zeros(shape, np.int32)
    for index, level in enumerate(levels, start=1):
        if level in instances:
            label[instances[level] & (label == 0)] = index
    return label


def score_case(instances: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, Any]:
    """Recognition, Dice per level and confusion matrices of one image (see the module docstring)."""
    levels = [lv for lv in LEVELS if lv in reference]
    shape = next(iter(reference.values())).shape
    recognised, dice = [], {}
    for level in levels:
        ref, pred = reference[level], instances.get(level, np.zeros(shape, bool))
        inter, union = np.logical_and(ref, pred).sum(), np.logical_or(ref, pred).sum()
        total = ref.sum() + pred.sum()
        dice[level] = 2 * inter / total if total else math.nan
        if union and inter / union >= IOU_THRESHOLD:
            recognised.append(level)
    pred_label, ref_label = _label_image(instances, levels, shape), _label_image(reference, levels, shape)
    return {"levels": levels, "recognised": recognised, "dice": dice,
            "confusion_levels": confusion_matrix(pred_label, ref_label, len(levels) + 1),
            "confusion_binary": confusion_matrix((pred_label > 0).astype(int), (ref_label > 0).astype(int), 2)}


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Recognition rate, mean Dice per level, and the four scores over all cases (confusions summed)."""
    total = sum(len(c["levels"]) for c in cases)
    recognised = sum(len(c["recognised"]) for c in cases)
    dice = {lv: float(np.nanmean([c["dice"][lv] for c in cases if lv in c["dice"]]))
            for lv in LEVELS if any(lv in c["dice"] for c in cases)}
    n_levels = max(len(c["levels"]) for c in cases) + 1
    levels_confusion = sum(_pad(c["confusion_levels"], n_levels) for c in cases)
    binary_confusion = sum(c["confusion_binary"] for c in cases)
    return {"images": len(cases), "vertebrae": total,
            "recognition_rate": recognised / total if total else math.nan,
            "mean_dice": float(np.nanmean(list(dice.values()))) if dice else math.nan, "dice": dice,
            "scores_levels": fcn_scores(levels_confusion), "scores_vertebra_vs_background": fcn_scores(binary_confusion)}


def _pad(matrix: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, n), matrix.dtype)
    out[: len(matrix), : len(matrix)] = matrix
    return out


def compare_models(dataset_dir: str | Path, semantic, instance, split: str = "test") -> dict[str, Any]:
    """Score a semantic predictor (one class) and an instance-aware predictor (one class per level) on the
    per-level reference masks of a dataset split. Predictors are ``inference.Predictor``s; ``semantic=None``
    scores the instance-aware one alone."""
    from .dataset import read_dataset
    from .errors import DatasetError
    from .ignore import split_ignore
    from .reader import read_radiograph

    dataset = read_dataset(dataset_dir, require="test" if split == "test" else "train")
    ref_levels = [level_of(n) for n in dataset.class_names]
    if not any(ref_levels):
        raise DatasetError(f"{dataset.root} has no per-level vertebra classes (L1 ... L5, S1)")
    if semantic is not None and len(semantic.class_names) != 1:
        raise DatasetError(f"the semantic model must have one class, it has {semantic.class_names}")
    results: dict[str, list] = {"instance": []} if semantic is None else {"semantic": [], "instance": []}
    for case in dataset.split(split):
        _, masks, spacing = dataset.load(case)
        masks, known = split_ignore(masks)
        reference = {lv: m.astype(bool) & known for lv, m in zip(ref_levels, masks) if lv and m.any()}
        if not reference:
            continue
        radiograph = read_radiograph(case.image)
        first = next(lv for lv in LEVELS if lv in reference)
        if semantic is not None:
            semantic_mask = semantic.predict(radiograph, spacing).masks[0] & known
            results["semantic"].append(score_case(semantic_instances(semantic_mask, first), reference))
        instance_pred = instance.predict(radiograph, spacing)
        results["instance"].append(score_case(
            multilabel_instances(instance_pred.masks & known, list(instance.class_names)), reference))
    if not results["instance"]:
        raise DatasetError(f"{dataset.root}: no image of split '{split}' shows a labelled vertebra")
    return {family: summarise(cases) for family, cases in results.items()}


def markdown_table(summary: dict[str, Any]) -> str:
    """The paper's table: one row per model family."""
    head = ("| model | pixel acc. | mean acc. | mean IoU | f.w. IoU | recognition rate | mean Dice | "
            + " | ".join(f"Dice {lv}" for lv in LEVELS if lv in summary["instance"]["dice"]) + " |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for family in (f for f in ("semantic", "instance") if f in summary):
        s = summary[family]
        scores = s["scores_levels"]
        cells = [family, *(f"{scores[k]:.3f}" for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou")),
                 f"{s['recognition_rate']:.3f}", f"{s['mean_dice']:.3f}",
                 *(f"{s['dice'].get(lv, math.nan):.3f}" for lv in LEVELS if lv in summary["instance"]["dice"])]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def semantic_dataset(source: str | Path, out_dir: str | Path, name: str = "vertebra") -> Path:
    """A copy of a per-level dataset with one class, ``name`` = the union of its classes: the same images
    (hard links), masks and labels merged, unknown pixels kept unknown, the same manifest and sidecars. Both model
    families then train on exactly the same images."""
    import json
    import os
    import shutil

    import nrrd

    from .dataset import SPLIT_FOLDERS, find_dataset_folder, read_dataset
    from .ignore import IGNORE_VALUE

    src = find_dataset_folder(source)
    dataset = read_dataset(src)
    dst = Path(out_dir) / f"{src.name}_{name}"
    if dst.exists():
        shutil.rmtree(dst)
    for images, labels, masks in SPLIT_FOLDERS.values():
        for sub in (images, labels, masks):
            (dst / sub).mkdir(parents=True, exist_ok=True)
    for extra in ("sidecars", "manifest.csv", "export.json"):
        if (src / extra).is_dir():
            shutil.copytree(src / extra, dst / extra)
        elif (src / extra).is_file():
            shutil.copy2(src / extra, dst / extra)
    ending = dataset.dataset_json.get("file_ending", ".nrrd")
    for case in dataset.cases:
        images, labels, masks = SPLIT_FOLDERS[case.split]
        os.link(case.image, dst / images / case.image.name)
        _, stack, _ = dataset.load(case)
        unknown = (stack == IGNORE_VALUE).any(axis=0)
        union = ((stack == 1).any(axis=0) & ~unknown).astype(np.uint8)
        _, header = nrrd.read(str(case.image), index_order="C")
        plane = {k: v for k, v in header.items() if k in ("space dimension", "space directions", "space origin")}
        plane.update(encoding="gzip", kinds=["domain", "domain"])
        nrrd.write(str(dst / masks / f"{case.case_id}{ending}"), np.where(unknown, IGNORE_VALUE, union).astype(np.uint8),
                   plane, index_order="C")
        nrrd.write(str(dst / labels / f"{case.case_id}{ending}"), np.where(unknown, 2, union).astype(np.uint8),
                   plane, index_order="C")
    meta = {k: v for k, v in dataset.dataset_json.items() if k not in ("labels", "regions_class_order")}
    meta["labels"] = {"background": 0, name: 1, "ignore": 2}
    meta["name"] = f"{dataset.dataset_json.get('name', src.name)} ({name}: union of {len(dataset.classes)} classes)"
    (dst / "dataset.json").write_text(json.dumps(meta, indent=2))
    (dst / "classes.json").write_text(json.dumps({"classes": [{"index": 1, "name": name,
                                                                "color_rgb": [0.9, 0.85, 0.3],
                                                                "members": dataset.class_names}]}, indent=2))
    return dst
