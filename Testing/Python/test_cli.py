"""`xrayseg render`: outputs in the right place (read back by SimpleITK and by real Slicer MRML), and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from XraySegSimLib import XrayGeometry
from XraySegInferLib.entry import main
from conftest import grid_volume, voxel_centers_ras, write_image


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    """A CT (NIfTI) with two 'bones' and its label map (NRRD) using TotalSegmentator values."""
    folder = tmp_path_factory.mktemp("phantom")
    volume = grid_volume(np.full((50, 60, 70), -1000.0, np.float32), 1.0, center_ras=(20, -10, 5))
    centres = voxel_centers_ras(volume) - volume.center_ras
    body = np.linalg.norm(centres / (30, 25, 22), axis=-1) < 1
    sternum = np.linalg.norm(centres - (0, 15, 0), axis=-1) < 6
    spine = np.linalg.norm(centres[..., :2] - (0, -12), axis=-1) < 7
    volume.array[body] = 40.0
    volume.array[sternum | spine] = 900.0
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[sternum] = 116  # sternum
    labels[spine] = 38  # vertebrae_T6
    labels[body & ~sternum & ~spine & (centres[..., 0] > 20)] = 5  # liver: not a bone, not projected
    ct = write_image(volume.array, volume.ijk_to_ras, folder / "ct.nii.gz")
    lab = write_image(labels, volume.ijk_to_ras, folder / "labels.nrrd")
    return ct, lab, volume


def test_render_writes_every_output_in_the_right_place(phantom_files, tmp_path, capsys):
    ct, labels, volume = phantom_files
    out = tmp_path / "out"
    status = main(["render", "--ct", str(ct), "--labels", str(labels), "--view", "chest-lateral", "--size", "64",
                   "--sdd", "1000", "--sid", "800", "--detector-mm", "150", "120", "--isocenter", "center",
                   "--out", str(out), "--save-thickness"])
    assert status == 0
    expected = {"drr.nrrd", "drr.png", "drr.json", "labels.nrrd", "labels.seg.nrrd", "labels.png", "overlay.png",
                "thickness.nrrd"}
    assert expected == {p.name for p in out.iterdir()}  # and no temporary leftovers
    sidecar = json.loads((out / "drr.json").read_text())
    geometry = XrayGeometry.from_dict(sidecar["geometry"])
    assert geometry.size == (64, 51) and geometry.source_to_detector_distance == pytest.approx(1000)
    np.testing.assert_allclose(sidecar["geometry"]["projection_matrix"], geometry.projection_matrix())
    np.testing.assert_allclose(geometry.isocenter, volume.center_ras)
    assert [c["name"] for c in sidecar["classes"]] == ["vertebrae_T6", "sternum"]
    assert all(c["projected_pixels"] > 20 for c in sidecar["classes"])

    drr = sitk.ReadImage(str(out / "drr.nrrd"))
    lps_origin = np.array(drr.GetOrigin())
    np.testing.assert_allclose(lps_origin * (-1, -1, 1), geometry.origin, atol=1e-6)
    assert drr.GetSize() == (64, 51, 1)
    label_image = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nrrd")))[0]
    assert set(np.unique(label_image)) == {0, 1, 2}
    # lateral view, anterior on screen left: the sternum (class 2) is left of the spine (class 1)
    columns = np.arange(64)
    centre = [(columns * (label_image == c).sum(0)).sum() / (label_image == c).sum() for c in (1, 2)]
    assert centre[1] < centre[0]


def test_segmentation_file_loads_in_slicer_with_names_colours_and_detector_geometry(phantom_files, tmp_path):
    slicer = pytest.importorskip("slicer")
    import vtk

    ct, labels, _ = phantom_files
    out = tmp_path / "out"
    assert main(["render", "--ct", str(ct), "--labels", str(labels), "--size", "48", "--out", str(out)]) == 0
    sidecar = json.loads((out / "drr.json").read_text())
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(out / "labels.seg.nrrd"))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == [c["name"] for c in sidecar["classes"]]
    for i, cls in enumerate(sidecar["classes"]):
        np.testing.assert_allclose(segmentation.GetNthSegment(i).GetColor(), cls["color_rgb"], atol=1e-3)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    volume_storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    volume_storage.SetFileName(str(out / "drr.nrrd"))
    assert volume_storage.ReadData(volume)
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(ijk_to_ras[:3, :2], np.array(sidecar["geometry"]["detector_ijk_to_ras"])[:3, :2],
                               atol=1e-6)
    np.testing.assert_allclose(ijk_to_ras[:3, 3], np.array(sidecar["geometry"]["detector_ijk_to_ras"])[:3, 3],
                               atol=1e-6)


def test_projection_matrix_and_geometry_json_inputs_reproduce_the_view(phantom_files, tmp_path):
    ct, _, _ = phantom_files
    first = tmp_path / "first"
    assert main(["render", "--ct", str(ct), "--view", "carm-ap", "--lao", "20", "--size", "40", "--out",
                 str(first)]) == 0
    geometry = json.loads((first / "drr.json").read_text())["geometry"]
    np.savetxt(tmp_path / "P.txt", np.array(geometry["projection_matrix"]))
    from_p, from_json = tmp_path / "from_p", tmp_path / "from_json"
    assert main(["render", "--ct", str(ct), "--projection-matrix", str(tmp_path / "P.txt"), "--pixel-spacing",
                 *map(str, geometry["detector_spacing_mm"]), "--size", "40", "--out", str(from_p)]) == 0
    assert main(["render", "--ct", str(ct), "--geometry", str(first / "drr.json"), "--out", str(from_json)]) == 0
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(first / "drr.nrrd")))
    for folder in (from_p, from_json):
        np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "drr.nrrd"))), reference,
                                   atol=1e-5)


def bad_geometry_json(tmp_path: Path) -> Path:
    edge_on = {"source_ras": [300.0, -1000.0, 0.0], "detector_center_ras": [0.0, 200.0, 0.0],
               "detector_column_axis_ras": [0.0, 1.0, 0.0], "detector_row_axis_ras": [0.0, 0.0, -1.0],
               "detector_size_pixels": [32, 32], "detector_spacing_mm": [1.0, 1.0]}
    path = tmp_path / "edge_on.json"
    path.write_text(json.dumps(edge_on))
    return path


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--ct", "{tmp}/missing.nii.gz"], "file not found"),
        (["--ct", "{tmp}/notes.txt"], "cannot read"),
        (["--ct", "{ct}", "--labels", "{tmp}/shifted.nrrd"], "label map grid differs from the CT grid"),
        (["--ct", "{ct}", "--labels", "{tmp}/empty.nrrd"], "holds none of the requested classes"),
        (["--ct", "{ct}", "--sdd", "120", "--sid", "10", "--isocenter", "center"], "source lies inside the CT"),
        (["--ct", "{ct}", "--geometry", "{edge_on}"], "does not face the source"),
        (["--ct", "{ct}", "--isocenter", "1,2"], "--isocenter must be"),
        (["--ct", "{ct}", "--projection-matrix", "{tmp}/notes.txt"], "needs --pixel-spacing"),
    ],
)
def test_bad_input_gets_a_clear_message_and_exit_status_2(phantom_files, tmp_path, capsys, arguments, message):
    ct, labels, volume = phantom_files
    (tmp_path / "notes.txt").write_text("not an image")
    moved = volume.ijk_to_ras.copy()
    moved[:3, 3] += 1.5
    write_image(np.zeros(volume.array.shape, np.uint8) + 38, moved, tmp_path / "shifted.nrrd")
    write_image(np.zeros(volume.array.shape, np.uint8), volume.ijk_to_ras, tmp_path / "empty.nrrd")
    fill = {"tmp": str(tmp_path), "ct": str(ct), "edge_on": str(bad_geometry_json(tmp_path))}
    out = tmp_path / "out"
    status = main(["render", *[a.format(**fill) for a in arguments], "--size", "32", "--out", str(out)])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing half-made


@pytest.mark.parametrize("which", ["ct", "labels", "pairs-row"])
def test_export_of_a_missing_file_makes_no_dataset_folder(phantom_files, tmp_path, capsys, which):
    ct, labels, _ = phantom_files
    missing = tmp_path / "missing.nii.gz"
    if which == "pairs-row":  # the second row of a batch names a CT that is not there
        pairs = tmp_path / "pairs.csv"
        pairs.write_text(f"ct,labels\n{ct},{labels}\nmissing.nii.gz,{labels}\n")
        inputs = ["--pairs", str(pairs)]
    else:
        inputs = ["--ct", str(missing if which == "ct" else ct), "--labels", str(missing if which == "labels" else labels)]
    out = tmp_path / "out"
    status = main(["export", *inputs, "--views-per-ct", "1", "--size", "32", "--quiet", "--out", str(out)])
    assert status == 2
    assert f"file not found: {missing}" in capsys.readouterr().err
    assert not out.exists()


def test_console_script_help_explains_every_option():
    done = subprocess.run([sys.executable, "-m", "XraySegInferLib.entry", "render", "--help"], capture_output=True,
                          text=True)
    assert done.returncode == 0
    for option in ("--ct", "--labels", "--view", "--size", "--out", "--sdd", "--sid", "--isocenter", "--lao",
                   "--cranial", "--projection-matrix", "--geometry", "--classes", "--names"):
        assert option in done.stdout


def test_render_with_physics_writes_a_realistic_radiograph_on_the_detector(phantom_files, tmp_path):
    ct, labels, _ = phantom_files
    out = tmp_path / "out"
    assert main(["render", "--ct", str(ct), "--labels", str(labels), "--view", "lumbar-lateral", "--physics",
                 "lumbar-lateral", "--size", "48", "--out", str(out)]) == 0
    sidecar = json.loads((out / "drr.json").read_text())
    assert sidecar["physics"]["preset"] == "lumbar-lateral" and sidecar["physics"]["params"]["spectrum"]["kvp"] > 0
    radiograph = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "radiograph.nrrd")))[0]
    drr = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "drr.nrrd")))[0]
    assert radiograph.shape == drr.shape and 0 <= radiograph.min() and radiograph.max() <= 1
    body = drr > 0.5
    # MONOCHROME2: where the body attenuates more, the processed radiograph is brighter
    assert np.corrcoef(radiograph[body], drr[body])[0, 1] > 0.8
    assert (out / "radiograph_overlay.png").exists()
    with pytest.raises(SystemExit):
        main(["render", "--bogus"])


def test_unknown_physics_preset_is_refused(phantom_files, tmp_path, capsys):
    ct, _, _ = phantom_files
    assert main(["render", "--ct", str(ct), "--physics", "knee", "--out", str(tmp_path / "o")]) == 2
    assert "unknown preset 'knee'" in capsys.readouterr().err
