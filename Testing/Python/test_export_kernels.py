"""Batch export (issue 4), its building blocks: the atom table, the fused per-sample kernels against the reference
path, the run-length gzip stream, the reproducible random geometry, the body points and the detector kept beyond
the body."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import grid_volume, voxel_centers_ras, write_image
from XraySegSimLib.export import run_export
from XraySegSimLib.export_geometry import (DETECTOR_CLEARANCE_MM, body_points_ras, keep_detector_beyond_body,
                                           random_geometry, sample_rng)
from XraySegSimLib.export_inputs import CaseInput, load_mapping
from XraySegSimLib.export_gzip import gzip_run_list, gzip_runs, run_list_capacity
from XraySegSimLib.export_layout import atom_table
from XraySegSimLib.export_mask_runs import sample_mask_runs
from XraySegSimLib.export_masks import combination_codes, sample_masks, with_ignored
from XraySegSimLib.export_preview import preview_factor, preview_rgb, thumbnail_inputs, write_png_fast
from test_export import config, read


def test_atoms_round_trip():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 20, 30)) < 0.3
    codes, combos = combination_codes(masks)
    table = atom_table(5, combos)
    atoms = np.array([table[c] for c in combos])[codes]
    inverse = {a: c for c, a in table.items()}
    for c in range(5):
        decoded = np.isin(atoms, [a for a, combo in inverse.items() if c + 1 in combo])
        assert np.array_equal(decoded, masks[c])
    assert table[()] == 0 and all(table[(c,)] == c for c in range(1, 6))
    # more than 64 classes takes the packbits path
    masks = rng.random((70, 8, 9)) < 0.05
    codes, combos = combination_codes(masks)
    rebuilt = np.zeros_like(masks)
    for index, combo in enumerate(combos):
        for c in combo:
            rebuilt[c - 1][codes == index] = True
    assert np.array_equal(rebuilt, masks)


@pytest.mark.parametrize("n_classes", [6, 70])
def test_fused_sample_kernels_equal_the_reference_path(n_classes, tmp_path):
    """sample_masks / preview_rgb / write_png_fast give exactly DrrResult.masks + combination_codes + the LUT
    label image + overlay.overlay_rgb + PIL (<= 64 classes: the bit kernels; beyond: the plane fallback)."""
    from PIL import Image

    from XraySegSimLib.labels import LabelClass, LabelClasses
    from XraySegSimLib.overlay import overlay_rgb

    rng = np.random.default_rng(1)
    local_to_global = np.sort(rng.choice(n_classes, n_classes - 2, replace=False))[::-1].copy()  # not sorted
    thickness = (rng.random((len(local_to_global), 37, 41)) * 3).astype(np.float32)
    thickness[thickness < 2.2] = 0  # sparse, touching blobs
    threshold = 0.7 + 1e-9  # not a float32: compared as float32, like DrrResult.masks
    masks, codes, combos, top, counts, bits = sample_masks(thickness, threshold, local_to_global, n_classes)
    reference = np.zeros((n_classes,) + thickness.shape[1:], np.uint8)
    local = (thickness >= threshold) & (thickness > 0)
    reference[local_to_global] = local
    ref_codes, ref_combos = combination_codes(reference)
    assert masks.dtype == np.uint8 and np.array_equal(masks, reference)
    assert codes.dtype == np.uint16 and np.array_equal(codes, ref_codes) and combos == ref_combos
    ref_top = np.array([c[-1] if c else 0 for c in ref_combos])[ref_codes]
    assert np.array_equal(top, ref_top) and np.array_equal(counts, local.reshape(len(local), -1).sum(1))
    assert (bits is None) == (n_classes > 64)
    if n_classes <= 64:  # class rows marked empty (as DrrResult.class_rows does) are not read
        sparse = thickness.copy()
        empty = rng.random(sparse.shape[:2]) < 0.5
        sparse[empty] = 0
        want = sample_masks(sparse, threshold, local_to_global, n_classes)
        sparse[empty] = 5.0  # would be in the masks if it were read
        got = sample_masks(sparse, threshold, local_to_global, n_classes, rows_hit=(~empty).astype(np.uint8))
        assert got[2] == want[2] and want[0].sum() > 0
        for g, w in zip(got[:2] + got[3:], want[:2] + want[3:]):
            np.testing.assert_array_equal(g, w)
    ignored = rng.random(thickness.shape[1:]) < 0.2
    if n_classes <= 64:  # the ignore value written as the masks are made: with_ignored's stack, the rest unchanged
        fused = sample_masks(thickness, threshold, local_to_global, n_classes, ignored, 255)
        np.testing.assert_array_equal(fused[0], with_ignored(reference, ignored, 255))
        for got, want in zip(fused[1:], (codes, None, top, counts, bits)):
            assert want is None or np.array_equal(got, want)
        assert fused[2] == combos and ignored.sum() > 100
    else:
        with pytest.raises(ValueError):
            sample_masks(thickness, threshold, local_to_global, n_classes, ignored, 255)
    colors = [tuple(rng.random(3)) for _ in range(n_classes)]
    classes = LabelClasses(tuple(LabelClass(f"c{i}", (i + 1,), col) for i, col in enumerate(colors)))
    gray = rng.integers(0, 256, top.shape).astype(np.uint8)
    present = [int(local_to_global[c]) + 1 for c in np.flatnonzero(counts)]
    expected = overlay_rgb(gray, masks.astype(bool), top.astype(np.uint8), classes)
    assert np.array_equal(preview_rgb(gray, masks, top, colors, present, bits), expected)
    assert np.array_equal(preview_rgb(gray, masks, top, colors, present), expected)
    hatched = expected.copy()  # the export's ignored pixels: magenta on every 8th diagonal, 2 pixels wide
    hatched[ignored & (np.add.outer(np.arange(ignored.shape[0]), np.arange(ignored.shape[1])) % 8 < 2)] = (255, 0, 255)
    assert np.array_equal(preview_rgb(gray, masks, top, colors, present, bits, hatch=ignored), hatched)
    assert np.array_equal(preview_rgb(gray, masks, top, colors, present, hatch=ignored), hatched)
    write_png_fast(tmp_path / "p.png", expected)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p.png")), expected)


def test_thumbnail_preview_is_the_overlay_of_the_sampled_labels():
    """A preview reduced by 3: the radiograph's 3 x 3 block means (rounded) under the overlay of the labels
    sampled at the blocks' centres (outlines one pixel wide at the thumbnail's resolution), image cropped."""
    from XraySegSimLib.labels import LabelClass, LabelClasses
    from XraySegSimLib.overlay import overlay_rgb

    # the longer side at most 256 px, the shorter one at least 1 (1000 x 3 would need 4: 3 keeps one pixel)
    assert [preview_factor(s, 256) for s in ((256, 200), (257, 10), (512, 512), (1000, 5), (1000, 3))] == [1, 2, 2, 4, 3]
    assert preview_factor((4000, 4000), 0) == 1
    rng = np.random.default_rng(5)
    thickness = np.where(rng.random((3, 31, 47)) < 0.6, 1.0, 0.0).astype(np.float32)
    masks, codes, combos, top, counts, bits = sample_masks(thickness, 0.5, np.array([2, 0, 1]), 3)
    gray = rng.integers(0, 256, top.shape).astype(np.uint8)
    hatch = rng.random(top.shape) < 0.3
    colors = [tuple(rng.random(3)) for _ in range(3)]
    classes = LabelClasses(tuple(LabelClass(f"c{i}", (i + 1,), col) for i, col in enumerate(colors)))
    small = thumbnail_inputs(3, gray, masks, top, bits, hatch)
    want_gray = np.round(gray[:30, :45].reshape(10, 3, 15, 3).mean(axis=(1, 3)) + 1e-9).astype(np.uint8)
    np.testing.assert_array_equal(small[0], want_gray)
    sampled = (slice(1, 30, 3), slice(1, 45, 3))
    expected = overlay_rgb(want_gray, masks[(Ellipsis,) + sampled].astype(bool), top[sampled], classes)
    stripes = np.add.outer(np.arange(10), np.arange(15)) % 8 < 2
    expected[hatch[sampled] & stripes] = (255, 0, 255)
    present = [int(np.array([2, 0, 1])[c]) + 1 for c in np.flatnonzero(counts)]
    assert np.array_equal(preview_rgb(small[0], None, small[2], colors, present, small[3], hatch=small[4]), expected)
    assert np.array_equal(preview_rgb(small[0], small[1], small[2], colors, present, hatch=small[4]), expected)
    assert thumbnail_inputs(1, gray, masks, top, bits, hatch)[0] is gray


def test_gzip_runs_is_a_standard_gzip_stream():
    import gzip
    import zlib

    rng = np.random.default_rng(2)
    cases = [np.zeros(0, np.uint8), np.ones(1, np.uint8), rng.integers(0, 256, 3001).astype(np.uint8),
             np.repeat(rng.integers(0, 3, 2000), rng.integers(1, 700, 2000)).astype(np.uint8),
             np.zeros((3, 64, 64), np.uint8)]
    for length in list(range(1, 20)) + [255, 256, 257, 258, 259, 260, 261, 262, 516, 517, 518, 519, 100_003]:
        cases += [np.r_[7, np.full(length, 0), 9].astype(np.uint8), np.full(length, 200, np.uint8)]
    for data in cases:
        packed = gzip_runs(data)
        assert gzip.decompress(packed) == data.tobytes() == zlib.decompress(packed, 31)


def test_gzip_run_list_gives_the_bytes_of_gzip_runs():
    """From maximal runs, the very bytes gzip_runs writes for the data they spell (runs up to 100k, any value)."""
    rng = np.random.default_rng(4)
    for trial in range(20):
        n = int(rng.integers(1, 300))
        values = rng.integers(0, 4 if trial % 2 else 256, n).astype(np.uint8)
        values = values[np.r_[True, values[1:] != values[:-1]]]  # maximal: no two neighbours equal
        lengths = rng.choice([1, 2, 3, 15, 16, 17, 257, 258, 259, 261, 100_003], values.size).astype(np.int64)
        assert gzip_run_list(values, lengths) == gzip_runs(np.repeat(values, lengths))
    # The worst runs for the coder (a literal, a 256/257 match and a 3 match, then 258s) stay within the buffer
    # it is given (the kernel has no bounds checks): the deflate block is the stream less its 18 framing bytes.
    for length in (1, 2, 3, 4, 259, 260, 261, 517, 518):
        values = np.arange(5000, dtype=np.int64).astype(np.uint8) % 2
        lengths = np.full(5000, length, np.int64)
        packed = gzip_run_list(values.astype(np.uint8), lengths)
        assert len(packed) - 18 <= run_list_capacity(5000, 5000 * length) - 64
    one_byte, one_run = np.zeros(1, np.uint8), np.ones(1, np.int64)
    for values, lengths, n_runs in ((np.zeros(2, np.uint8), one_run, None),  # more values than lengths
                                    (one_byte, one_run, 2),  # more runs than given
                                    (one_byte, np.zeros(1, np.int64), None), (one_byte, -one_run, None)):  # length < 1
        with pytest.raises(ValueError, match="gzip_run_list needs"):
            gzip_run_list(values, lengths, n_runs)


@pytest.mark.parametrize("trial", range(15))
def test_mask_runs_equal_the_dense_stack(trial):
    """sample_mask_runs: the stack of 0/1 planes (ignore value where ignored) as maximal runs (the same gzip
    bytes), and the codes, combinations, top, counts and bits of a NumPy reference; with and without ignored
    pixels, absent classes, rows marked empty (not read), widths that are not a multiple of 8."""
    rng = np.random.default_rng(100 + trial)
    n_local = int(rng.integers(1, 6))
    n_classes = n_local + int(rng.integers(0, 4))
    rows, cols = int(rng.integers(1, 24)), int(rng.integers(1, 45))
    if trial >= 12:  # 64 classes (bit 63, label 64), rows narrower than a word, an empty image
        n_local, n_classes, rows, cols = ((64, 64, 9, 5), (60, 64, 7, 3), (2, 3, 0, 6))[trial - 12]
    thickness = np.where(rng.random((n_local, rows, cols)) < 0.4, rng.random((n_local, rows, cols)) * 2, 0)
    thickness = thickness.astype(np.float32)
    thickness[:, :, : cols // 3] = 0  # long runs of 0
    local_to_global = rng.permutation(n_classes)[:n_local]
    ignored = rng.random((rows, cols)) < 0.3 if trial % 2 else None
    rows_hit = (thickness > 0).any(axis=2).astype(np.uint8)
    # The reference, in NumPy: 0/1 planes in dataset order, their codes, top class, counts and bit sets.
    local = (thickness >= np.float32(0.5)) & (thickness > 0)
    planes = np.zeros((n_classes, rows, cols), np.uint8)
    planes[local_to_global] = local
    codes, combos = combination_codes(planes)
    top = np.array([c[-1] if c else 0 for c in combos], np.uint8)[codes]
    bits = np.zeros((rows, cols), np.uint64)
    for g in range(n_classes):
        bits |= planes[g].astype(np.uint64) << np.uint64(g)
    stack = planes if ignored is None else with_ignored(planes, ignored, 255)
    thickness[rows_hit == 0] = 9.0  # would be in the masks if it were read
    runs, *rest = sample_mask_runs(thickness, 0.5, local_to_global, n_classes, ignored, 255, rows_hit=rows_hit)
    assert runs.shape == stack.shape and np.array_equal(runs.dense(), stack)
    assert (runs.values[1:] != runs.values[:-1]).all() and (runs.lengths > 0).all()
    assert runs.gzip() == gzip_runs(stack)
    assert rest[1] == combos
    for got, expected in zip(rest[:1] + rest[2:], (codes, top, local.reshape(n_local, -1).sum(axis=1), bits)):
        np.testing.assert_array_equal(got, expected)


def test_random_geometry_is_reproducible_and_recorded():
    cfg = config(Path("/tmp/unused"), view="chest-pa", ranges={})
    g1, v1 = random_geometry(cfg, np.zeros(3), sample_rng(3, "ct", 5))
    g2, v2 = random_geometry(cfg, np.zeros(3), sample_rng(3, "ct", 5))
    g3, _ = random_geometry(cfg, np.zeros(3), sample_rng(3, "ct", 6))
    assert np.allclose(g1.projection_matrix(), g2.projection_matrix()) and v1 == v2
    assert not np.allclose(g1.projection_matrix(), g3.projection_matrix())
    assert g1.spacing[0] == pytest.approx(v1["pixel_spacing_mm"]) and max(g1.size) == 64
    assert g1.source_to_detector_distance == pytest.approx(v1["sdd_mm"])
    assert np.linalg.norm(g1.source - v1["isocenter_ras"]) == pytest.approx(v1["sid_mm"])


def make_deep_phantom(folder: Path, name: str = "deep"):
    """A CT 400 mm deep (A-P) whose body and 'sternum' (TotalSegmentator 116) lie more than 150 mm anterior of
    its centre, i.e. beyond chest-pa's detector plane (SDD 1800, SID 1650) when aimed at the CT centre; a 'spine'
    (38) posterior. Oblique grid, so the body hull is not axis aligned."""
    folder.mkdir(parents=True, exist_ok=True)
    rotation = np.array([[np.cos(0.2), -np.sin(0.2), 0], [np.sin(0.2), np.cos(0.2), 0], [0, 0, 1]])
    volume = grid_volume(np.full((16, 90, 40), -1000.0, np.float32), 5.0, rotation=rotation)
    c = voxel_centers_ras(volume) - volume.center_ras
    body = np.linalg.norm(c / (70, 195, 35), axis=-1) < 1
    sternum = np.linalg.norm(c - (0, 170, 0), axis=-1) < 14
    spine = np.linalg.norm(c - (0, -100, 0), axis=-1) < 14
    volume.array[body] = 40.0
    volume.array[sternum | spine] = 900.0
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[spine], labels[sternum] = 38, 116
    ct = write_image(volume.array, volume.ijk_to_ras, folder / f"{name}_ct.nii.gz")
    lb = write_image(labels, volume.ijk_to_ras, folder / f"{name}_labels.nrrd")
    return volume, ct, lb, body


def test_body_points_hold_the_farthest_body_voxel_in_any_direction(tmp_path):
    from XraySegSimLib.projector import DrrProjector

    volume, _, _, body = make_deep_phantom(tmp_path)
    volume.array[3, 5, 7] = -200.0  # an isolated body voxel in the air counts too
    body[3, 5, 7] = True
    projector = DrrProjector(volume)
    points = body_points_ras(projector.packed, volume.ijk_to_ras)
    centres = voxel_centers_ras(volume)[body]
    assert points.shape[0] == 3 and points.shape[1] <= 2 * 16 * 90 < len(centres)
    for direction in np.random.default_rng(0).normal(size=(50, 3)):
        assert (points.T @ direction).max() == pytest.approx((centres @ direction).max(), abs=1e-9)
    volume.array[:] = -1000.0
    assert body_points_ras(DrrProjector(volume).packed, volume.ijk_to_ras).shape == (3, 0)


def test_detector_inside_the_body_is_pushed_beyond_it(tmp_path):
    """chest-pa aimed at the centre of a CT 200 mm deep anteriorly: the preset's detector (150 mm anterior of the
    isocentre) cuts through the body and the sternum. The export moves the detector back along the principal ray
    (source, isocentre and pixel pitch kept), records it, and the sternum's mask is there."""
    volume, ct, lb, body = make_deep_phantom(tmp_path / "cts")
    case = CaseInput("deep", str(ct), str(lb))
    fixed = {name: (v, v) for name, v in [("lao_deg", 4.0), ("cranial_deg", -3.0), ("roll_deg", 2.0),
                                         ("shift_r_mm", 0.0), ("shift_a_mm", 0.0), ("shift_s_mm", 0.0),
                                         ("sdd_scale", 1.0), ("magnification_scale", 1.0), ("pixel_scale", 1.0)]}
    options = dict(view="chest-pa", views_per_ct=2, size=48, physics="none", isocenter="center",
                   test_fraction=0.0, ranges=fixed)
    mapping = load_mapping("spine = vertebrae_T6; sternum")
    run_export([case], config(tmp_path / "on", **options), mapping)
    run_export([case], config(tmp_path / "off", detector_beyond_body=False, **options), mapping)
    root_on, root_off = tmp_path / "on/Dataset501_XraySeg", tmp_path / "off/Dataset501_XraySeg"
    on = json.loads((root_on / "sidecars/deep_v0000.json").read_text())
    off = json.loads((root_off / "sidecars/deep_v0000.json").read_text())
    masks_on, masks_off = read(root_on / "masksTr/deep_v0000.nrrd"), read(root_off / "masksTr/deep_v0000.nrrd")
    assert masks_off[0].sum() > 0 and masks_off[1].sum() == 0  # the sternum lies beyond the preset's detector
    assert masks_on[0].sum() > 0 and masks_on[1].sum() > 0  # ... and is imaged once the detector moved
    assert on["classes_present"] == [1, 2] and on["projected_pixels"][1] > 0
    push = on["randomization"]["detector_pushed_mm"]
    assert off["randomization"].get("detector_pushed_mm") is None
    g_on, g_off = on["geometry"], off["geometry"]
    assert g_off["source_to_detector_mm"] == pytest.approx(1800.0)
    assert g_on["source_to_detector_mm"] == pytest.approx(1800.0 + push)
    assert on["randomization"]["sdd_final_mm"] == pytest.approx(1800.0 + push)
    assert on["randomization"]["magnification_final"] == pytest.approx((1800.0 + push) / 1650.0)
    assert g_on["source_ras"] == pytest.approx(g_off["source_ras"])  # source, isocentre, pixels kept
    assert g_on["isocenter_ras"] == pytest.approx(g_off["isocenter_ras"])
    assert g_on["detector_spacing_mm"] == g_off["detector_spacing_mm"]
    assert g_on["detector_size_pixels"] == g_off["detector_size_pixels"]
    # just beyond the body: its farthest voxel (centre + half its extent) + the clearance, along the ray
    n = np.array(g_on["detector_center_ras"]) - np.array(g_on["source_ras"])
    n /= np.linalg.norm(n)
    reach = ((voxel_centers_ras(volume)[body] - g_on["source_ras"]) @ n).max() + \
        0.5 * np.abs(volume.ijk_to_ras[:3, :3].T @ n).sum()
    assert 150 < reach - 1650.0 < 200 and push == pytest.approx(reach + DETECTOR_CLEARANCE_MM - 1800.0)
    # deterministic: the same sample again is the same file
    run_export([case], config(tmp_path / "again", **options), mapping)
    again = json.loads((tmp_path / "again/Dataset501_XraySeg/sidecars/deep_v0000.json").read_text())
    assert again["randomization"] == on["randomization"] and again["geometry"] == on["geometry"]
    manifest = list(csv.DictReader((root_on / "manifest.csv").read_text().splitlines()))
    assert [(r["view"], r["view_index"]) for r in manifest] == [("chest-pa", "0"), ("chest-pa", "1")]


