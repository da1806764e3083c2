"""XraySegInfer's outputs in a real MRML scene (slicer-core, headless): the radiograph with the segmentation overlay
in an offscreen slice view (Testing/Artifacts/; `make screenshots` copies it into the README's pictures), and the
batch segmentation of a folder to .seg.nrrd files and a summary table, cancelled and resumed."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
torch = pytest.importorskip("torch")

from XraySegInferLib.synthetic import CLASS_NAMES, COLORS  # noqa: E402
from XraySegSimLib.mrml_adapter import array_from_vtk_matrix  # noqa: E402
from test_infer_slicer import (  # noqa: E402,F401 (predictor and the tiny_model it uses: fixtures)
    DICE_FLOOR, add_radiograph, dice, phantom_drr, predictor, segment_arrays, tiny_model)


# ---- the overlay in a slice view ----------------------------------------------------------------------------


def test_slice_view_shows_the_radiograph_with_the_overlay(app, predictor, artifacts_dir):
    from scipy import ndimage

    from XraySegInferLib.mrml_adapter import segment_radiograph, show_in_slice_view

    image, truth, geometry = phantom_drr(size=128)
    ijk_to_ras = geometry.detector_ijk_to_ras()
    node = add_radiograph(app.scene, image, ijk_to_ras)
    node.GetDisplayNode().AutoWindowLevelOff()
    node.GetDisplayNode().SetWindowLevelMinMax(0.0, 1.0)
    result = segment_radiograph(app.scene, node, predictor)
    view = app.slice_view("Red", size=(360, 360))
    show_in_slice_view(view.node, view.composite_node, node)
    path = artifacts_dir / "xrayseginfer_slice_view.png"
    rgb = view.capture(path).astype(int)
    assert path.stat().st_size < 100_000  # small enough for the README (make screenshots)
    # Screen pixel -> image pixel (i, j).
    xy_to_ras = array_from_vtk_matrix(view.node.GetXYToRAS())
    height, width = rgb.shape[:2]
    y, x = np.indices((height, width))
    xy = np.stack([x, height - 1 - y, np.zeros_like(x), np.ones_like(x)], -1).astype(float)
    ijk = (xy @ (np.linalg.inv(ijk_to_ras) @ xy_to_ras).T)[..., :2]
    ij = np.round(ijk).astype(int)
    inside = (ij[..., 0] >= 0) & (ij[..., 0] < 128) & (ij[..., 1] >= 0) & (ij[..., 1] < 128)
    assert inside.mean() > 0.9, "the radiograph should fill the view"
    masks = np.stack(segment_arrays(result.segmentation)[0])
    cores = np.stack([ndimage.binary_erosion(m, iterations=2) for m in masks])  # away from the outlines
    shown = np.zeros((3,) + rgb.shape[:2], bool)
    shown[:, inside] = cores[:, ij[inside][:, 1], ij[inside][:, 0]]
    others = np.zeros_like(shown[0])
    gray_only = inside.copy()
    gray_only[inside] = ~ndimage.binary_dilation(masks.any(0), iterations=2)[ij[inside][:, 1], ij[inside][:, 0]]
    spread = rgb[gray_only].max(-1) - rgb[gray_only].min(-1)
    assert np.median(spread) <= 2, "pixels away from the bones show the gray radiograph"
    for k, color in enumerate(COLORS):
        only = shown[k] & ~np.delete(shown, k, axis=0).any(0) & ~others
        assert only.sum() > 200, f"{CLASS_NAMES[k]}: too few screen pixels"
        tint = rgb[only].mean(0) - rgb[only].mean()  # the overlay's tint over the gray image
        expected = np.array(color) - np.mean(color)
        assert np.dot(tint, expected) / (np.linalg.norm(tint) * np.linalg.norm(expected)) > 0.9, \
            f"{CLASS_NAMES[k]} pixels are tinted {tint}, not like its colour {color}"


# ---- batch ----------------------------------------------------------------------------------------------------


def _write_nrrd(path: Path, image: np.ndarray, ijk_to_ras: np.ndarray) -> None:
    import SimpleITK as sitk

    itk = sitk.GetImageFromArray(image[None].astype(np.float32))
    lps = np.diag([-1.0, -1.0, 1.0]) @ ijk_to_ras[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    itk.SetSpacing(spacing.tolist())
    itk.SetDirection((lps[:, :3] / spacing).ravel().tolist())
    itk.SetOrigin(lps[:, 3].tolist())
    sitk.WriteImage(itk, str(path))


def test_batch_writes_seg_nrrd_and_summary_cancels_and_resumes(tmp_path, predictor, app):
    from XraySegInferLib.mrml_adapter import table_from_csv
    from XraySegInferLib.runner import run_batch

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    truths, placements = {}, {}
    for index, angles in enumerate([(0.0, 0.0), (15.0, -5.0), (-20.0, 8.0)]):
        image, truth, geometry = phantom_drr(angles=angles, seed=50 + index)
        placements[f"case{index}.nrrd"] = geometry.detector_ijk_to_ras()
        truths[f"case{index}.nrrd"] = truth
        _write_nrrd(folder / f"case{index}.nrrd", image, geometry.detector_ijk_to_ras())
    (folder / "broken.png").write_bytes(b"not a png")
    calls = []

    def cancel_after_first_file():
        return len(list(out.glob("*.seg.nrrd"))) >= 1

    report = run_batch(predictor, folder, out, progress=lambda f, m: calls.append(f), cancel=cancel_after_first_file)
    # Sorted: broken.png fails (reported, the batch goes on), case0 is written, then the cancel lands.
    assert report.cancelled and report.done == ["case0.nrrd"] and list(report.failed) == ["broken.png"]
    assert calls == sorted(calls) and calls[-1] == 1.0
    assert sorted(p.name for p in out.glob("*.seg.nrrd")) == ["case0.seg.nrrd"]
    assert not list(out.glob(".*.part"))  # nothing half-written
    report = run_batch(predictor, folder, out, resume=True)
    assert not report.cancelled and report.skipped == ["case0.nrrd"]
    assert sorted(report.done) == ["case1.nrrd", "case2.nrrd"] and list(report.failed) == ["broken.png"]
    with open(report.summary_csv, newline="") as handle:
        rows = {r["file"]: r for r in csv.DictReader(handle)}
    assert rows["broken.png"]["status"] == "error" and "not a readable image" in rows["broken.png"]["message"]
    for name, truth in truths.items():
        row = rows[name]
        assert row["status"] == "ok" and row["output"] == name.replace(".nrrd", ".seg.nrrd")
        # The .seg.nrrd loads in Slicer on the radiograph's grid, with names, colours, terminology.
        storage = app.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
        storage.SetFileName(str(out / row["output"]))
        seg = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        assert storage.ReadData(seg)
        masks, matrices = segment_arrays(seg)
        np.testing.assert_allclose(matrices[0], placements[name], atol=1e-5)
        segment = seg.GetSegmentation().GetNthSegment(0)
        assert segment.GetName() == "spine" and "421060004" in segment.GetTerminology()
        assert np.mean([dice(m, t) for m, t in zip(masks, truth)]) > DICE_FLOOR
        spacing = np.linalg.norm(placements[name][:3, :2], axis=0)
        assert float(row["spine_area_mm2"]) == pytest.approx(masks[0].sum() * spacing.prod(), rel=1e-3)
        assert 0.5 < float(row["sternum_confidence"]) <= 1.0
    table = table_from_csv(app.scene, report.summary_csv)
    assert table.GetTable().GetNumberOfRows() == 4
