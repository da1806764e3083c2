"""The hip phantom (OpenSim femur, pelvis and sacrum meshes): reproducible from its seed, TotalSegmentator values,
femur labels where the posed meshes are, and femur-data crops of it by the CT's rule."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def phantoms():
    from XraySegSimLib.phantom.hip import build_hip_phantom, random_params

    def build(seed: int):
        return build_hip_phantom(random_params(seed, voxel_mm=2.0))

    return build(3), build(3), build(4)


def test_same_seed_same_phantom_other_seed_differs(phantoms):
    (ct_a, labels_a, _, _), (ct_b, labels_b, _, _), (ct_c, labels_c, _, _) = phantoms
    assert np.array_equal(ct_a.array, ct_b.array) and np.array_equal(labels_a.array, labels_b.array)
    assert np.allclose(ct_a.ijk_to_ras, ct_b.ijk_to_ras)
    assert ct_a.array.shape != ct_c.array.shape or not np.array_equal(labels_a.array, labels_c.array)


def test_femur_labels_fill_the_posed_femur_meshes(phantoms):
    """Each femur label has the volume of its mesh inside the grid (the mesh clipped by the grid's lower plane,
    measured by VTK, not by voxels) within 1 %, and its top lies at the mesh's top."""
    import vtk

    from XraySegSimLib.phantom.hip import NAMES, posed_meshes, random_params

    ct, labels, names, report = phantoms[0]
    assert names == NAMES and names[75] == "femur_left" and names[76] == "femur_right"
    meshes, heads = posed_meshes(dataclasses.replace(random_params(3, voxel_mm=2.0)))
    h = float(labels.spacing[0])
    bottom = float(labels.ijk_to_ras[2, 3]) - h / 2  # the lowest voxel's lower face
    for value, name in ((75, "femur_left"), (76, "femur_right")):
        mask = labels.array == value
        plane = vtk.vtkPlane()
        plane.SetOrigin(0.0, 0.0, bottom)
        plane.SetNormal(0.0, 0.0, 1.0)
        planes = vtk.vtkPlaneCollection()
        planes.AddItem(plane)
        clip = vtk.vtkClipClosedSurface()
        clip.SetInputData(meshes[name])
        clip.SetClippingPlanes(planes)
        mass = vtk.vtkMassProperties()
        mass.SetInputConnection(clip.GetOutputPort())
        mass.Update()
        label_ml = mask.sum() * h ** 3 / 1000
        assert label_ml == pytest.approx(mass.GetVolume() / 1000, rel=0.01), name  # measured: 0.1 %
        top_k = np.argwhere(mask.any(axis=(1, 2)))[-1, 0]
        mesh_top = meshes[name].GetBounds()[5]
        assert abs(labels.ijk_to_ras[2, 3] + top_k * h - mesh_top) <= h
        # The femoral head centre (the hip joint) is inside the femur label, below the top.
        head_ijk = np.round(np.linalg.solve(labels.ijk_to_ras, np.r_[heads[name.split("_")[1]], 1.0])[:3]).astype(int)
        assert mask[head_ijk[2], head_ijk[1], head_ijk[0]]
    bone = labels.array > 0
    assert 100 < np.median(ct.array[bone]) < 1400 and abs(np.median(ct.array[~bone & (ct.array > -500)])) < 100


def test_femur_data_crops_both_phantom_femurs_into_training(tmp_path):
    """Phantom folders written by the CLI add both femurs to imagesTr (the other side mirrored); with
    --ct-test-only both CT femurs are test cases."""
    import json
    import subprocess
    import sys

    import SimpleITK as sitk

    from XraySegSimLib.sample_data import fetch_sample

    entry = [sys.executable, "-m", "XraySegInferLib.entry"]
    done = subprocess.run(entry + ["phantom", "hip", "--seed", "5", "--voxel-mm", "3", "--out", str(tmp_path / "p5")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-800:]
    sample = fetch_sample("abdomen-pelvis-ct")
    done = subprocess.run(entry + ["femur-data", "--ct", str(sample["ct"]), "--labels", str(sample["labels"]),
                                   "--names", str(sample["names"]), "--train-side", "right", "--ct-test-only",
                                   "--phantoms", str(tmp_path / "p5"), "--out", str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-800:]
    root = next((tmp_path / "data").glob("Dataset*"))
    crops = json.loads((root / "crops.json").read_text())["crops"]
    assert {k: v["split"] for k, v in crops.items()} == {
        "body0_left_mirrored": "test", "body0_right": "test",
        "phantom_p5_left_mirrored": "train", "phantom_p5_right": "train"}
    for case in ("phantom_p5_left_mirrored", "phantom_p5_right"):
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / f"{case}.nii.gz")))
        assert 40 < label.sum() * 27 / 1000 < 250  # ml of proximal femur in the crop (3 mm voxels)
        assert crops[case]["reaches_mm_below_head"] == 110.0  # the phantom reaches 150 mm below the heads
    assert json.loads((root / "dataset.json").read_text())["numTraining"] == 2
