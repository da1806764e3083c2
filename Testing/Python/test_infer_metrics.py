"""Evaluation metrics against hand-computed values on small known masks (XraySegInferLib.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from XraySegInferLib.dataset import masks_to_label
from XraySegInferLib.metrics import (EvaluationReport, confusion_matrix, evaluate_case, fcn_scores,
                                     per_class_metrics, vertebra_level, vertebra_recognition)

REF = np.array([[0, 0, 1, 1],
                [0, 0, 1, 1],
                [2, 2, 0, 0],
                [2, 2, 0, 0]])
PRED = np.array([[0, 1, 1, 1],
                 [0, 0, 1, 1],
                 [2, 2, 2, 0],
                 [0, 2, 0, 0]])


def masks(label: np.ndarray, n: int = 2) -> np.ndarray:
    return np.stack([label == c for c in range(1, n + 1)])


def test_confusion_and_fcn_scores_by_hand():
    n = confusion_matrix(PRED, REF, 3)
    # rows: reference class, columns: predicted class
    assert n.tolist() == [[6, 1, 1], [0, 4, 0], [1, 0, 3]]
    s = fcn_scores(n)
    assert s["pixel_accuracy"] == pytest.approx(13 / 16)
    assert s["mean_accuracy"] == pytest.approx((6 / 8 + 4 / 4 + 3 / 4) / 3)
    iu = [6 / (8 + 7 - 6), 4 / (4 + 5 - 4), 3 / (4 + 4 - 3)]
    assert s["mean_iou"] == pytest.approx(np.mean(iu))
    assert s["frequency_weighted_iou"] == pytest.approx((8 * iu[0] + 4 * iu[1] + 4 * iu[2]) / 16)


def test_classes_absent_from_reference_are_left_out_of_fcn_means():
    n = confusion_matrix(np.array([[0, 3]]), np.array([[0, 0]]), 4)
    s = fcn_scores(n)
    assert s["pixel_accuracy"] == pytest.approx(0.5)
    assert s["mean_accuracy"] == pytest.approx(0.5)  # only background is present
    assert s["mean_iou"] == pytest.approx(0.5)


def test_dice_iou_per_class_by_hand():
    m = per_class_metrics(masks(PRED), masks(REF), hd95=False)
    assert m["dice"] == pytest.approx([2 * 4 / (5 + 4), 2 * 3 / (4 + 4)])
    assert m["iou"] == pytest.approx([4 / 5, 3 / 5])


def test_empty_classes():
    ref = np.zeros((3, 8, 8), bool)
    pred = np.zeros((3, 8, 8), bool)
    ref[1, 2:4, 2:4] = True
    pred[2, 5:7, 5:7] = True
    m = per_class_metrics(pred, ref)
    assert math.isnan(m["dice"][0]) and math.isnan(m["hd95_mm"][0])  # absent from both: left out
    assert m["dice"][1] == 0 and m["iou"][1] == 0 and math.isinf(m["hd95_mm"][1])  # missed
    assert m["dice"][2] == 0 and math.isinf(m["hd95_mm"][2])  # false positive


def test_hd95_uses_the_pixel_spacing_in_mm():
    ref = np.zeros((1, 12, 12), bool)
    pred = np.zeros((1, 12, 12), bool)
    ref[0, 4, 4] = True
    pred[0, 6, 7] = True  # 2 rows down, 3 columns right
    m = per_class_metrics(pred, ref, spacing_mm=(0.5, 2.0))  # (row_mm, col_mm)
    assert m["hd95_mm"][0] == pytest.approx(math.hypot(2 * 0.5, 3 * 2.0), rel=1e-4)
    same = per_class_metrics(ref, ref, spacing_mm=(0.5, 2.0))
    assert same["hd95_mm"][0] == 0 and same["dice"][0] == 1


def test_vertebra_levels_from_names():
    assert vertebra_level("vertebrae_L3") == "L3"
    assert vertebra_level("vertebra T12") == "T12"
    assert vertebra_level("L5") == "L5"
    assert vertebra_level("rib_left_3") is None
    assert vertebra_level("clavicle_left") is None


def test_vertebra_recognition_rate():
    names = ["vertebrae_L1", "vertebrae_L2", "vertebrae_L3", "sacrum"]
    ref = np.zeros((4, 40, 20), bool)
    ref[0, 2:10, 5:15] = ref[1, 12:20, 5:15] = ref[2, 22:30, 5:15] = True
    ref[3, 32:38, 5:15] = True
    pred = np.zeros_like(ref)
    pred[0] = ref[0]                 # L1 found
    pred[2] = ref[1] | ref[2]        # L2 labelled L3 (wrong level): L2 missed; L3 found as its own component
    pred[2, 23:29, 6:14] = True
    result = vertebra_recognition(pred, ref, names)
    assert result["recognised"] == ["L1", "L3"] and result["missed"] == ["L2"]
    assert result["rate"] == pytest.approx(2 / 3)
    # Two vertebrae merged into one component: neither is recognised as its own component.
    merged = np.zeros_like(ref)
    merged[0, 2:30, 5:15] = True
    merged[2, 2:30, 5:15] = True
    assert vertebra_recognition(merged, ref, names)["rate"] == 0


def test_report_tables_per_class_and_view(tmp_path):
    names = ["a", "b"]
    report = EvaluationReport(names)
    report.add("case1", "chest-pa", evaluate_case(masks(PRED), masks(REF), names, (1.0, 1.0)))
    report.add("case2", "chest-lateral", evaluate_case(masks(REF), masks(REF), names, (1.0, 1.0)))
    paths = report.write(tmp_path)
    text = paths["markdown"].read_text()
    assert "## View: chest-pa" in text and "## View: chest-lateral" in text and "| a | 2 |" in text
    rows = paths["csv"].read_text().splitlines()
    assert rows[0].startswith("case,view,class,dice,iou,hd95_mm") and len(rows) == 1 + 4
    lateral = report.summary("chest-lateral")
    assert lateral["pixel_accuracy"] == 1 and lateral["mean_dice"] == 1
    assert report.summary("chest-pa")["pixel_accuracy"] == pytest.approx(13 / 16)
    assert report.per_class()[0]["dice"] == pytest.approx((8 / 9 + 1) / 2)


def test_masks_to_label_paints_later_classes_over_earlier():
    m = np.zeros((2, 2, 2), bool)
    m[0, 0, :] = True
    m[1, :, 0] = True
    assert masks_to_label(m).tolist() == [[2, 1], [2, 0]]
