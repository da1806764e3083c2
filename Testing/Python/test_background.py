"""The background-process runner (XraySegSimLib.background): real ``xrayseg`` runs in a child process.

* a render runs to completion through the runner and its files equal those of the same command run in-process;
* an export cancelled midway (after its tqdm bar reported finished samples) leaves no output folder, staged or
  final, and no process of its group;
* ``kill -9`` of the child, a crash and an out-of-memory error each end in one clear line with the child's last
  stderr line; the CLI's own one-line error (exit status 2) is passed on as it is.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from XraySegSimLib.background import BackgroundProcess, RunState, parse_progress, xrayseg_argv
from conftest import grid_volume, voxel_centers_ras, write_image

posix_only = pytest.mark.skipif(os.name != "posix", reason="process groups and signals as POSIX has them")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A small CT (NIfTI) with a sternum and a spine and their TotalSegmentator labels (NRRD)."""
    folder = tmp_path_factory.mktemp("phantom")
    volume = grid_volume(np.full((40, 48, 56), -1000.0, np.float32), 1.0)
    centres = voxel_centers_ras(volume) - volume.center_ras
    body = np.linalg.norm(centres / (24, 20, 18), axis=-1) < 1
    sternum = np.linalg.norm(centres - (0, 12, 0), axis=-1) < 5
    spine = np.linalg.norm(centres[..., :2] - (0, -10), axis=-1) < 6
    volume.array[body] = 40.0
    volume.array[sternum | spine] = 900.0
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[sternum], labels[spine] = 116, 38  # sternum, vertebrae_T6
    return (write_image(volume.array, volume.ijk_to_ras, folder / "ct.nii.gz"),
            write_image(labels, volume.ijk_to_ras, folder / "labels.nrrd"))


def export_argv(phantom, views: int = 400, quiet: bool = False) -> list[str]:
    ct, labels = phantom
    return xrayseg_argv("export", "--ct", ct, "--labels", labels, "--views-per-ct", str(views), "--size", "48",
                        "--physics", "none", "--no-previews", "--threads", "1", "--out", "{out}",
                        *(["--quiet"] if quiet else []))


def wait_for(run: BackgroundProcess, condition, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = run.poll()
        if condition(status):
            return status
        assert status.state is RunState.RUNNING, status.message
        time.sleep(0.05)
    raise AssertionError(f"no such status within {timeout_s} s: {run.poll()}")


def test_parse_progress_reads_tqdm_bars():
    text = "\rexport:   0%|          | 0/30 [00:00<?, ?sample/s]\rexport:   7%|▋         | 2/30 [00:07<01:47]"
    progress = parse_progress(text)
    assert (progress.done, progress.total, progress.label) == (2, 30, "export")
    assert progress.fraction == pytest.approx(2 / 30)
    assert parse_progress("rendered 64x64 chest-pa with 2 classes in 46 ms") is None


@pytest.mark.slow
def test_a_render_runs_to_completion_and_matches_the_in_process_run(phantom, tmp_path):
    import SimpleITK as sitk

    from XraySegInferLib.entry import main

    ct, labels = phantom
    arguments = ["render", "--ct", str(ct), "--labels", str(labels), "--size", "48", "--view", "chest-lateral"]
    final = tmp_path / "render"
    run = BackgroundProcess(xrayseg_argv(*arguments, "--out", "{out}"), final).start()
    staged = run.staging_dir
    assert staged is not None and staged.parent == tmp_path and not final.exists()
    status = run.wait(timeout=300)
    assert status.state is RunState.SUCCEEDED, status.message
    assert status.returncode == 0 and status.output_dir == final
    assert status.stdout_tail[-1].startswith("rendered 48x") and status.stdout_tail[-1].endswith(str(staged))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["render"]  # staged folder renamed, nothing else left
    assert main([*arguments, "--out", str(tmp_path / "direct")]) == 0
    assert sorted(p.name for p in final.iterdir()) == sorted(p.name for p in (tmp_path / "direct").iterdir())
    for name in ("drr.nrrd", "labels.seg.nrrd"):
        child = sitk.GetArrayFromImage(sitk.ReadImage(str(final / name)))
        direct = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "direct" / name)))
        assert child.shape == direct.shape and np.array_equal(child, direct)
    with pytest.raises(FileExistsError, match="already exists"):
        BackgroundProcess(xrayseg_argv(*arguments, "--out", "{out}"), final).start()


