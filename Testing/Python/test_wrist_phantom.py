"""The wrist phantom: reproducible from its seed, names and values round trip, tissues where they belong."""

from __future__ import annotations

import numpy as np
import pytest

from XraySegSimLib.labels import read_names_table
from XraySegSimLib.phantom.wrist import RANGES, build_wrist_phantom, random_params
from XraySegSimLib.volume import read_volume

PAPER_BONES = ["radius", "ulna", "scaphoid", "lunate", "triquetrum", "pisiform", "trapezium", "trapezoid",
               "capitate", "hamate"]


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    """One phantom written by the CLI at 0.7 mm (coarser than the default 0.5 mm, to stay quick)."""
    from XraySegInferLib.entry import main

    out = tmp_path_factory.mktemp("wrist")
    assert main(["phantom", "wrist", "--out", str(out), "--seed", "11", "--voxel-mm", "0.7"]) == 0
    return out


@pytest.mark.slow
def test_names_and_values_written_are_read_back(phantom_dir):
    names = {value: name for value, (name, _) in read_names_table(phantom_dir / "names.csv").items()}
    assert [names[v] for v in range(1, 11)] == PAPER_BONES  # the wrist paper's 10 bones, spelled so, first
    assert sum(n.startswith("metacarpal_") for n in names.values()) == 5
    assert sum(n.startswith("phalanx_") for n in names.values()) == 14
    labels = read_volume(phantom_dir / "labels.nii.gz")
    ct = read_volume(phantom_dir / "ct.nii.gz")
    assert labels.same_grid_as(ct) and np.allclose(ct.spacing, 0.7)
    present = set(np.unique(labels.array).tolist()) - {0}
    assert present <= set(names) and set(range(1, 16)) <= present  # forearm, carpals, metacarpals all there
    import json

    record = json.loads((phantom_dir / "phantom.json").read_text())
    counts = np.bincount(labels.array.ravel().astype(int), minlength=max(names) + 1)
    assert {names[v]: int(counts[v]) for v in names} == record["bone_voxels"]


@pytest.mark.slow
def test_tissues_joint_gaps_and_anatomy(phantom_dir):
    labels = read_volume(phantom_dir / "labels.nii.gz").array.astype(int)
    ct = read_volume(phantom_dir / "ct.nii.gz").array.astype(float)
    bone = labels > 0
    # Cortical shell 1,300-1,800 HU (texture aside): the densest decile of each carpal sits in that band.
    for value in range(3, 11):
        dense = np.percentile(ct[labels == value], 90)
        assert 1250 <= dense <= 1900, (value, dense)
    assert 150 < np.median(ct[labels == 4]) < 1300  # lunate: trabecular core below the cortex
    soft = ~bone & (ct > -300)
    assert np.count_nonzero((ct > -130) & (ct < -60) & soft) > 0  # fat
    assert np.count_nonzero((ct > 20) & (ct < 80) & soft) > 0  # muscle / skin
    assert ct[0, 0, 0] == -1000  # air around the arm
    # Cartilage gaps: no voxel of one bone touches a voxel of another (6-neighbourhood).
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        touching = (a[1:] > 0) & (a[:-1] > 0) & (a[1:] != a[:-1])
        assert not touching.any()
    # Anatomy in RAS: fingers inferior of the carpals, radius on the radial (thumb, R) side of the ulna.
    centre = {v: np.argwhere(labels == v).mean(0) for v in (1, 2, 9, 13)}  # (k, j, i) = (S, A, R)
    assert centre[1][2] > centre[2][2]  # radius right of ulna (right hand, palm forwards)
    assert centre[13][0] < centre[9][0] < centre[1][0]  # metacarpal 3 below capitate below radius


