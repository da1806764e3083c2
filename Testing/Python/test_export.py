"""Batch export (issue 4): the nnU-Net v2 layout and region encoding, split by CT, resume after a real kill,
bad inputs, the Dask backend, progress and cancel. Small phantoms (64 px) keep it fast."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import grid_volume, voxel_centers_ras, write_image
from XraySegSimLib.errors import InputError
from XraySegSimLib.export import ExportConfig, run_export
from XraySegSimLib.export_geometry import (DETECTOR_CLEARANCE_MM, body_points_ras, keep_detector_beyond_body,
                                           random_geometry, sample_rng)
from XraySegSimLib.export_inputs import (CaseInput, discover_folder, load_mapping, read_pairs_csv)
from XraySegSimLib.export_gzip import gzip_runs
from XraySegSimLib.export_layout import atom_table
from XraySegSimLib.export_masks import combination_codes, sample_masks
from XraySegSimLib.export_preview import preview_rgb, write_png_fast
from XraySegSimLib.seg_nrrd import read_seg_nrrd

REPO = Path(__file__).resolve().parents[2]
# TotalSegmentator v1 values: vertebrae_T6 = 38, sternum = 116, rib_left_5 = 96; liver = 5 (not a bone)
MAPPING = "spine = vertebrae_T6; sternum; ribs = rib_left_*"


def make_phantom(folder: Path, name: str, shift=(0.0, 0.0, 0.0), flip=False, extra_label: int | None = None):
    """A CT (NIfTI) with a 'spine', a 'sternum' and a 'rib' that overlap in AP projection, and its label map."""
    folder.mkdir(parents=True, exist_ok=True)
    volume = grid_volume(np.full((40, 48, 56), -1000.0, np.float32), 2.0, center_ras=shift)
    c = voxel_centers_ras(volume) - volume.center_ras
    body = np.linalg.norm(c / (50, 40, 38), axis=-1) < 1
    sternum = np.linalg.norm(c - (0, 25, 0), axis=-1) < 9
    spine = np.linalg.norm(c[..., :2] - (0, -18), axis=-1) < 10
    rib = (np.abs(c[..., 2] - 6) < 4) & (np.abs(c[..., 0] + 4) < 30) & (np.abs(c[..., 1] + 10) < 4)
    volume.array[body] = 40.0
    volume.array[sternum | spine | rib] = 900.0
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[body & (c[..., 0] > 25)] = 5
    labels[spine] = 38
    labels[sternum] = 116
    labels[rib] = 96
    if extra_label is not None:
        labels[sternum & (c[..., 2] > 3)] = extra_label
    array, lab = volume.array, labels
    if flip:
        array, lab = array[:, :, ::-1].copy(), lab[:, :, ::-1].copy()
        m = volume.ijk_to_ras.copy()
        m[:3, 3] = m[:3, :3] @ [array.shape[2] - 1, 0, 0] + m[:3, 3]
        m[:3, 0] *= -1
        volume = type(volume)(array, m, "phantom")
    ct = write_image(array, volume.ijk_to_ras, folder / f"{name}_ct.nii.gz")
    lb = write_image(lab, volume.ijk_to_ras, folder / f"{name}_labels.nrrd")
    return ct, lb


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cts")
    a = make_phantom(folder, "alpha")
    b = make_phantom(folder, "beta", shift=(10, -5, 8), flip=True)
    return folder, [CaseInput("alpha", str(a[0]), str(a[1])), CaseInput("beta", str(b[0]), str(b[1]))]


def config(out: Path, **changes) -> ExportConfig:
    base = dict(out=str(out), view="chest-ap", views_per_ct=3, size=64, physics="none", seed=7,
                test_fraction=0.5, ranges={"lao_deg": (-10, 10)})
    base.update(changes)
    return ExportConfig(**base)


def read(path: Path) -> np.ndarray:
    return nrrd.read(str(path), index_order="C")[0]


def all_arrays(root: Path) -> dict[str, np.ndarray]:
    out = {}
    for folder in ("imagesTr", "imagesTs", "labelsTr", "labelsTs", "masksTr", "masksTs"):
        for p in sorted((root / folder).glob("*.nrrd")):
            out[f"{folder}/{p.name}"] = read(p)
    return out


def check_nnunet_schema(data: dict, n_classes: int) -> None:
    """nnU-Net v2 dataset.json for region-based training (documentation/dataset_format.md,
    region_based_training.md): required keys; background 0; each region a list of label ints; regions_class_order
    one entry per region; all label ints consecutive from 0."""
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        assert key in data
    assert data["labels"]["background"] == 0
    regions = [v for k, v in data["labels"].items() if k not in ("background", "ignore")]
    assert len(regions) == n_classes and all(isinstance(r, list) and r for r in regions)
    assert len(data["regions_class_order"]) == len(regions)
    values = sorted({0} | {int(v) for r in regions for v in r})
    assert values == list(range(len(values)))
    if "ignore" in data["labels"]:  # truncated pixels (the spine runs through the CT's end faces): the highest value
        assert data["labels"]["ignore"] == len(values)


# ---------------------------------------------------------------------------------------------------------------


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
    colors = [tuple(rng.random(3)) for _ in range(n_classes)]
    classes = LabelClasses(tuple(LabelClass(f"c{i}", (i + 1,), col) for i, col in enumerate(colors)))
    gray = rng.integers(0, 256, top.shape).astype(np.uint8)
    present = [int(local_to_global[c]) + 1 for c in np.flatnonzero(counts)]
    expected = overlay_rgb(gray, masks.astype(bool), top.astype(np.uint8), classes)
    assert np.array_equal(preview_rgb(gray, masks, top, colors, present, bits), expected)
    assert np.array_equal(preview_rgb(gray, masks, top, colors, present), expected)
    write_png_fast(tmp_path / "p.png", expected)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p.png")), expected)


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


@pytest.mark.slow
def test_export_two_cts_is_a_valid_nnunet_dataset(inputs, tmp_path):
    _, cases = inputs
    mapping = load_mapping(MAPPING)
    seen = []
    report = run_export(cases, config(tmp_path, physics="auto"), mapping,
                        progress=lambda d, t, m: seen.append((d, t)))
    root = tmp_path / "Dataset501_XraySeg"
    assert report.n_ok == 6 and not report.failed_cts
    assert seen[-1] == (6, 6) and all(b >= a for (a, _), (b, _) in zip(seen, seen[1:]))
    data = json.loads((root / "dataset.json").read_text())
    check_nnunet_schema(data, 3)
    assert data["channel_names"] == {"0": "radiograph"} and data["file_ending"] == ".nrrd"
    assert data["numTraining"] == 3 and data["regions_class_order"] == [1, 2, 3]
    classes = json.loads((root / "classes.json").read_text())["classes"]
    assert [c["name"] for c in classes] == ["spine", "sternum", "ribs"]
    assert classes[0]["label_values"] == [38] and len(classes[0]["color_rgb"]) == 3
    atoms = {int(k): v for k, v in json.loads((root / "atoms.json").read_text())["atoms"].items()}
    # split by CT: every view of a CT in one split, both splits used
    rows = list(csv.DictReader((root / "manifest.csv").read_text().splitlines()))
    splits = {}
    for row in rows:
        splits.setdefault(row["ct_id"], set()).add(row["split"])
        assert row["status"] == "ok"
        # the view preset's name (what evaluation groups by, what training's lateral-flip guard reads); the index
        # of the sample within its CT is view_index
        assert row["view"] == "chest-ap" and row["case"].endswith(f"_v{int(row['view_index']):04d}")
    assert list(rows[0]) == ["case", "ct_id", "split", "view", "view_index", "status", "message"]
    assert sorted(int(r["view_index"]) for r in rows) == [0, 0, 1, 1, 2, 2]
    assert all(len(s) == 1 for s in splits.values()) and {next(iter(s)) for s in splits.values()} == {"train", "test"}
    overlap_seen = False
    for row in rows:
        case, split = row["case"], row["split"]
        sfx = "Tr" if split == "train" else "Ts"
        image = sitk.ReadImage(str(root / f"images{sfx}/{case}_0000.nrrd"))
        label = sitk.ReadImage(str(root / f"labels{sfx}/{case}.nrrd"))
        sidecar = json.loads((root / f"sidecars/{case}.json").read_text())
        assert image.GetDimension() == 2 and image.GetSize() == label.GetSize() == tuple(sidecar["size"])
        assert np.allclose(image.GetSpacing(), sidecar["spacing_mm"]) and np.allclose(label.GetSpacing(),
                                                                                      sidecar["spacing_mm"])
        pixels = sitk.GetArrayFromImage(image)
        assert pixels.dtype == np.float32 and 0 <= pixels.min() and pixels.max() <= 1 and pixels.std() > 0.05
        masks = read(root / f"masks{sfx}/{case}.nrrd")
        assert masks.shape == (3,) + pixels.shape and masks.dtype == np.uint8
        atom_image = sitk.GetArrayFromImage(label)
        for c in range(3):  # the atoms decode to exactly the mask stack
            assert np.array_equal(np.isin(atom_image, [a for a, cl in atoms.items() if c + 1 in cl]), masks[c] == 1)
        ignored = masks[0] == 255  # truncated pixels: 255 in every plane, the ignore label in labelsTr
        assert (masks[:, ignored] == 255).all() and (atom_image[ignored] == data["labels"].get("ignore", -1)).all()
        overlap_seen |= bool(((masks == 1).sum(0) > 1).any())
        P = np.array(sidecar["geometry"]["P"] if "P" in sidecar["geometry"] else sidecar["geometry"]["projection_matrix"])
        assert P.shape == (3, 4)
        assert sidecar["physics"]["preset"] == "chest-pa" and "kvp" in json.dumps(sidecar["physics"])
        assert set(sidecar["randomization"]) >= {"lao_deg", "sdd_mm", "pixel_spacing_mm", "shift_r_mm"}
        assert sidecar["randomization"]["detector_pushed_mm"] == 0.0  # this phantom stays in front of it
        assert sidecar["view_index"] == int(row["view_index"])
        assert (root / f"previews/{case}.png").is_file()
    assert overlap_seen and max(atoms) > 3  # spine/sternum/rib overlap in AP: combination atoms exist
    assert not list(root.rglob("*.part"))
    try:
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    except Exception as error:  # pragma: no cover - nnunetv2 not installed: the schema check above stands
        pytest.skip(f"nnunetv2 not importable ({error}); checked against the documented schema only")
    verify_dataset_integrity(str(root), 1)


def test_inputs_folder_csv_seg_nrrd_and_json_mapping(inputs, tmp_path):
    folder, cases = inputs
    found = discover_folder(folder)
    assert [c.ct_id for c in found] == ["alpha", "beta"] and found[0].labels.endswith("alpha_labels.nrrd")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"ct,labels,id,split\n{cases[0].ct},{cases[0].labels},a-1,test\n{cases[1].ct},{cases[1].labels},,\n")
    read_back = read_pairs_csv(pairs)
    assert [(c.ct_id, c.split) for c in read_back] == [("a_1", "test"), ("beta_ct", None)]
    # a cropped Slicer segmentation (.seg.nrrd, 2 layers, overlapping segments) is placed back on the CT grid
    ct = sitk.ReadImage(cases[0].ct)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(cases[0].labels))
    k, j, i = np.nonzero(np.isin(labels, [38, 116, 96]))
    crop = (slice(k.min(), k.max() + 1), slice(j.min(), j.max() + 1), slice(i.min(), i.max() + 1))
    layer0 = (labels[crop] == 38).astype(np.uint8) + 2 * (labels[crop] == 116)
    layer1 = (labels[crop] == 96).astype(np.uint8)
    stack = np.stack([layer0, layer1], axis=-1)  # [k, j, i, layer]
    lps = np.array(ct.GetDirection()).reshape(3, 3) * np.array(ct.GetSpacing())
    origin = np.array(ct.GetOrigin()) + lps @ [i.min(), j.min(), k.min()]
    header = {"kinds": ["list", "domain", "domain", "domain"], "space": "left-posterior-superior",
              "space directions": np.vstack([np.full(3, np.nan), lps.T]), "space origin": origin,
              "Segment0_Name": "vertebrae_T6", "Segment0_Layer": "0", "Segment0_LabelValue": "1",
              "Segment1_Name": "sternum", "Segment1_Layer": "0", "Segment1_LabelValue": "2",
              "Segment2_Name": "rib_left_5", "Segment2_Layer": "1", "Segment2_LabelValue": "1"}
    seg_path = tmp_path / "alpha.seg.nrrd"
    nrrd.write(str(seg_path), np.ascontiguousarray(stack), header, index_order="C")
    seg = read_seg_nrrd(seg_path)
    assert seg.names == {1: "vertebrae_T6", 2: "sternum", 3: "rib_left_5"}
    mapping_file = tmp_path / "mapping.json"
    mapping_file.write_text(json.dumps({"classes": [{"name": "spine", "labels": ["vertebrae_T6"]},
                                                    {"name": "sternum", "labels": ["sternum"], "color": [1, 0, 0]},
                                                    {"name": "ribs", "labels": ["rib_left_1..12"]}]}))
    mapping = load_mapping(str(mapping_file))
    assert mapping.names == ("spine", "sternum", "ribs") and mapping.colors[1] == (1.0, 0.0, 0.0)
    out = tmp_path / "out"
    run_export([CaseInput("from_nifti", cases[0].ct, cases[0].labels), CaseInput("from_seg", cases[0].ct,
                                                                                 str(seg_path))],
               config(out, views_per_ct=1, test_fraction=0.0, ranges={}, randomize_geometry=False), mapping)
    root = out / "Dataset501_XraySeg"
    a, b = read(root / "masksTr/from_nifti_v0000.nrrd"), read(root / "masksTr/from_seg_v0000.nrrd")
    assert a.sum() > 0 and np.array_equal(a, b)  # same labels through both readers, same grid


def test_bad_inputs_are_reported_and_the_rest_goes_on(inputs, tmp_path):
    folder, cases = inputs
    other = tmp_path / "other"
    ct_small, _ = make_phantom(other, "small")
    big = grid_volume(np.zeros((10, 12, 14), np.uint8), 3.0)
    mismatched = write_image(big.array, big.ijk_to_ras, other / "mismatched_labels.nrrd")
    unknown_ct, unknown_labels = make_phantom(other, "unknown", extra_label=250)  # 250: not in the v1 table
    bad = [cases[0],
           CaseInput("missing", str(tmp_path / "nope.nii.gz"), str(cases[0].labels)),
           CaseInput("mismatch", str(ct_small), str(mismatched)),
           CaseInput("unknown", str(unknown_ct), str(unknown_labels))]
    report = run_export(bad, config(tmp_path, views_per_ct=1, test_fraction=0.0), load_mapping(MAPPING))
    root = tmp_path / "Dataset501_XraySeg"
    assert set(report.failed_cts) == {"missing", "mismatch"}
    assert "not found" in report.failed_cts["missing"] and "grid" in report.failed_cts["mismatch"]
    rows = {r["ct_id"]: r for r in csv.DictReader((root / "manifest.csv").read_text().splitlines())}
    assert rows["missing"]["status"] == "failed" and rows["missing"]["view"] == rows["missing"]["view_index"] == ""
    assert rows["alpha"]["status"] == "ok" and rows["unknown"]["status"] == "ok"
    assert "250" in rows["unknown"]["message"]
    assert json.loads((root / "sidecars/unknown_v0000.json").read_text())["unknown_label_values_ignored"] == [250]
    assert json.loads((root / "dataset.json").read_text())["numTraining"] == 2


def test_full_disk_is_refused_up_front(inputs, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**5, 10**5))
    with pytest.raises(InputError, match="not enough disk space"):
        run_export(inputs[1], config(tmp_path, views_per_ct=50), load_mapping(MAPPING))
    assert not (tmp_path / "Dataset501_XraySeg").exists()


def test_existing_export_needs_resume_and_the_same_options(inputs, tmp_path):
    _, cases = inputs
    run_export(cases[:1], config(tmp_path, views_per_ct=1), load_mapping(MAPPING))
    with pytest.raises(InputError, match="--resume"):
        run_export(cases[:1], config(tmp_path, views_per_ct=1), load_mapping(MAPPING))
    with pytest.raises(InputError, match="differ"):
        run_export(cases[:1], config(tmp_path, views_per_ct=1, seed=8), load_mapping(MAPPING), resume=True)
    report = run_export(cases[:1], config(tmp_path, views_per_ct=1), load_mapping(MAPPING), resume=True)
    assert [s.status for s in report.samples] == ["skipped"]


def test_cancel_stops_and_resume_completes(inputs, tmp_path):
    _, cases = inputs
    cfg = config(tmp_path, views_per_ct=40)
    report = run_export(cases, cfg, load_mapping(MAPPING), cancel=lambda: True)
    assert report.cancelled and report.n_ok < 80
    rows = list(csv.DictReader((tmp_path / "Dataset501_XraySeg/manifest.csv").read_text().splitlines()))
    assert {r["status"] for r in rows} <= {"ok", "cancelled", "incomplete"}
    assert all(r["view"] == "chest-ap" and r["case"].endswith(f"_v{int(r['view_index']):04d}") for r in rows)
    report = run_export(cases, cfg, load_mapping(MAPPING), resume=True)
    assert report.n_ok == 80 and not report.cancelled


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_export(inputs, tmp_path):
    _, cases = inputs
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("ct,labels,id\n" + "".join(f"{c.ct},{c.labels},{c.ct_id}\n" for c in cases))

    def command(out):
        return [sys.executable, "-m", "XraySegInferLib.entry", "export", "--pairs", str(pairs), "--classes", MAPPING,
                "--view", "chest-ap", "--views-per-ct", "8", "--size", "96", "--physics", "auto", "--seed", "3",
                "--test-fraction", "0.5", "--quiet", "--out", str(out)]

    env = dict(os.environ, PYTHONPATH=str(REPO / "XraySegSim"))
    killed = tmp_path / "killed"
    process = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sidecars = killed / "Dataset501_XraySeg" / "sidecars"
    deadline = time.time() + 60
    while time.time() < deadline and not (sidecars.is_dir() and any(sidecars.glob("*.json"))):
        if process.poll() is not None:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    root = killed / "Dataset501_XraySeg"
    n_before = len(list(sidecars.glob("*.json")))
    assert 0 < n_before < 16 and not (root / "dataset.json").exists(), "the export was not interrupted mid-way"
    done = subprocess.run(command(killed) + ["--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    clean = tmp_path / "clean"
    done = subprocess.run(command(clean), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = all_arrays(root), all_arrays(clean / "Dataset501_XraySeg")
    assert sorted(a) == sorted(b) and len(a) == 16 * 3
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
    for name in ("dataset.json", "atoms.json", "manifest.csv", "classes.json"):
        assert (root / name).read_text() == (clean / "Dataset501_XraySeg" / name).read_text()
    assert not list(root.rglob("*.part"))


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_dataset(inputs, tmp_path):
    from distributed import Client, LocalCluster

    _, cases = inputs
    local = run_export(cases, config(tmp_path / "local"), load_mapping(MAPPING))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        remote = run_export(cases, config(tmp_path / "dask"), load_mapping(MAPPING), scheduler=cluster.scheduler_address)
        assert client.scheduler_info()["address"].startswith("tcp://127.0.0.1")
    assert local.n_ok == remote.n_ok == 6
    a = all_arrays(tmp_path / "local" / "Dataset501_XraySeg")
    b = all_arrays(tmp_path / "dask" / "Dataset501_XraySeg")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_worker_processes_give_the_same_dataset(inputs, tmp_path):
    _, cases = inputs
    one = run_export(cases, config(tmp_path / "one"), load_mapping(MAPPING), workers=1)
    two = run_export(cases, config(tmp_path / "two"), load_mapping(MAPPING), workers=2)
    assert one.n_ok == two.n_ok == 6
    a = all_arrays(tmp_path / "one" / "Dataset501_XraySeg")
    b = all_arrays(tmp_path / "two" / "Dataset501_XraySeg")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_cli_export_single_ct(inputs, tmp_path, capsys):
    from XraySegInferLib.entry import main

    _, cases = inputs
    status = main(["export", "--ct", cases[0].ct, "--labels", cases[0].labels, "--classes", MAPPING, "--view",
                   "chest-ap", "--views-per-ct", "2", "--size", "48", "--physics", "none", "--quiet",
                   "--range", "lao_deg=-30,30", "--out", str(tmp_path)])
    assert status == 0 and "exported 2 of 2" in capsys.readouterr().out
    root = tmp_path / "Dataset501_XraySeg"
    sidecar = json.loads((root / "sidecars/alpha_ct_v0000.json").read_text())
    assert sidecar["physics"] is None and sidecar["split"] == "train"
    assert main(["export", "--ct", "/nonexistent.nii.gz", "--folder", str(tmp_path), "--out", str(tmp_path)]) == 2