@posix_only
@pytest.mark.slow
def test_cancel_midway_leaves_no_output_and_no_process(phantom, tmp_path):
    final = tmp_path / "dataset"
    run = BackgroundProcess(export_argv(phantom), final).start()
    status = wait_for(run, lambda s: (s.progress.done or 0) >= 1)
    assert status.progress.total == 400 and status.progress.label == "export" and status.progress.fraction < 1
    staged = run.staging_dir
    assert any(p.is_file() for p in staged.rglob("*"))  # the export had written files when we cancelled
    status = run.cancel()
    assert status.state is RunState.CANCELLED and "cancelled" in status.message
    assert not staged.exists() and not final.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ProcessLookupError):
        os.killpg(run.pid, 0)  # no process of its group is left
    assert run.poll() is status and run.cancel() is status  # finished runs stay finished


@posix_only
@pytest.mark.slow
def test_kill_9_of_the_child_gives_a_clear_message(phantom, tmp_path):
    run = BackgroundProcess(export_argv(phantom), tmp_path / "dataset").start()
    wait_for(run, lambda s: s.progress.total is not None)
    os.kill(run.pid, signal.SIGKILL)
    status = run.wait(timeout=60)
    assert status.state is RunState.FAILED and status.returncode == -signal.SIGKILL
    assert status.message.startswith("xrayseg export was killed (SIGKILL), e.g. by the system when memory ran out")
    assert "at export " in status.message and "/400" in status.message and "\n" not in status.message
    assert list(tmp_path.iterdir()) == []


@posix_only
def test_a_crash_reports_the_last_stderr_line(tmp_path):
    script = ("import os, signal, sys\n"
              "print('loading the model', file=sys.stderr, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGSEGV)\n")
    run = BackgroundProcess([sys.executable, "-c", script], tmp_path / "out", name="segmentation").start()
    status = run.wait(timeout=60)
    assert status.state is RunState.FAILED
    assert status.message == "segmentation was stopped by SIGSEGV: loading the model"
    assert list(tmp_path.iterdir()) == []


def test_next_stages_share_the_staged_folder_and_one_that_cannot_start_leaves_nothing(tmp_path):
    """Stages run in order in one staged folder, renamed once the last one exits 0; a later stage whose program
    is not there ends the run FAILED in one line (no exception out of poll(), no staged folder left)."""
    first = [sys.executable, "-c", "import sys; open(sys.argv[1] + '/a.txt', 'w').write('1')", "{out}"]
    second = [sys.executable, "-c", "import pathlib, sys; d = pathlib.Path(sys.argv[1]); "
              "(d / 'b.txt').write_text(str(int((d / 'a.txt').read_text()) + 1))", "{out}"]
    status = BackgroundProcess(first, tmp_path / "ok", next_stages=[second], name="two steps").start().wait(60)
    assert status.state is RunState.SUCCEEDED and status.output_dir == tmp_path / "ok"
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["a.txt", "b.txt"]
    assert (tmp_path / "ok" / "b.txt").read_text() == "2" and sorted(tmp_path.iterdir()) == [tmp_path / "ok"]

    missing = str(tmp_path / "no-such-program")
    run = BackgroundProcess(first, tmp_path / "bad", next_stages=[[missing, "{out}"]], name="two steps").start()
    status = run.wait(timeout=60)
    assert status.state is RunState.FAILED and status.returncode == 0
    assert status.message.startswith("two steps could not start step 2/2: ") and missing in status.message
    assert "\n" not in status.message and sorted(tmp_path.iterdir()) == [tmp_path / "ok"]
    assert run.poll() is status  # final


@pytest.mark.parametrize("percent_lines", [True, False])
def test_percent_lines_are_progress_spread_over_the_stages(tmp_path, percent_lines):
    """The label jobs' progress: "  45% affine" on stderr in step 2 of 2 is 0.725 of the run, labelled, and no
    message line; without ``percent_lines`` the run is busy (fraction None) and the line is a message."""
    gate = tmp_path / "gate"
    second = [sys.executable, "-c", "import pathlib, sys, time\nprint('  45% affine', file=sys.stderr, flush=True)\n"
              "while not pathlib.Path(sys.argv[1]).exists():\n    time.sleep(0.02)\n", str(gate)]
    run = BackgroundProcess([sys.executable, "-c", "pass"], tmp_path / "out", next_stages=[second], name="transfer",
                            percent_lines=percent_lines).start()
    deadline = time.monotonic() + 60
    while "affine" not in (status := run.poll()).message and time.monotonic() < deadline:
        time.sleep(0.05)
    gate.touch()
    assert status.state is RunState.RUNNING and status.message == "transfer (step 2/2): " + \
        ("affine" if percent_lines else "45% affine")
    assert status.fraction == (pytest.approx(0.725) if percent_lines else None)
    final = run.wait(timeout=60)
    assert final.state is RunState.SUCCEEDED and ("  45% affine" in final.stderr_tail) is not percent_lines


