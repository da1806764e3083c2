"""The table of issue 12's safety tests (test_safety*.py): its fixtures (small real files, a tiny dataset),
the ``Case`` a row returns, one registry of rows per test module, and how a row is run through the real
``xrayseg`` command (``entry.main`` in this process, or a subprocess where a signal, a kill or a file-size limit
is involved): the exit status, the one-line message (no traceback), and what is on disk afterwards."""

from __future__ import annotations

import builtins
import hashlib
import re
import signal
import subprocess
import sys
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


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
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


def new_table() -> tuple[dict[str, Callable], Callable]:
    """(rows, row): a test module's registry of rows and its decorator ``@row(name, slow=False)``."""
    rows: dict[str, Callable] = {}

    def row(name: str, slow: bool = False):
        def register(fn):
            rows[name] = pytest.param(fn, id=name, marks=[pytest.mark.slow] if slow else [])
            return fn
        return register
    return rows, row


def expect(condition: bool) -> None:
    assert condition


def run_row(make, files, dataset, tmp_path, capsys) -> None:
    """Build the row's case in ``tmp_path`` and check it (see the module docstring)."""
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

