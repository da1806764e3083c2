"""Evaluation as the papers report it.

* Per class: Dice, IoU (MONAI ``compute_dice`` / ``compute_iou``) and HD95 in mm (MONAI
  ``compute_hausdorff_distance``, percentile 95, with the pixel spacing). A class absent from both the reference
  and the prediction scores NaN (left out of means); absent from one only: Dice = IoU = 0, HD95 = inf.
* The four scores of the lumbar paper, as defined by Long et al. (FCN, CVPR 2015), on single-label images with
  n_cl classes including background, n_ij = pixels of class i predicted as j, t_i = sum_j n_ij:
  pixel accuracy = sum_i n_ii / sum_i t_i; mean accuracy = (1/n_cl) sum_i n_ii / t_i;
  mean IoU = (1/n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii);
  frequency-weighted IoU = (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii).
  Classes absent from the reference (t_i = 0) are left out of the means (n_cl counts the classes present).
* Vertebrae: per-instance recognition rate. A reference vertebra (a class whose name names a level: L3,
  T12, vertebrae_C7...) is recognised when a connected component of the predicted mask of the same level
  overlaps it with IoU >= 0.5: it is found as its own component, with the right level.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from pathlib import Path

import numpy as np

VERTEBRA_LEVEL = re.compile(r"(?:^|[_\s-])(?:vertebra(?:e)?[_\s-]?)?([CTLS])(\d{1,2})$", re.IGNORECASE)


def vertebra_level(name: str) -> str | None:
    """'L3' for 'vertebrae_L3', 'L3', 'vertebra L3'; None for other classes."""
    match = VERTEBRA_LEVEL.search(name.strip())
    if not match:
        return None
    if not re.search(r"vertebra", name, re.IGNORECASE) and not re.fullmatch(r"[CTLS]\d{1,2}", name.strip(), re.I):
        return None
    return f"{match.group(1).upper()}{int(match.group(2))}"


def per_class_metrics(pred: np.ndarray, ref: np.ndarray, spacing_mm: tuple[float, float] = (1.0, 1.0),
                      hd95: bool = True) -> dict[str, np.ndarray]:
    """Dice, IoU, HD95 (mm) per class for binary (C, H, W) masks; see module docstring for empty classes."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

    p = torch.as_tensor(np.asarray(pred, bool)[None].astype(np.float32))
    r = torch.as_tensor(np.asarray(ref, bool)[None].astype(np.float32))
    dice = compute_dice(p, r, include_background=True, ignore_empty=False)[0].numpy().astype(float)
    iou = compute_iou(p, r, include_background=True, ignore_empty=False)[0].numpy().astype(float)
    p_any = np.asarray(pred, bool).reshape(len(pred), -1).any(1)
    r_any = np.asarray(ref, bool).reshape(len(ref), -1).any(1)
    both_empty = ~p_any & ~r_any
    dice[both_empty] = np.nan
    iou[both_empty] = np.nan
    hd = np.full(len(pred), np.nan)
    if hd95:
        both = p_any & r_any
        if both.any():
            with warnings.catch_warnings():  # MONAI 1.6 warns about its own deprecated internal argument
                warnings.simplefilter("ignore", FutureWarning)
                values = compute_hausdorff_distance(p[:, both], r[:, both], include_background=True,
                                                    percentile=95,
                                                    spacing=[float(spacing_mm[0]), float(spacing_mm[1])])
            hd[both] = values[0].numpy()
        hd[p_any ^ r_any] = np.inf
    return {"dice": dice, "iou": iou, "hd95_mm": hd}


def confusion_matrix(pred_label: np.ndarray, ref_label: np.ndarray, n_classes: int) -> np.ndarray:
    """n[i, j] = pixels of reference class i predicted as j (classes 0..n_classes-1, 0 = background)."""
    index = ref_label.astype(np.int64).ravel() * n_classes + pred_label.astype(np.int64).ravel()
    return np.bincount(index, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def fcn_scores(confusion: np.ndarray) -> dict[str, float]:
    """The four scores of Long et al. 2015 (see module docstring) from a confusion matrix."""
    n = confusion.astype(np.float64)
    t = n.sum(axis=1)
    diag = np.diag(n)
    present = t > 0
    union = t + n.sum(axis=0) - diag
    with np.errstate(divide="ignore", invalid="ignore"):
        iu = diag / union
        acc = diag / t
    return {
        "pixel_accuracy": float(diag.sum() / t.sum()),
        "mean_accuracy": float(np.mean(acc[present])),
        "mean_iou": float(np.mean(iu[present])),
        "frequency_weighted_iou": float((t[present] * iu[present]).sum() / t.sum()),
    }


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), int))
    return labels, int(count)