@pytest.mark.slow
def test_same_seed_same_phantom_other_seed_other_phantom():
    a = build_wrist_phantom(random_params(5, voxel_mm=1.0))
    b = build_wrist_phantom(random_params(5, voxel_mm=1.0))
    c = build_wrist_phantom(random_params(6, voxel_mm=1.0))
    assert np.array_equal(a[0].array, b[0].array) and np.array_equal(a[1].array, b[1].array)
    assert np.array_equal(a[0].ijk_to_ras, b[0].ijk_to_ras) and a[2] == b[2]
    assert a[0].array.shape != c[0].array.shape or not np.array_equal(a[0].array, c[0].array)
    params = random_params(5)
    for name, (low, high) in RANGES.items():
        value = getattr(params.pose, name) if hasattr(params.pose, name) else getattr(params, name)
        assert low <= value <= high
    assert random_params(5, flexion_deg=20.0).pose.flexion_deg == 20.0
    assert random_params(5, flexion_deg=20.0).pose.scale == params.pose.scale  # fixing one keeps the others


def test_flexion_turns_the_hand_about_the_wrist():
    from XraySegSimLib.phantom.wrist_pose import WristPose, posed_points

    neutral = posed_points(WristPose())
    flexed = posed_points(WristPose(flexion_deg=30.0))
    assert np.allclose(neutral["radius"], flexed["radius"])
    direction = lambda points: points["metacarpal_3"].mean(0) - points["capitate"].mean(0)  # noqa: E731
    n, f = direction(neutral), direction(flexed)
    # Palmar flexion tilts the hand towards anterior (+A) in the sagittal (A-S) plane by the flexion angle.
    angle = np.degrees(np.arctan2(f[1], -f[2]) - np.arctan2(n[1], -n[2]))
    assert 25.0 < angle < 35.0
    # The proximal row follows half of the motion: the lunate moves, but less than the capitate.
    def turned_deg(bone: str) -> float:  # rotation angle between the two vertex sets (same vertex order)
        a, b = neutral[bone] - neutral[bone].mean(0), flexed[bone] - flexed[bone].mean(0)
        u, _, vt = np.linalg.svd(a.T @ b)
        return float(np.degrees(np.arccos(np.clip((np.trace(u @ vt) - 1) / 2, -1, 1))))

    assert abs(turned_deg("lunate") - 15.0) < 1.0 and abs(turned_deg("capitate") - 30.0) < 1.0


@pytest.mark.slow
def test_export_takes_the_phantom_directly(phantom_dir, tmp_path):
    from XraySegInferLib.entry import main

    assert main(["export", "--ct", str(phantom_dir / "ct.nii.gz"), "--labels", str(phantom_dir / "labels.nii.gz"),
                 "--names", str(phantom_dir / "names.csv"), "--classes", "all", "--view", "wrist-oblique-pronated",
                 "--views-per-ct", "1", "--size", "64", "--test-fraction", "0", "--quiet", "--no-previews",
                 "--out", str(tmp_path)]) == 0
    import json

    root = next(tmp_path.glob("Dataset*"))
    classes = [c["name"] for c in json.loads((root / "classes.json").read_text())["classes"]]
    assert classes[:10] == PAPER_BONES and len(classes) == 29
    sidecar = json.loads(next((root / "sidecars").glob("*.json")).read_text())
    assert sidecar["physics"]["preset"] == "wrist-pa"


@pytest.mark.slow
def test_sample_phantom_is_built_once_then_reused(tmp_path):
    from XraySegSimLib.phantom.sample import SAMPLE_SEED, fetch_wrist_phantom

    paths = fetch_wrist_phantom(tmp_path)
    import json

    assert json.loads(paths["json"].read_text())["params"]["seed"] == SAMPLE_SEED
    stamp = paths["ct"].stat().st_mtime_ns
    assert fetch_wrist_phantom(tmp_path) == paths and paths["ct"].stat().st_mtime_ns == stamp


def test_wrist_phantom_is_in_the_sample_registry(tmp_path, capsys):
    from XraySegInferLib.entry import main
    from XraySegSimLib.phantom.sample import wrist_phantom_paths
    from XraySegSimLib.sample_data import sample_paths

    assert sample_paths("wrist-phantom", tmp_path) == wrist_phantom_paths(tmp_path)
    assert main(["fetch-sample", "--list"]) == 0
    assert "wrist-phantom" in capsys.readouterr().out
