"""The sample registry: real archives from the package index, SHA-256 checks, the names table read with ast,
the CLI, and the Slicer Sample Data sources (loaded with slicer-core storage nodes)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from conftest import REPO
from XraySegInferLib.entry import main
from XraySegSimLib.errors import InputError
from XraySegSimLib.sample_data import (PYDICOM_DATA, SAMPLES, Archive, fetch_archive, fetch_sample, parse_class_map,
                                       sha256_file, tree_sha256)

CACHE = REPO / ".cache" / "xrayseg"


@pytest.fixture(autouse=True)
def repository_cache(monkeypatch):
    monkeypatch.setenv("XRAYSEG_CACHE", str(CACHE))


def test_class_map_is_read_without_running_the_file():
    source = ("import os\nraise SystemExit('never run')\nos.system('false')\n"
              "class_map = {\n  'total_v1': {1: 'spleen'},\n  'total': {1: 'spleen', 32: 'vertebrae_T12',"
              " 117: 'costal_cartilages'},\n}\n")
    assert parse_class_map(source) == {1: "spleen", 32: "vertebrae_T12", 117: "costal_cartilages"}
    assert parse_class_map(source, "total_v1") == {1: "spleen"}
    with pytest.raises(InputError, match="no class_map"):
        parse_class_map("class_map = {'other': {}}\n")


@pytest.mark.slow
def test_every_archive_sample_is_fetched_with_checked_files():
    import SimpleITK as sitk

    sizes = {"chest-ct": (512, 512, 133), "chest-full-ct": (233, 167, 191), "abdomen-pelvis-ct": (122, 101, 112)}
    for name, size in sizes.items():
        paths = fetch_sample(name)
        image = sitk.ReadImage(str(paths["ct"]))
        assert image.GetSize() == size
        if "labels" in paths:
            labels = sitk.ReadImage(str(paths["labels"]))
            assert labels.GetSize() == size and labels.GetOrigin() == image.GetOrigin()
    full = fetch_sample("chest-full-ct")
    t12 = sitk.GetArrayFromImage(sitk.ReadImage(str(full["t12_reference"])))
    assert set(np.unique(t12)) == {0, 1} and 5000 < t12.sum() < 40000  # one vertebra at 1.5 mm: ~10-60 ml

    abdomen = fetch_sample("abdomen-pelvis-ct")
    rows = abdomen["names"].read_text().splitlines()
    assert rows[0] == "value,name,group" and len(rows) == 118
    table = {int(r.split(",")[0]): r.split(",")[1:] for r in rows[1:]}
    assert table[32] == ["vertebrae_T12", "vertebrae"] and table[117] == ["costal_cartilages", "ribs"]
    present = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(abdomen["labels"]))))
    assert {25, 27, 32, 75, 77}.issubset(set(present.tolist()))  # sacrum, L5, T12, femur, hip
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(abdomen["dicom_dir"]))
    reader.SetFileNames(files)
    series = reader.Execute()
    assert len(files) == 20 and series.GetSize()[:2] == (512, 512)
    assert sitk.ReadImage(str(abdomen["dicom_labels"])).GetSize() == series.GetSize()

    chest = fetch_sample("chest-ct")
    assert chest["names"].read_text() == (REPO / "XraySegSim/XraySegSimLib/data/totalsegmentator_v1.csv").read_text()


@pytest.mark.slow
def test_real_radiographs_and_a_damaged_cache_file_is_replaced(tmp_path):
    import pydicom

    paths = fetch_sample("real-cr")
    chest = pydicom.dcmread(paths["pa_chest"])
    assert (chest.Rows, chest.Columns) == (1955, 1841) and chest.PhotometricInterpretation == "MONOCHROME1"
    assert pydicom.dcmread(paths["ankle"]).Modality == "CR"
    # a private cache holding only the archive: the damaged file is found and extracted again (no download)
    cache = tmp_path / "cache"
    (cache / "archives").mkdir(parents=True)
    archive = next(p for p in (CACHE / "archives").iterdir() if p.name.startswith("pydicom_data"))
    shutil.copy(archive, cache / "archives" / archive.name)
    first = fetch_sample("real-cr", cache)
    expected = sha256_file(first["ankle"])
    first["ankle"].write_bytes(b"truncated")
    again = fetch_sample("real-cr", cache)
    assert sha256_file(again["ankle"]) == expected == SAMPLES["real-cr"].files[1].sha256
    assert sorted(p.name for p in first["ankle"].parent.iterdir()) == ["RG1_UNCR.dcm", "RG3_UNCR.dcm"]


def test_an_archive_with_another_sha256_is_refused(tmp_path):
    wrong = Archive(PYDICOM_DATA.requirement, "0" * 64)
    with pytest.raises(InputError, match="unexpected SHA-256"):
        fetch_archive(wrong, tmp_path)
    assert [p.name for p in (tmp_path / "archives").iterdir()] == [], "nothing is left in the cache"


def test_tree_sha256_is_sha256sum_of_the_listing(tmp_path):
    import hashlib

    (tmp_path / "b").write_bytes(b"2")
    (tmp_path / "a").write_bytes(b"1")
    listing = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in (("a", b"1"), ("b", b"2")))
    assert tree_sha256(tmp_path) == hashlib.sha256(listing.encode()).hexdigest()


def test_fetch_sample_cli_lists_and_refuses_unknown_names(capsys):
    assert main(["fetch-sample", "--list"]) == 0
    listed = capsys.readouterr().out
    for name in SAMPLES:
        assert name in listed
    assert main(["fetch-sample", "no-such-body"]) == 2
    error = capsys.readouterr().err
    assert "unknown sample 'no-such-body'" in error and "chest-full-ct" in error
    assert main(["fetch-sample", "chest-ct", "--with-labels"]) == 2


@pytest.mark.slow
def test_fetch_sample_cli_prints_existing_paths_as_json(capsys):
    assert main(["fetch-sample", "real-cr", "--json"]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert set(paths) == {"pa_chest", "ankle"} and all(os.path.isfile(p) for p in paths.values())


@pytest.mark.slow
def test_slicer_sample_data_sources_point_at_checked_files_that_load():
    import slicer

    from XraySegSimLib.slicer_sample_data import CATEGORY, sample_data_sources

    fetched = []
    sources = {s["sampleName"]: s for s in sample_data_sources(CACHE, fetch=fetched.append)}
    assert set(sources) == {"XraySeg_ChestCt", "XraySeg_ChestFullCt", "XraySeg_ChestFullCtLabelled",
                            "XraySeg_AbdomenPelvisCt"}
    all_file_names = [f for s in sources.values() for f in s["fileNames"]]
    assert len(all_file_names) == len(set(all_file_names)), "unique names in Slicer's cache"
    for source in sources.values():
        assert source["category"] == CATEGORY
        assert len({len(source[k]) for k in ("uris", "fileNames", "nodeNames", "loadFileType", "checksums")}) == 1
        assert all(u.startswith("file://") for u in source["uris"])
    source = sources["XraySeg_ChestFullCt"]
    assert callable(source["customDownloader"])  # Slicer's button calls it with the source
    paths = fetch_sample("chest-full-ct")
    assert source["uris"][0] == paths["ct"].resolve().as_uri()
    assert source["checksums"][0] == f"SHA256:{sha256_file(paths['ct'])}"
    abdomen = sources["XraySeg_AbdomenPelvisCt"]
    assert abdomen["loadFileType"] == ["VolumeFile", "SegmentationFile"]
    assert sources["XraySeg_ChestFullCtLabelled"]["checksums"][1] is None  # built here: checked by our registry
    assert fetched == []  # building the arguments fetches nothing

    ab_paths = fetch_sample("abdomen-pelvis-ct")
    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", abdomen["nodeNames"][0])
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(ab_paths["ct"]))
    assert storage.ReadData(volume)
    assert volume.GetImageData().GetDimensions() == (122, 101, 112)
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", abdomen["nodeNames"][1])
    label_storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(label_storage)
    label_storage.SetFileName(str(ab_paths["labels"]))
    assert label_storage.ReadData(labels)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    assert logic.ImportLabelmapToSegmentationNode(labels, segmentation)
    assert segmentation.GetSegmentation().GetNumberOfSegments() >= 40


def test_a_built_sample_is_reused_only_when_its_recipe_and_files_match(tmp_path):
    import SimpleITK as sitk

    from XraySegSimLib.label_transfer import TransferResult, write_transfer_outputs
    from XraySegSimLib.labelled_samples import _recipe, built_sample_paths, labelled_sample_is_cached

    name = "chest-full-ct-labelled"
    assert not labelled_sample_is_cached(name, tmp_path)
    paths = built_sample_paths(name, tmp_path)
    assert paths["ct"] == tmp_path / "chest-full-ct" / "example_ct.nii.gz"
    labels = sitk.GetImageFromArray(np.arange(24, dtype=np.uint8).reshape(2, 3, 4) % 3)
    labels.SetSpacing((5.0, 5.0, 5.0))  # 8 voxels of each value: 1 ml
    paths["names"].parent.mkdir(parents=True)
    shutil.copyfile(REPO / "XraySegSim/XraySegSimLib/data/totalsegmentator_v1.csv", paths["names"])
    result = TransferResult(labels, {"recipe": _recipe(tmp_path)})
    written = write_transfer_outputs(result, paths["labels"].parent, names_path=paths["names"])
    assert written["labels"] == paths["labels"] and labelled_sample_is_cached(name, tmp_path)
    report = json.loads(paths["transfer_report"].read_text())
    assert report["label_volumes_ml"] == {"spleen": 1.0, "kidney_right": 1.0}
    sitk.WriteImage(labels * 2, str(paths["labels"]))  # another result under the same name
    assert not labelled_sample_is_cached(name, tmp_path)
    sitk.WriteImage(labels, str(paths["labels"]))
    report["files_sha256"]["labels"] = sha256_file(paths["labels"])
    report["recipe"]["settings"]["grow_mm"] = 99.0  # made by other settings
    paths["transfer_report"].write_text(json.dumps(report))
    assert not labelled_sample_is_cached(name, tmp_path)