def largest_component(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    """The largest connected component of ``mask`` (2D or 3D; ``structure`` as in ``scipy.ndimage.label``, face
    neighbours by default); the mask itself when it has at most one component."""
    from scipy import ndimage

    labelled, count = ndimage.label(mask, structure=structure)
    if count <= 1:
        return np.asarray(mask, bool)
    sizes = np.bincount(labelled.ravel())[1:]
    return labelled == int(np.argmax(sizes)) + 1


def vertebra_recognition(pred: np.ndarray, ref: np.ndarray, class_names: list[str],
                         iou_threshold: float = 0.5) -> dict[str, object]:
    """{'recognised': [...levels], 'missed': [...], 'rate': float or NaN} over the vertebra classes present in
    the reference (see module docstring)."""
    recognised, missed = [], []
    for index, name in enumerate(class_names):
        level = vertebra_level(name)
        if level is None or not ref[index].any():
            continue
        gt = ref[index].astype(bool)
        components, count = connected_components(pred[index].astype(bool))
        found = False
        for k in range(1, count + 1):
            component = components == k
            inter = np.logical_and(component, gt).sum()
            if inter and inter / np.logical_or(component, gt).sum() >= iou_threshold:
                found = True
                break
        (recognised if found else missed).append(level)
    total = len(recognised) + len(missed)
    return {"recognised": recognised, "missed": missed, "rate": len(recognised) / total if total else math.nan}


def evaluate_case(pred: np.ndarray, ref: np.ndarray, class_names: list[str],
                  spacing_mm: tuple[float, float] = (1.0, 1.0), hd95: bool = True) -> dict[str, object]:
    """All metrics of one image: per-class arrays, the four FCN scores on the single-label images (later
    classes painted over earlier), and the vertebra recognition."""
    from .dataset import masks_to_label

    per_class = per_class_metrics(pred, ref, spacing_mm, hd95)
    confusion = confusion_matrix(masks_to_label(pred), masks_to_label(ref), len(class_names) + 1)
    return {"per_class": per_class, "fcn": fcn_scores(confusion),
            "vertebrae": vertebra_recognition(pred, ref, class_names),
            "areas_mm2": {"pred": pred.reshape(len(pred), -1).sum(1) * spacing_mm[0] * spacing_mm[1],
                          "ref": ref.reshape(len(ref), -1).sum(1) * spacing_mm[0] * spacing_mm[1]}}


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _nanmedian_hd(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.median(kept)) if kept else math.nan


class EvaluationReport:
    """Collects per-case results; writes ``metrics.csv`` (one row per case and class), ``cases.csv`` (one row
    per case: the four FCN scores, vertebra rate) and ``metrics.md`` (tables per class and per view)."""

    def __init__(self, class_names: list[str]):
        self.class_names = list(class_names)
        self.rows: list[dict] = []
        self.case_rows: list[dict] = []

    def add(self, case_id: str, view: str, result: dict) -> None:
        pc = result["per_class"]
        for index, name in enumerate(self.class_names):
            self.rows.append({"case": case_id, "view": view or "?", "class": name,
                              "dice": float(pc["dice"][index]), "iou": float(pc["iou"][index]),
                              "hd95_mm": float(pc["hd95_mm"][index]),
                              "ref_area_mm2": float(result["areas_mm2"]["ref"][index]),
                              "pred_area_mm2": float(result["areas_mm2"]["pred"][index])})
        self.case_rows.append({"case": case_id, "view": view or "?", **result["fcn"],
                               "mean_dice": _nanmean([float(v) for v in pc["dice"]]),
                               "vertebra_recognition_rate": float(result["vertebrae"]["rate"]),
                               "vertebrae_recognised": " ".join(result["vertebrae"]["recognised"]),
                               "vertebrae_missed": " ".join(result["vertebrae"]["missed"])})

    def per_class(self, view: str | None = None) -> list[dict]:
        out = []
        for name in self.class_names:
            rows = [r for r in self.rows if r["class"] == name and (view is None or r["view"] == view)]
            out.append({"class": name, "n": sum(not math.isnan(r["dice"]) for r in rows),
                        "dice": _nanmean([r["dice"] for r in rows]), "iou": _nanmean([r["iou"] for r in rows]),
                        "hd95_mm_median": _nanmedian_hd([r["hd95_mm"] for r in rows])})
        return out

    def summary(self, view: str | None = None) -> dict[str, float]:
        cases = [c for c in self.case_rows if view is None or c["view"] == view]
        keys = ("pixel_accuracy", "mean_accuracy", "mean_iou", "frequency_weighted_iou", "mean_dice",
                "vertebra_recognition_rate")
        summary = {k: _nanmean([c[k] for c in cases]) for k in keys}
        summary["cases"] = len(cases)
        return summary

    @property
    def views(self) -> list[str]:
        return sorted({r["view"] for r in self.case_rows})

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        from XraySegSimLib.io import atomic_path

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "metrics.csv", "cases_csv": out / "cases.csv", "markdown": out / "metrics.md"}
        for path, rows in ((paths["csv"], self.rows), (paths["cases_csv"], self.case_rows)):
            with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
                if rows:
                    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(rows)
        with atomic_path(paths["markdown"]) as tmp:
            tmp.write_text(self.markdown())
        return paths

    def markdown(self) -> str:
        lines = ["# Evaluation", ""]
        for view in [None, *self.views]:
            title = "All views" if view is None else f"View: {view}"
            s = self.summary(view)
            lines += [f"## {title} ({s['cases']} images)", "",
                      "| class | n | Dice | IoU | HD95 (mm, median) |", "|---|---:|---:|---:|---:|"]
            for row in self.per_class(view):
                lines.append(f"| {row['class']} | {row['n']} | {_fmt(row['dice'])} | {_fmt(row['iou'])} | "
                             f"{_fmt(row['hd95_mm_median'], 2)} |")
            lines += ["", "| pixel accuracy | mean accuracy | mean IoU | f.w. IoU | mean Dice | vertebra recognition |",
                      "|---:|---:|---:|---:|---:|---:|",
                      f"| {_fmt(s['pixel_accuracy'])} | {_fmt(s['mean_accuracy'])} | {_fmt(s['mean_iou'])} | "
                      f"{_fmt(s['frequency_weighted_iou'])} | {_fmt(s['mean_dice'])} | "
                      f"{_fmt(s['vertebra_recognition_rate'])} |", ""]
        lines.append("Scores of Long et al. 2015 on single-label images (background included); Dice/IoU/HD95 "
                     "per class on the overlapping masks (MONAI metrics).")
        return "\n".join(lines) + "\n"