def test_keep_detector_beyond_body_leaves_a_clear_geometry_alone():
    cfg = config(Path("/tmp/unused"), view="chest-pa", ranges={})
    geometry, values = random_geometry(cfg, np.zeros(3), sample_rng(3, "ct", 5))
    behind = np.array([[0.0, -50.0], [-300.0, 10.0], [0.0, 20.0]])  # posterior of the detector (anterior)
    kept, kept_values = keep_detector_beyond_body(geometry, values, behind, np.eye(3))
    assert kept is geometry and kept_values == dict(values, detector_pushed_mm=0.0)
    assert keep_detector_beyond_body(geometry, values, np.zeros((3, 0)), np.eye(3))[0] is geometry


def test_ignored_stack_is_the_masks_with_the_ignore_value_in_every_plane():
    rng = np.random.default_rng(3)
    masks = (rng.random((7, 33, 41)) < 0.3).astype(np.uint8)
    ignored = rng.random((33, 41)) < 0.2
    expected = masks.copy()
    expected[:, ignored] = 255
    stack = with_ignored(masks, ignored, 255)
    np.testing.assert_array_equal(stack, expected)
    assert stack[:, ignored].min() == 255 and ignored.sum() > 100
    assert masks.max() == 1  # the masks themselves are left as they are (the preview uses them)
    same = with_ignored(masks, ignored, 255, in_place=True)
    assert same is masks
    np.testing.assert_array_equal(masks, expected)
