"""Reading exported datasets (XraySegInferLib.dataset) and evaluating them (XraySegInferLib.evaluate): datasets with
only one of imagesTr/imagesTs, and the per-view tables grouped by the view preset NAME whether the manifest's
``view`` column holds the name (current exports) or the view's index (older exports: the name then comes from the
sidecar's ``geometry.view``).

The predictor here is a stand-in (no network): it looks the image up and answers with the reference masks, or
with nothing for the images it is told to get wrong, so the figures per view are known exactly.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from XraySegInferLib.dataset import read_dataset
from XraySegInferLib.errors import DatasetError
from XraySegInferLib.evaluate import evaluate_dataset
from XraySegInferLib.synthetic import CLASS_NAMES, make_dataset


class OraclePredictor:
    """Answers with the reference masks of the image (found by its pixels); empty masks for ``wrong`` cases."""

    def __init__(self, dataset_dir: Path, wrong: tuple[str, ...] = ()):
        ds = read_dataset(dataset_dir)
        self.class_names = list(ds.class_names)
        self.answers = {}
        for case in ds.cases:
            image, masks, _ = ds.load(case)
            answer = np.zeros_like(masks, bool) if case.case_id in wrong else masks > 0
            self.answers[np.asarray(image, np.float32).tobytes()] = answer

    def predict(self, radiograph, spacing=None):
        return SimpleNamespace(masks=self.answers[np.asarray(radiograph.pixels, np.float32).tobytes()])


def rewrite_manifest(folder: Path, rows: list[dict]) -> None:
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def test_only(tmp_path_factory) -> Path:
    """A dataset with imagesTs only (one test CT, 3 views), as an export with every CT in the test split."""
    return make_dataset(tmp_path_factory.mktemp("test_only"), n_cts=0, views_per_ct=3, size=32, test_cts=1, seed=3)


def test_a_dataset_with_only_test_images_is_read_and_evaluated(test_only, tmp_path):
    assert not (test_only / "imagesTr").exists()
    ds = read_dataset(test_only)
    assert len(ds.split("test")) == 3 and ds.split("train") == []
    assert len(read_dataset(test_only, require="test").split("test")) == 3
    report = evaluate_dataset(OraclePredictor(test_only), test_only, tmp_path / "eval", split="test")
    assert report.summary()["cases"] == 3 and report.summary()["mean_dice"] == pytest.approx(1.0)
    assert (tmp_path / "eval" / "metrics.md").is_file()


def test_an_empty_requested_split_is_a_clear_error(test_only, tmp_path):
    predictor = OraclePredictor(test_only)
    for split in ("train", "val"):
        with pytest.raises(DatasetError, match=r"no train images \(imagesTr/.*it has 3 test images"):
            evaluate_dataset(predictor, test_only, None, split=split)
    with pytest.raises(DatasetError, match="no train images"):
        read_dataset(test_only, require="train")
    # training needs imagesTr: the same clear error, before any work
    from XraySegInferLib.training import TrainConfig, train

    with pytest.raises(DatasetError, match="no train images"):
        train(test_only, tmp_path / "run", TrainConfig(device="cpu"), progress=False, log=lambda *_: None)
    # and the other way round: a dataset with imagesTr only has no test split
    train_only = tmp_path / "train_only"
    shutil.copytree(test_only, train_only)
    for kind in ("images", "labels", "masks"):
        (train_only / f"{kind}Ts").rename(train_only / f"{kind}Tr")
    assert len(read_dataset(train_only).split("train")) == 3
    with pytest.raises(DatasetError, match=r"no test images \(imagesTs/.*it has 3 train images"):
        evaluate_dataset(predictor, train_only, None, split="test")
    # one CT: 'val' (held-out CTs of imagesTr) is empty, and the message says what to do
    with pytest.raises(DatasetError, match="split 'val'.*is empty.*--split train"):
        evaluate_dataset(predictor, train_only, None, split="val")
    assert evaluate_dataset(predictor, train_only, None, split="train").summary()["cases"] == 3
    # no images at all
    for kind in ("images", "labels", "masks"):
        shutil.rmtree(train_only / f"{kind}Tr")
    with pytest.raises(DatasetError, match="has no images"):
        read_dataset(train_only)


@pytest.fixture(scope="module")
def mixed_views(tmp_path_factory) -> Path:
    """Six test views of one CT whose manifest mixes the current and the old export formats:

    * v000, v001: ``view`` = preset name, ``view_index`` column (current exporter);
    * v002: ``view`` = another preset name;
    * v003, v004: ``view`` = the index (older exporter); the sidecar's geometry.view names the preset;
    * v005: ``view`` = the index and a sidecar that names no view: "unknown".
    """
    folder = make_dataset(tmp_path_factory.mktemp("views"), n_cts=0, views_per_ct=6, size=32, test_cts=1, seed=4)
    views = ["chest-pa", "chest-pa", "chest-ap", "3", "4", "5"]
    sidecar_views = {3: "chest-lateral", 4: "chest-lateral", 5: None}
    rows = []
    for index, view in enumerate(views):
        case = f"phantom00_{index:03d}"
        rows.append({"case": case, "ct_id": "phantom00", "split": "test", "view": view,
                     "view_index": index if index < 2 else "", "status": "ok", "message": ""})
        if index in sidecar_views:
            path = folder / "sidecars" / f"{case}.json"
            meta = json.loads(path.read_text())
            meta.pop("view", None)  # the older exporter's sidecar: view_index and geometry.view
            meta["view_index"] = index
            if sidecar_views[index] is None:
                meta["geometry"].pop("view")
            else:
                meta["geometry"]["view"] = sidecar_views[index]
            path.write_text(json.dumps(meta))
    rewrite_manifest(folder, rows)
    return folder


def test_view_is_the_preset_name_from_the_manifest_or_the_sidecar(mixed_views):
    cases = read_dataset(mixed_views).split("test")
    assert [c.view for c in cases] == ["chest-pa", "chest-pa", "chest-ap", "chest-lateral", "chest-lateral",
                                       "unknown"]
    assert [c.view_index for c in cases] == [0, 1, None, 3, 4, 5]


def test_evaluation_tables_per_view_preset(mixed_views, tmp_path):
    predictor = OraclePredictor(mixed_views, wrong=("phantom00_003", "phantom00_005"))
    report = evaluate_dataset(predictor, mixed_views, tmp_path, split="test", hd95=False)
    assert report.views == ["chest-ap", "chest-lateral", "chest-pa", "unknown"]
    assert [report.summary(v)["cases"] for v in report.views] == [1, 2, 2, 1]
    assert report.summary("chest-pa")["mean_dice"] == pytest.approx(1.0)
    assert report.summary("chest-lateral")["mean_dice"] == pytest.approx(0.5)  # one right, one empty
    assert report.summary("unknown")["mean_dice"] == pytest.approx(0.0)
    text = (tmp_path / "metrics.md").read_text()
    for title in ("View: chest-pa (2 images)", "View: chest-lateral (2 images)", "View: chest-ap (1 images)",
                  "View: unknown (1 images)"):
        assert f"## {title}" in text
    assert "View: 3" not in text and "View: 5" not in text
    with open(tmp_path / "cases.csv", newline="") as handle:
        assert [r["view"] for r in csv.DictReader(handle)] == ["chest-pa", "chest-pa", "chest-ap", "chest-lateral",
                                                               "chest-lateral", "unknown"]
    assert len(CLASS_NAMES) == len(report.class_names)


def test_old_export_with_index_views_groups_by_the_sidecar_preset(tmp_path):
    """The manifest an older exporter wrote (``view`` = 0, 1, ...; no view_index column): one table per preset."""
    folder = make_dataset(tmp_path, n_cts=0, views_per_ct=3, size=32, test_cts=1, seed=5)
    rewrite_manifest(folder, [{"case": f"phantom00_{i:03d}", "ct_id": "phantom00", "split": "test", "view": i,
                               "status": "ok", "message": ""} for i in range(3)])
    cases = read_dataset(folder).split("test")
    assert {c.view for c in cases} == {"chest-pa"} and [c.view_index for c in cases] == [0, 1, 2]
    report = evaluate_dataset(OraclePredictor(folder), folder, None, split="test", hd95=False)
    assert report.views == ["chest-pa"]
