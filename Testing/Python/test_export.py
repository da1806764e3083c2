"""Batch export (issue 4): the nnU-Net v2 layout and region encoding, split by CT, resume after a real kill,
bad inputs, the Dask backend, progress and cancel. Small phantoms (64 px) keep it fast. The building blocks
(atoms, kernels, gzip, geometry, detector placement): test_export_kernels.py."""

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
from XraySegSimLib.export_inputs import (CaseInput, discover_folder, load_mapping, read_pairs_csv)
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



@pytest.mark.slow
def test_export_two_cts_is_a_valid_nnunet_dataset(inputs, tmp_path):
    _, cases = inputs
    mapping = load_mapping(MAPPING)
    seen = []
    report = run_export(cases, config(tmp_path, physics="auto", preview_max_px=32), mapping,
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
        from PIL import Image  # a thumbnail: 64^2 samples, at most 32 px -> reduced by 2

        assert np.asarray(Image.open(root / f"previews/{case}.png")).shape == (32, 32, 3)
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
    # An export made before an option existed (its export.json lacks the key) resumes with that option's
    # default, and refuses another value.
    recorded = next(tmp_path.glob("Dataset*/export.json"))
    data = json.loads(recorded.read_text())
    del data["config"]["preview_max_px"]
    recorded.write_text(json.dumps(data))
    report = run_export(cases[:1], config(tmp_path, views_per_ct=1), load_mapping(MAPPING), resume=True)
    assert [s.status for s in report.samples] == ["skipped"]
    with pytest.raises(InputError, match="differ"):
        run_export(cases[:1], config(tmp_path, views_per_ct=1, preview_max_px=64), load_mapping(MAPPING),
                   resume=True)


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
