"""Issue 12: what already held, so that it keeps holding (resume checks, bit-identical training resume, safe
checkpoints and zips, disk space), and static checks of the libraries (see ``safety_table``)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from safety_table import ARCH, Case, copy_package, expect, export_args, new_table, run_row, snapshot
from safety_table import dataset, files  # noqa: F401 (fixtures)

ROWS, row = new_table()


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
                lambda: expect(not list(out.rglob("*.nrrd")) and not list(out.rglob("export.json"))))


@row("held-corrupt-weights-refused")
def _(tmp, f, dataset):
    package = copy_package(f["package"], tmp / "package")
    data = bytearray((package / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (package / "model.safetensors").write_bytes(bytes(data))
    return Case(["infer", str(f["xray.png"]), "--model", str(package), "--out", str(tmp / "out")], 2,
                r"model.safetensors: SHA-256 .* does not match.*corrupt", lambda: expect(not (tmp / "out").exists()))


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
    run_row(make, files, dataset, tmp_path, capsys)


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