@pytest.mark.slow
def test_out_of_memory_and_cli_errors_are_one_line(tmp_path):
    script = "import numpy\nnumpy.ones(1 << 62, dtype=numpy.uint8)\n"  # 4 EiB: refused at once
    status = BackgroundProcess([sys.executable, "-c", script], name="training").start().wait(timeout=60)
    assert status.state is RunState.FAILED and status.returncode == 1
    assert status.message.startswith("training ran out of memory (exit status 1)")
    assert ": numpy._core._exceptions._ArrayMemoryError: Unable to allocate 4.00 EiB" in status.message \
        or ": MemoryError: Unable to allocate 4.00 EiB" in status.message, status.message

    missing = tmp_path / "missing.nii.gz"
    run = BackgroundProcess(xrayseg_argv("render", "--ct", missing, "--out", "{out}"), tmp_path / "out").start()
    status = run.wait(timeout=120)
    assert status.state is RunState.FAILED and status.returncode == 2
    assert status.message == f"xrayseg render failed (exit status 2): xrayseg render: error: CT: file not found: " \
                             f"{missing}"
    assert list(tmp_path.iterdir()) == []


def live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that still run (zombies excluded: an orphan's exit may wait for a reaper)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        if int(group) == pgid and state not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def run_and_abandon(start: str, written: str) -> int:
    """A parent (standing in for a Slicer that crashes) runs ``start`` (Python that sets ``run``, a started
    BackgroundProcess or ExportProcess), waits until the expression ``written`` holds, then exits at once without
    cancelling. Returns the child's pid (its process group)."""
    import subprocess

    script = ("import os, sys, time\nfrom pathlib import Path\n" + start + "\n"
              f"while not ({written}):\n    time.sleep(0.05)\n"
              "print(run.pid, flush=True)\nos._exit(0)\n")
    parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert parent.returncode == 0, parent.stderr
    return int(parent.stdout.split()[-1])


def start_and_abandon(argv: list[str], output_dir: Path) -> int:
    """``run_and_abandon`` of ``BackgroundProcess(argv, output_dir)`` once it has written a file."""
    return run_and_abandon("from XraySegSimLib.background import BackgroundProcess\n"
                           f"run = BackgroundProcess({argv!r}, {str(output_dir)!r}).start()",
                           "any(p.is_file() for p in run.staging_dir.rglob('*'))")


def group_left_after(pgid: int, timeout_s: float = 20.0) -> list[int]:
    """The live members of group ``pgid`` once it is empty or ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while live_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return live_group_members(pgid)


@posix_only
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_the_child_dies_when_its_parent_dies_without_cancelling(phantom, tmp_path):
    """Through ``XraySegInferLib.child`` (what xrayseg_argv runs) no process of the export's group is left a few
    seconds after its parent vanished; plain ``XraySegInferLib.entry`` (the control) goes on. Both exports are
    quiet: a child that writes to its closed pipes dies of that anyway, one that does not (training on a GPU,
    a quiet export) needs the watchdog."""
    argv = export_argv(phantom, quiet=True)
    assert argv[1:3] == ["-m", "XraySegInferLib.child"]
    control = start_and_abandon([argv[0], "-m", "XraySegInferLib.entry", *argv[3:]], tmp_path / "control")
    try:
        time.sleep(2.0)
        assert live_group_members(control) != []  # nothing stops a plain child
    finally:
        os.killpg(control, signal.SIGKILL)
    child = start_and_abandon(argv, tmp_path / "dataset")
    assert group_left_after(child) == []
    staged = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".dataset."))
    assert len(staged) == 1 and staged[0].startswith(".dataset.partial-")  # left behind, hidden, never renamed
