"""Issue 12, as a table: every bad input or fault a new user tried, through the real ``xrayseg`` command.

One row per numbered item of the issue (1-11) and per behaviour that already held. Each row runs the command
(``entry.main`` in this process, or a subprocess where a signal, a kill or a file-size limit is involved) on small
real files written to tmp_path, and asserts the exit status, the message (one line, no traceback), and what is
on disk afterwards: nothing half-written, nothing lost, and for the crafted pickles, no code ran (the pickle would
create a marker file).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import REPO, grid_volume, voxel_centers_ras, write_image

XRAYSEG = [sys.executable, "-c", "import sys; from XraySegInferLib.entry import main; sys.exit(main())"]
ARCH = {"name": "UNet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0, "norm": "instance"}


# ---- files ------------------------------------------------------------------------------------------------------


class Payload:
    """Unpickling this creates ``marker``: the proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def crafted_pickle(path: Path, marker: Path, **extra) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": Payload(marker), **extra}, path)
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file below ``folder`` (hidden ones too)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small phantom CT (NIfTI) with sternum and a vertebra (TotalSegmentator values), a second CT, broken
    variants, radiographs and an untrained model package."""
    from PIL import Image

    from XraySegInferLib.networks import build_network
    from XraySegInferLib.package import make_card, save_package

    d = tmp_path_factory.mktemp("safety")
    volume = grid_volume(np.full((40, 40, 40), -1000.0, np.float32), 2.0)
    c = voxel_centers_ras(volume) - volume.center_ras
    body = np.linalg.norm(c / (30, 25, 30), axis=-1) < 1
    sternum = np.linalg.norm(c - (0, 12, 0), axis=-1) < 8
    spine = np.linalg.norm(c[..., :2] - (0, -10), axis=-1) < 6
    volume.array[body] = 40.0
    volume.array[sternum | spine] = 900.0
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[sternum], labels[spine] = 116, 38
    f = {"ct": write_image(volume.array, volume.ijk_to_ras, d / "ct.nii.gz"),
         "labels": write_image(labels, volume.ijk_to_ras, d / "labels.nrrd")}
    other = volume.array.copy()
    other[body & (c[..., 0] > 10)] = 100.0
    (d / "other").mkdir()
    f["other_ct"] = write_image(other, volume.ijk_to_ras, d / "other" / "ct.nii.gz")
    f["nan_ct"] = write_image(np.full_like(volume.array, np.nan), volume.ijk_to_ras, d / "nan.nii.gz")
    f["truncated_ct"] = d / "truncated.nii.gz"
    f["truncated_ct"].write_bytes(f["ct"].read_bytes()[:3000])
    huge = labels.astype(np.int32)
    huge[spine] = 2**31 - 1
    f["huge_labels"] = write_image(huge, volume.ijk_to_ras, d / "huge_labels.nrrd")
    rng = np.random.default_rng(0)
    ramp = (np.add.outer(np.arange(64), np.arange(64)) * 2 + rng.integers(0, 30, (64, 64))).astype(np.uint8)
    for name, array in (("xray.png", ramp), ("constant.png", np.full((64, 64), 90, np.uint8)),
                        ("tiny.png", ramp[:8, :8])):
        Image.fromarray(array).save(d / name)
        f[name] = d / name
    (d / "a").mkdir()
    (d / "b").mkdir()
    for sub in ("a", "b"):
        Image.fromarray(ramp[::-1] if sub == "b" else ramp).save(d / sub / "chest.png")
    f["text.dcm"] = d / "text.dcm"
    f["text.dcm"].write_text("patient notes, not an image\n" * 20)
    network = build_network(ARCH, 2, "multilabel")
    card = make_card(name="tiny", architecture=ARCH, mode="multilabel",
                     classes=[{"name": "rib_left", "color": (1, 0, 0)}, {"name": "rib_right", "color": (0, 1, 0)}],
                     spacing_mm=(1.0, 1.0), patch_size=(32, 32),
                     normalization={"window_percentiles": [0.5, 99.5], "gamma": 1.0}, field_of_view_mm=(64.0, 64.0))
    f["package"] = save_package(d / "package", network, card)
    return f


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from XraySegInferLib.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("dataset"), n_cts=2, views_per_ct=2, size=32, test_cts=0, seed=0)


def export_args(ct, labels, out, *more) -> list[str]:
    return ["export", "--ct", str(ct), "--labels", str(labels), "--size", "32", "--views-per-ct", "2",
            "--physics", "none", "--test-fraction", "0", "--quiet", "--threads", "1", "--out", str(out), *more]


def copy_package(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


# ---- the table --------------------------------------------------------------------------------------------------


@dataclass
class Case:
    argv: list[str]
    status: int
    message: str  # regex the error output must match ("" = no error line expected)
    after: Callable[[], None] | None = None  # asserts what is on disk (default, on error: nothing in --out)
    watch: Path | None = None  # a folder that must be byte-for-byte unchanged
    env: dict = field(default_factory=dict)
    subprocess: bool = False  # run as a real process (its warnings reach stderr as the user sees them)


ROWS: dict[str, Callable] = {}


def row(name: str, slow: bool = False):
    def register(fn):
        ROWS[name] = pytest.param(fn, id=name, marks=[pytest.mark.slow] if slow else [])
        return fn
    return register


@row("1-train-resume-crafted-pickle-checkpoint")
def _(tmp, f, dataset):
    out = tmp / "run"
    crafted_pickle(out / "checkpoint_last.pt", tmp / "PWNED", step=1)
    return Case(["train", str(dataset), "--out", str(out), "--resume", "--steps", "2", "--quiet"], 2,
                r"weights_only=True.*could run code.*--trust-pickle",
                lambda: _assert(not (tmp / "PWNED").exists() and not (out / "model").exists()), watch=out)


@row("1-train-resume-truncated-checkpoint")
def _(tmp, f, dataset):
    out = tmp / "run"
    out.mkdir()
    (out / "checkpoint_last.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"x\"")
    return Case(["train", str(dataset), "--out", str(out), "--resume", "--steps", "2", "--quiet"], 2,
                r"checkpoint .* cannot be read \(truncated", watch=out)


@row("1-train-resume-other-architecture", slow=True)
def _(tmp, f, dataset):
    from XraySegInferLib.entry import main

    out = tmp / "run"
    quick = ["--recipe", "quick", "--patch-size", "32", "--threads", "1", "--quiet", "--val-every", "2"]
    assert main(["train", str(dataset), "--out", str(out), "--steps", "2", *quick]) == 0
    assert (out / "checkpoint_last.safetensors").is_file() and not list(out.glob("*.pt"))
    return Case(["train", str(dataset), "--out", str(out), "--resume", "--steps", "4", "--channels", "4", "8",
                 *quick], 2, r"cannot resume from .*checkpoint_last.safetensors: it was trained with architecture",
                watch=out)


def _nnunet_folder(tmp: Path, marker: Path) -> Path:
    results = tmp / "nnUNetTrainer__nnUNetPlans__2d"
    results.mkdir()
    (results / "plans.json").write_text(json.dumps({"dataset_name": "x", "configurations": {}}))
    (results / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "rib": 1}}))
    crafted_pickle(results / "fold_0" / "checkpoint_final.pth", marker)
    return results


@row("2-infer-nnunet-crafted-pickle")
def _(tmp, f, dataset):
    results = _nnunet_folder(tmp, tmp / "PWNED")
    return Case(["infer", str(f["xray.png"]), "--model", str(results), "--out", str(tmp / "out")], 2,
                r"refusing to load this nnU-Net checkpoint: torch.load\(weights_only=True\) cannot read it.*"
                r"(builtins|io).open.*--trust-pickle",
                lambda: _assert(not (tmp / "PWNED").exists() and not (tmp / "out").exists()))


@row("2-infer-nnunet-trust-pickle-overrides", slow=True)
def _(tmp, f, dataset):
    pytest.importorskip("nnunetv2")
    results = _nnunet_folder(tmp, tmp / "PWNED")
    # The override does unpickle (the marker appears: the refusal above is what protects), warns, and the broken
    # folder still ends in one line.
    return Case(["infer", str(f["xray.png"]), "--model", str(results), "--out", str(tmp / "out"), "--trust-pickle"],
                2, r"warning: --trust-pickle: unpickling(.|\n)*nnU-Net could not load this results folder",
                lambda: _assert((tmp / "PWNED").exists() and not (tmp / "out").exists()), subprocess=True)


@row("3-export-resume-other-ct-same-name-elsewhere")
def _(tmp, f, dataset):
    from XraySegInferLib.entry import main

    out = tmp / "out"
    assert main(export_args(f["ct"], f["labels"], out)) == 0
    return Case(export_args(f["other_ct"], f["labels"], out, "--resume"), 2,
                r"cannot resume .*: the CT of ct was .*ct.nii.gz \(sha256 [0-9a-f]{12}\.\.\.\) and is now "
                r".*other/ct.nii.gz.*nothing was changed", watch=out)


@row("3-export-resume-ct-overwritten-in-place")
def _(tmp, f, dataset):
    import shutil

    from XraySegInferLib.entry import main

    out, ct = tmp / "out", tmp / "ct.nii.gz"
    shutil.copyfile(f["ct"], ct)
    assert main(export_args(ct, f["labels"], out)) == 0
    shutil.copyfile(f["other_ct"], ct)  # same path, other content
    return Case(export_args(ct, f["labels"], out, "--resume"), 2, r"the CT of ct was .*\(sha256 .*and is now", watch=out)


@row("4-constant-radiograph")
def _(tmp, f, dataset):
    return Case(["infer", str(f["constant.png"]), "--model", str(f["package"]), "--out", str(tmp / "out")], 2,
                r"constant image \(every pixel 90\)", lambda: _assert(not (tmp / "out").exists()))


@row("4-tiny-radiograph")
def _(tmp, f, dataset):
    return Case(["infer", str(f["tiny.png"]), "--model", str(f["package"]), "--out", str(tmp / "out")], 2,
                r"8x8 pixels is too small to be a radiograph", lambda: _assert(not (tmp / "out").exists()))


def _edited_card(tmp, f, edit) -> Case:
    package = copy_package(f["package"], tmp / "package")
    card = json.loads((package / "model.json").read_text())
    edit(card)
    (package / "model.json").write_text(json.dumps(card))
    return Case(["infer", str(f["xray.png"]), "--model", str(package), "--out", str(tmp / "out")], 2,
                r"model.json: SHA-256 .* does not match the manifest.*the model card was edited.*xrayseg seal-model",
                lambda: _assert(not (tmp / "out").exists()))


@row("4-model-card-permuted-class-names")
def _(tmp, f, dataset):
    def permute(card):
        card["classes"][0]["name"], card["classes"][1]["name"] = card["classes"][1]["name"], card["classes"][0]["name"]
    return _edited_card(tmp, f, permute)


@row("4-model-card-other-pixel-spacing")
def _(tmp, f, dataset):
    return _edited_card(tmp, f, lambda card: card["input"].update(pixel_spacing_mm=[0.5, 0.5]))


@row("4-model-card-edit-sealed-on-purpose-loads")
def _(tmp, f, dataset):
    from XraySegInferLib.entry import main

    package = copy_package(f["package"], tmp / "package")
    card = json.loads((package / "model.json").read_text())
    card["description"] = "edited on purpose"
    (package / "model.json").write_text(json.dumps(card))
    assert main(["seal-model", str(package)]) == 0
    return Case(["infer", str(f["xray.png"]), "--model", str(package), "--out", str(tmp / "out"),
                 "--spacing", "1", "1"], 0, "",
                lambda: _assert((tmp / "out" / "segmentation.json").is_file()))


@row("4-ct-full-of-nan")
def _(tmp, f, dataset):
    return Case(["render", "--ct", str(f["nan_ct"]), "--size", "32", "--out", str(tmp / "out")], 2,
                r"64000 of 64000 voxels are NaN or infinite", lambda: _assert(not (tmp / "out").exists()))


def _geometry(tmp, f) -> dict:
    from XraySegInferLib.entry import main

    assert main(["render", "--ct", str(f["ct"]), "--size", "32", "--out", str(tmp / "ref")]) == 0
    return json.loads((tmp / "ref" / "drr.json").read_text())["geometry"]


@row("4-detector-behind-source")
def _(tmp, f, dataset):
    g = _geometry(tmp, f)
    s, d = np.array(g["source_ras"]), np.array(g["detector_center_ras"])
    (tmp / "g.json").write_text(json.dumps(dict(g, detector_center_ras=(2 * s - d).tolist())))
    return Case(["render", "--ct", str(f["ct"]), "--geometry", str(tmp / "g.json"), "--out", str(tmp / "out")], 2,
                r"the CT lies behind the source", lambda: _assert(not (tmp / "out").exists()))


@row("4-flipped-projection-matrix")
def _(tmp, f, dataset):
    g = _geometry(tmp, f)
    p = np.array(g["projection_matrix"])
    p[0] = -p[0]  # mirrored columns: P puts the detector beside the CT
    np.savetxt(tmp / "p.txt", p)
    spacing = [str(s) for s in g["detector_spacing_mm"]]
    return Case(["render", "--ct", str(f["ct"]), "--projection-matrix", str(tmp / "p.txt"), "--pixel-spacing",
                 *spacing, "--detector-pixels", "32", "32", "--out", str(tmp / "out")], 2,
                r"the CT projects outside the detector", lambda: _assert(not (tmp / "out").exists()))


@row("5-rerender-without-labels-leaves-no-stale-files")
def _(tmp, f, dataset):
    from XraySegInferLib.entry import main

    out = tmp / "out"
    assert main(["render", "--ct", str(f["ct"]), "--labels", str(f["labels"]), "--size", "32", "--out", str(out)]) == 0
    assert (out / "labels.seg.nrrd").is_file()
    return Case(["render", "--ct", str(f["ct"]), "--size", "32", "--out", str(out)], 0, "",
                lambda: _assert(sorted(p.name for p in out.iterdir()) == ["drr.json", "drr.nrrd", "drr.png"]
                                and json.loads((out / "drr.json").read_text())["labels"] is None
                                and not [p for p in tmp.iterdir() if p.name.startswith(".")]))


@row("5-render-failing-midway-keeps-the-old-render")
def _(tmp, f, dataset):
    from XraySegInferLib.entry import main

    out = tmp / "out"
    assert main(["render", "--ct", str(f["ct"]), "--labels", str(f["labels"]), "--size", "32", "--out", str(out)]) == 0
    # The same render once without a limit, so that numba's kernel cache is written before the limit applies.
    assert main(["render", "--ct", str(f["ct"]), "--size", "128", "--out", str(tmp / "warm")]) == 0
    # A file-size limit makes the OS refuse the writes part-way, as a full disk does.
    return Case(["render", "--ct", str(f["ct"]), "--size", "128", "--out", str(out)], 2,
                r"render not written: File too large.*is unchanged", watch=out,
                after=lambda: _assert(not [p for p in tmp.iterdir() if p.name.startswith(".")]),
                env={"file_size_limit": 1000})


@row("5-render-refuses-a-folder-of-other-files")
def _(tmp, f, dataset):
    out = tmp / "out"
    out.mkdir()
    (out / "thesis.docx").write_text("months of work")
    return Case(["render", "--ct", str(f["ct"]), "--size", "32", "--out", str(out)], 2,
                r"holds files that are not an earlier render's \(e.g. thesis.docx\)", watch=out)


@row("5-rerender-into-a-writable-out-whose-parent-is-not")
def _(tmp, f, dataset):
    from XraySegInferLib.entry import main

    if os.geteuid() == 0:
        pytest.skip("root may write anywhere: the fallback is not reached")
    parent, out = tmp / "shared", tmp / "shared" / "mine"
    out.mkdir(parents=True)
    assert main(["render", "--ct", str(f["ct"]), "--labels", str(f["labels"]), "--size", "32", "--out", str(out)]) == 0
    parent.chmod(0o555)  # the render is staged inside --out and swapped in file by file
    return Case(["render", "--ct", str(f["ct"]), "--size", "32", "--out", str(out)], 0, "",
                lambda: _assert(sorted(p.name for p in out.iterdir()) == ["drr.json", "drr.nrrd", "drr.png"]))


@row("6-infer-batch-same-base-names-and-a-bad-file")
def _(tmp, f, dataset):
    d = f["xray.png"].parent
    out = tmp / "out"
    return Case(["infer", str(d / "a" / "chest.png"), str(f["text.dcm"]), str(d / "b" / "chest.png"), "--model",
                 str(f["package"]), "--out", str(out), "--spacing", "1", "1"], 2,
                r"text.dcm: not a DICOM file(.|\n)*1 of 3 radiographs failed",
                lambda: _assert(sorted(p.name for p in out.iterdir()) == ["a_chest", "b_chest"]
                                and json.loads((out / "a_chest" / "segmentation.json").read_text())["input"]
                                != json.loads((out / "b_chest" / "segmentation.json").read_text())["input"]))


def _export_subprocess(tmp, f, *more) -> tuple[subprocess.Popen, Path]:
    out = tmp / "out"
    args = export_args(f["ct"], f["labels"], out, *more)
    args[args.index("--views-per-ct") + 1] = "40"
    args[args.index("--size") + 1] = "96"
    proc = subprocess.Popen(XRAYSEG + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, start_new_session=True)
    return proc, out / "Dataset501_XraySeg"


def _wait_for_sidecars(root: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = len(list((root / "sidecars").glob("*.json"))) if (root / "sidecars").is_dir() else 0
        if count >= n:
            return count
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("export made no progress")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the workers")
def test_7_workers_die_with_a_killed_parent(files, tmp_path):
    """kill -9 of `export --workers 2` on two CTs (both workers busy): no worker survives, nothing more is written.
    (That the interrupted dataset then resumes to the uninterrupted one: test_export and the held rows.)"""
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"ct,labels,id\n{files['ct']},{files['labels']},one\n{files['other_ct']},{files['labels']},two\n")
    args = ["export", "--pairs", str(pairs), "--size", "64", "--views-per-ct", "60", "--physics", "none",
            "--test-fraction", "0", "--quiet", "--threads", "1", "--workers", "2", "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(XRAYSEG + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    root = tmp_path / "out" / "Dataset501_XraySeg"
    _wait_for_sidecars(root, 2, proc)
    workers = _children(proc.pid)
    assert len(workers) >= 2  # the pool (and its resource tracker)
    proc.kill()  # kill -9 of the coordinator
    proc.wait()
    time.sleep(2.0)  # the watchdog polls every 0.5 s; PR_SET_PDEATHSIG is immediate
    alive = [w for w in workers if Path(f"/proc/{w}").exists() and "zombie" not in _state(w)]
    count = len(list((root / "sidecars").glob("*.json")))
    time.sleep(1.5)
    assert alive == [] and len(list((root / "sidecars").glob("*.json"))) == count < 120  # nobody writes any more


def _state(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}") / "status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_8_a_signal_stops_export_cleanly_after_the_current_sample(files, tmp_path, signum):
    proc, root = _export_subprocess(tmp_path, files)
    _wait_for_sidecars(root, 2, proc)
    os.killpg(proc.pid, signum)  # as a terminal's Ctrl-C does: the whole process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert re.search(rf"interrupted by {signal.Signals(signum).name}: \d+ of 40 samples complete; the dataset .* is "
                     r"finalised with them and resumable: rerun the same command with --resume", err), err
    done = len(list((root / "sidecars").glob("*.json")))
    assert 2 <= done < 40
    dataset = json.loads((root / "dataset.json").read_text())
    assert dataset["numTraining"] == done and len(list((root / "labelsTr").glob("*.nrrd"))) == done
    assert not list(root.rglob(".*.part"))


def _assert(condition: bool) -> None:
    assert condition


@row("9-size-zero")
def _(tmp, f, dataset):
    return Case(["render", "--ct", str(f["ct"]), "--size", "0", "--out", str(tmp / "out")], 2,
                r"--size must be at least 8 pixels, got 0", lambda: _assert(not (tmp / "out").exists()))


@row("9-detector-mm-zero")
def _(tmp, f, dataset):
    return Case(["render", "--ct", str(f["ct"]), "--detector-mm", "0", "0", "--out", str(tmp / "out")], 2,
                r"--detector-mm must be positive")


@row("9-export-size-zero")
def _(tmp, f, dataset):
    return Case(export_args(f["ct"], f["labels"], tmp / "out", "--size", "0"), 2, r"--size must be at least 8",
                lambda: _assert(not (tmp / "out").exists()))


@row("9-train-zero-steps-or-batch")
def _(tmp, f, dataset):
    return Case(["train", str(dataset), "--out", str(tmp / "run"), "--val-every", "0", "--quiet"], 2,
                r"training option val_every must be a whole number >= 1, got 0",
                lambda: _assert(not (tmp / "run").exists()))


@row("9-infer-overlap-out-of-range")
def _(tmp, f, dataset):
    return Case(["infer", str(f["xray.png"]), "--model", str(f["package"]), "--out", str(tmp / "out"), "--overlap",
                 "3"], 2, r"--overlap must be in \[0, 1\), got 3.0", lambda: _assert(not (tmp / "out").exists()))


@row("9-truncated-nifti")
def _(tmp, f, dataset):
    return Case(["render", "--ct", str(f["truncated_ct"]), "--out", str(tmp / "out")], 2,
                r"cannot be read .*the file is truncated or corrupt", lambda: _assert(not (tmp / "out").exists()))


@row("9-garbage-geometry-json")
def _(tmp, f, dataset):
    (tmp / "g.json").write_text("{ this is not json")
    return Case(["render", "--ct", str(f["ct"]), "--geometry", str(tmp / "g.json"), "--out", str(tmp / "out")], 2,
                r"--geometry .* is not a geometry JSON")


@row("9-garbage-projection-matrix")
def _(tmp, f, dataset):
    (tmp / "p.txt").write_text("1 2 3\n4 5 6\n")
    return Case(["render", "--ct", str(f["ct"]), "--projection-matrix", str(tmp / "p.txt"), "--pixel-spacing", "1",
                 "1", "--out", str(tmp / "out")], 2, r"expected 3 rows of 4 finite numbers, got 6 values")


@row("9-out-is-a-file")
def _(tmp, f, dataset):
    (tmp / "out").write_text("keep me")
    return Case(["render", "--ct", str(f["ct"]), "--size", "32", "--out", str(tmp / "out")], 2,
                r"--out .* is a file; give a folder", lambda: _assert((tmp / "out").read_text() == "keep me"))


@row("9-export-out-is-a-file")
def _(tmp, f, dataset):
    (tmp / "out").write_text("keep me")
    return Case(export_args(f["ct"], f["labels"], tmp / "out"), 2, r"--out .* is a file",
                lambda: _assert((tmp / "out").read_text() == "keep me"))


@row("9-out-read-only")
def _(tmp, f, dataset):
    if os.geteuid() != 0:
        (tmp / "ro").mkdir()
        (tmp / "ro").chmod(0o555)
        out = tmp / "ro" / "out"
    elif Path("/sys/kernel").is_dir():  # root writes into read-only folders, but nobody creates folders in sysfs
        out = Path("/sys/xrayseg-safety-test/out")
    else:
        pytest.skip("no folder here that this user cannot write")
    return Case(["render", "--ct", str(f["ct"]), "--size", "32", "--out", str(out)], 2,
                r"cannot create the render folder .*(permission denied|read-only)")


@row("9-device-cuda-on-a-cpu-build-falls-back", slow=True)
def _(tmp, f, dataset):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    return Case(["infer", str(f["xray.png"]), "--model", str(f["package"]), "--out", str(tmp / "out"), "--device",
                 "cuda", "--spacing", "1", "1"], 0, r"warning: device 'cuda' is not available here.*on the CPU",
                lambda: _assert((tmp / "out" / "segmentation.json").is_file()), subprocess=True)


@row("10-text-file-named-dcm")
def _(tmp, f, dataset):
    return Case(["infer", str(f["text.dcm"]), "--model", str(f["package"]), "--out", str(tmp / "out")], 2,
                r"text.dcm: not a DICOM file \(no 'DICM' marker and no DICOM elements\)")


@row("10-missing-label-file-in-dataset")
def _(tmp, f, dataset):
    import shutil

    copy = tmp / dataset.name
    shutil.copytree(dataset, copy)
    for folder in ("masksTr", "labelsTr"):
        next((copy / folder).glob("*.nrrd")).unlink()
    return Case(["train", str(copy), "--out", str(tmp / "run"), "--steps", "1", "--quiet"], 2,
                r"case phantom\w+ has no masks or label image(?!.*None); export the dataset again")


@row("10-duplicate-class-name")
def _(tmp, f, dataset):
    return Case(export_args(f["ct"], f["labels"], tmp / "out", "--classes", "bone = sternum; bone = vertebrae_T6"), 2,
                r"the class 'bone' is defined twice", lambda: _assert(not (tmp / "out").exists()))


@row("10-duplicate-class-name-json")
def _(tmp, f, dataset):
    (tmp / "m.json").write_text('{"classes": {"bone": ["sternum"], "bone": ["vertebrae_T6"]}}')
    return Case(export_args(f["ct"], f["labels"], tmp / "out", "--classes", str(tmp / "m.json")), 2,
                r"the class 'bone' is defined twice")


@row("10-absurd-label-value")
def _(tmp, f, dataset):
    return Case(["render", "--ct", str(f["ct"]), "--labels", str(f["huge_labels"]), "--classes", "all", "--size", "32",
                 "--out", str(tmp / "out")], 2, r"the label map holds the value 2147483647, beyond 65535")


# ---- what held, so that it keeps holding ------------------------------------------------------------------------


@row("held-export-resume-other-seed-refused")
def _(tmp, f, dataset):
    from XraySegInferLib.entry import main

    out = tmp / "out"
    assert main(export_args(f["ct"], f["labels"], out)) == 0
    return Case(export_args(f["ct"], f["labels"], out, "--resume", "--seed", "7"), 2,
                r"cannot resume .*its config differ", watch=out)


@row("held-export-resume-completes-an-interrupted-export")
def _(tmp, f, dataset):
    from XraySegInferLib.entry import main

    out = tmp / "out"
    assert main(export_args(f["ct"], f["labels"], out)) == 0
    root = out / "Dataset501_XraySeg"
    whole = snapshot(root)
    for name in ("sidecars/ct_v0001.json", "imagesTr/ct_v0001_0000.nrrd"):
        (root / name).unlink()  # as a kill -9 mid-sample leaves it
    (root / "imagesTr" / ".ct_v0001_0000.nrrd.x.part").write_bytes(b"half")

    def same():
        now = snapshot(root)
        for key in ("export.json", "manifest.csv"):  # times and order may differ; the rest is identical
            now.pop(key), whole.pop(key, None)
        assert {k: v for k, v in now.items() if not k.startswith("sidecars")} == \
            {k: v for k, v in whole.items() if not k.startswith("sidecars")}
        assert sorted(now) == sorted(whole)
    return Case(export_args(f["ct"], f["labels"], out, "--resume"), 0, "", same)


@row("held-training-resume-is-bit-identical", slow=True)
def _(tmp, f, dataset):
    """Interrupted mid-training (an asynchronous Ctrl-C as soon as a checkpoint exists), then --resume: the same
    weights, optimiser moments and random state as a straight run."""
    import torch
    from safetensors.torch import load_file

    from XraySegInferLib.checkpoints import load_checkpoint
    from XraySegInferLib.training import TrainConfig, train

    arch = {"name": "UNet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0, "norm": "instance"}
    config = TrainConfig(architecture=arch, patch_size=32, batch_size=2, steps=30, val_every=2, threads=1, seed=0)
    threads = torch.get_num_threads()
    quiet = {"progress": False, "log": lambda *_: None}
    train(dataset, tmp / "straight", config, **quiet)
    checkpoint = tmp / "killed" / "checkpoint_last.safetensors"

    def interrupt(*_):
        if not checkpoint.is_file():
            return signal.setitimer(signal.ITIMER_REAL, 0.005)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.005)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(dataset, tmp / "killed", config, **quiet)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    killed_at = load_checkpoint(checkpoint)["step"]
    assert killed_at < 30 and not list(checkpoint.parent.glob(".*.part"))  # interrupted; nothing half-written
    train(dataset, tmp / "killed", config, resume=True, **quiet)
    torch.set_num_threads(threads)
    a = load_file(str(tmp / "straight" / "checkpoint_last.safetensors"))
    b = load_file(str(checkpoint))
    assert a.keys() == b.keys() and all(torch_equal(a[k], b[k]) for k in a), killed_at
    return None


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


@row("held-clean-nnunet-checkpoint-with-numpy-scalars-is-accepted")
def _(tmp, f, dataset):
    import torch

    from XraySegInferLib.nnunet import check_checkpoint_is_safe

    path = tmp / "checkpoint_final.pth"
    torch.save({"network_weights": {"w": torch.ones(2)}, "trainer_name": "nnUNetTrainer",
                "logging": {"ema_fg_dice": [np.float64(0.5), np.float32(0.25)]}, "axes": (0, 1)}, path)
    assert check_checkpoint_is_safe(path)
    return None


@row("held-evaluate-update-card-keeps-the-package-loadable")
def _(tmp, f, dataset):
    from XraySegInferLib.networks import build_network
    from XraySegInferLib.package import make_card, save_package
    from XraySegInferLib.synthetic import CLASS_NAMES, COLORS

    card = make_card(name="phantom", architecture=ARCH, mode="multilabel",
                     classes=[{"name": n, "color": c} for n, c in zip(CLASS_NAMES, COLORS)], spacing_mm=(4.0, 4.0),
                     patch_size=(32, 32), normalization={"window_percentiles": [0.5, 99.5], "gamma": 1.0})
    package = save_package(tmp / "package", build_network(ARCH, len(CLASS_NAMES), "multilabel"), card)

    def loads():
        from XraySegInferLib.package import load_package

        card = load_package(package).card  # the manifest was rewritten with the card
        assert "mean_dice" in card["metrics"]["train"]
    return Case(["evaluate", str(dataset), "--model", str(package), "--split", "train", "--no-hd95", "--update-card",
                 "--out", str(tmp / "eval")], 0, "", loads)


@row("held-disk-space-checked-up-front")
def _(tmp, f, dataset):
    out = tmp / "out"
    # 10^6 samples of 4096^2 px need far more than any disk: refused before a single file is written.
    return Case(export_args(f["ct"], f["labels"], out, "--views-per-ct", "1000000", "--size", "4096"), 2,
                r"not enough disk space in .*needs about \d+\.\d+ GB",
                lambda: _assert(not list(out.rglob("*.nrrd")) and not list(out.rglob("export.json"))))


@row("held-corrupt-weights-refused")
def _(tmp, f, dataset):
    package = copy_package(f["package"], tmp / "package")
    data = bytearray((package / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (package / "model.safetensors").write_bytes(bytes(data))
    return Case(["infer", str(f["xray.png"]), "--model", str(package), "--out", str(tmp / "out")], 2,
                r"model.safetensors: SHA-256 .* does not match.*corrupt", lambda: _assert(not (tmp / "out").exists()))


@row("held-zip-path-traversal-refused")
def _(tmp, f, dataset):
    import zipfile

    from XraySegInferLib.errors import ModelPackageError
    from XraySegInferLib.models import import_model

    with zipfile.ZipFile(tmp / "evil.zip", "w") as archive:
        archive.writestr("../../escaped.txt", "x")
        archive.writestr("pkg/model.json", "{}")
    with pytest.raises(ModelPackageError, match="unsafe path in the zip"):
        import_model(tmp / "evil.zip", tmp / "cache")
    assert not (tmp / "escaped.txt").exists() and not (tmp.parent / "escaped.txt").exists()
    return None


@pytest.mark.parametrize("make", list(ROWS.values()))
def test_table(make, files, dataset, tmp_path, capsys):
    case = make(tmp_path, files, dataset)
    if case is None:  # a row that asserted everything itself
        return
    before = snapshot(case.watch) if case.watch else None
    if case.env.get("file_size_limit") or case.subprocess:
        status, err = _run_limited(case.argv, case.env.get("file_size_limit"))
    else:
        from XraySegInferLib.entry import main

        capsys.readouterr()
        status = main(case.argv)
        err = capsys.readouterr().err
    assert status == case.status, err
    assert "Traceback" not in err
    if case.message:
        assert re.search(case.message, err), err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert bool(errors) == (case.status != 0), err
    assert all(len(line) < 700 for line in err.splitlines() if "error:" in line or "warning:" in line)  # one line
    if case.watch is not None:
        assert snapshot(case.watch) == before, "the command changed files it must not touch"
    if case.after is not None:
        case.after()
    elif case.status != 0 and case.watch is None:  # a refused command leaves no output at all
        out = Path(case.argv[case.argv.index("--out") + 1])
        assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()], sorted(out.rglob("*"))


def _run_limited(argv: list[str], limit: int | None) -> tuple[int, str]:
    """``xrayseg`` as a process, optionally with a file-size limit."""
    import resource

    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(XRAYSEG + argv, capture_output=True, text=True, preexec_fn=preexec if limit else None,
                          cwd=REPO, timeout=300)
    return done.returncode, done.stderr


# ---- static checks ----------------------------------------------------------------------------------------------


def test_11_tests_and_benchmarks_leave_the_readme_pictures_alone():
    """Item 11: only `make screenshots` (tools/screenshots.py) writes Resources/Screenshots/."""
    offenders = []
    for path in [*(REPO / "Testing" / "Python").glob("*.py"), *(REPO / "bench").glob("*.py")]:
        if path.name != Path(__file__).name and "Screenshots" in path.read_text():
            offenders.append(path.name)
    assert offenders == []
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^screenshots:", makefile, re.M)


def test_held_no_eval_exec_shell_or_unsafe_load_in_the_libraries():
    pattern = re.compile(r"(?<![.\w])(eval|exec)\(|shell\s*=\s*True|weights_only\s*=\s*False|pickle\.loads?\(")
    found = []
    for lib in ("XraySegSim/XraySegSimLib", "XraySegInfer/XraySegInferLib"):
        for path in (REPO / lib).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line) and not line.lstrip().startswith(("#", "nnU-Net checkpoints are")):
                    found.append(f"{path.name}:{number}: {line.strip()}")
    # The one unpickling call is behind an explicit --trust-pickle (checkpoints.load_legacy_checkpoint).
    assert [f for f in found if not f.startswith("checkpoints.py")] == []
    assert len([f for f in found if f.startswith("checkpoints.py")]) == 1


def test_held_one_entry_point_and_sim_never_imports_infer():
    """`xrayseg` is XraySegInferLib.entry: every subcommand has a handler; XraySegSimLib imports nothing of Infer."""
    import argparse

    from XraySegInferLib.entry import build_parser

    def without_handler(parser, prefix=""):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return [] if callable(parser.get_default("handler")) else [prefix]
        return [m for name, child in subs[0].choices.items() for m in without_handler(child, f"{prefix} {name}")]

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"render", "export", "train", "infer", "seal-model"} <= set(sub.choices)
    assert without_handler(build_parser()) == []
    pattern = re.compile(r"^\s*(from|import)\s+XraySegInferLib", re.M)
    assert [p.name for p in (REPO / "XraySegSim" / "XraySegSimLib").rglob("*.py") if pattern.search(p.read_text())] \
        == []
