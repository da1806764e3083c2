"""The scene's training-set export in a worker *process*, so a crash, an out-of-memory kill or numba's threading
cannot take Slicer down, and ``ProcessPoolExecutor`` (workers > 1) runs in a plain Python process, where it works
(inside the Slicer application it does not: Slicer issue #7445).

Qt-free: the Slicer widget polls :meth:`ExportProcess.poll` from a QTimer (it never blocks); a script calls
:meth:`ExportProcess.wait`. The parent prepares the job (``scene_export.prepare_scene_export`` writes the CT and
labels as NRRD into the dataset's ``.work``), writes it as JSON and starts ``python -m
XraySegSimLib.export_process JOB.json`` (Slicer's ``PythonSlicer`` inside the application) with
``background.BackgroundProcess``, in place. The child prints one progress bar update per sample on stderr
(``export:  40%|####      | 4/10``) and a final ``XRAYSEG-REPORT {json}`` line on stdout.

* **Cancel** sends SIGTERM: the child stops after the sample in flight and finalises the dataset, which stays
  resumable (its files are written atomically); after ``grace_s`` it is killed.
* **Dies with its parent** (``process_guard.watch_parent_from_environment``): when Slicer crashes or is closed
  during an export, the worker's group is killed within half a second; the dataset stays resumable.
* **Killed or crashed** children give one line saying so (SIGKILL: "killed, e.g. by the system when memory ran
  out"); the temporary ``.*.part`` files of the write in flight are removed, so no half-written file remains.

::

    run = ExportProcess.start(job)            # job: scene_export.SceneExportJob
    status = run.poll()                       # .state "running"/"succeeded"/"cancelled"/"failed", .done, .total
    status = run.cancel()                     # or run.wait()
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from .background import BackgroundProcess, RunState, RunStatus, default_python
from .background_output import describe_failure, progress_line

PROGRESS = "export"  # the label of the child's progress bar on stderr (background_output.progress_line)
REPORT = "XRAYSEG-REPORT"


@dataclass(frozen=True)
class ExportStatus:
    """What :class:`ExportProcess` reports; ``message`` is one line for the user."""
    state: str  # "running", "succeeded", "cancelled", "failed"
    done: int
    total: int
    message: str
    root: Path | None = None

    @property
    def finished(self) -> bool:
        return self.state != "running"


def remove_partial_files(root: Path) -> list[Path]:
    """Remove the temporary files of atomic writes (``io.atomic_path``: ``.NAME.*.part``) a killed worker left."""
    removed = []
    for path in Path(root).rglob(".*.part"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class ExportProcess:
    """One export job running in a child process (``background.BackgroundProcess`` in place: the dataset keeps
    what was finished; see the module docstring)."""

    def __init__(self, job, run: BackgroundProcess, job_file: Path) -> None:
        self.job, self.run, self.job_file = job, run, job_file
        self.total = int(job.config.views_per_ct)
        self.done = 0
        self._cancelled = False
        self._final: ExportStatus | None = None

    @classmethod
    def start(cls, job, python: str | None = None, grace_s: float = 30.0) -> "ExportProcess":
        """Write ``job`` next to its inputs and start the worker on it; a cancelled worker gets ``grace_s``
        seconds to finish the sample in flight before it is killed."""
        from .io import write_json

        job_file = Path(job.root) / ".work" / "scene_job.json"
        write_json(job_file, job.to_dict())
        run = BackgroundProcess([python or default_python(), "-m", "XraySegSimLib.export_process", str(job_file)],
                                name="the export worker", kill_grace_s=grace_s).start()
        return cls(job, run, job_file)

    @property
    def pid(self) -> int:
        return self.run.pid

    def _count(self, status: RunStatus) -> None:
        if status.progress.total:
            self.done, self.total = int(status.progress.done), max(1, int(status.progress.total))

    def poll(self) -> ExportStatus:
        """The state now (never blocks)."""
        if self._final is not None:
            return self._final
        status = self.run.poll()
        self._count(status)
        if not status.state.finished:
            doing = "cancelling after the sample in flight" if self._cancelled else "exporting"
            return ExportStatus("running", self.done, self.total, f"{doing}: {self.done}/{self.total} samples")
        return self._finish(status)

    def wait(self, timeout: float | None = None) -> ExportStatus:
        """Block until the worker ends (or ``timeout`` seconds); returns the status."""
        try:
            self.run.wait(timeout)
        except TimeoutError:
            pass
        return self.poll()

    def request_cancel(self) -> None:
        """Ask the worker to stop after the sample in flight (SIGTERM) and return at once (for a GUI thread):
        :meth:`poll` reports the end, and kills the worker if it has not stopped ``grace_s`` later."""
        if self._final is None and not self.run.poll().state.finished:
            self._cancelled = True
            self.run.request_stop()

    def cancel(self) -> ExportStatus:
        """Ask the worker to stop after the sample in flight (SIGTERM); kill it after ``grace_s``. Blocks."""
        if self._final is None and not self.run.poll().state.finished:
            self._cancelled = True
            self.run.cancel()
        return self.poll()

    def _finish(self, status: RunStatus) -> ExportStatus:
        root = Path(self.job.root)
        code = status.returncode
        reports = [line for line in status.stdout_tail if line.startswith(REPORT)]
        report = json.loads(reports[-1][len(REPORT):]) if reports else None
        if report is not None and code == 0:
            text = f"{report['n_ok']} samples in {root}"
            state = "cancelled" if report["cancelled"] else "succeeded"
            if report["cancelled"]:
                text += " (cancelled: tick Resume and export again to complete it)"
            if report["failed_cts"]:
                text += " - failed: " + "; ".join(report["failed_cts"].values())
            self._final = ExportStatus(state, report["n_ok"], self.total, text, root)
            return self._final
        remove_partial_files(root)
        if self._cancelled and code == -getattr(signal, "SIGKILL", 9):  # our kill, grace_s after the SIGTERM
            what = f"cancelled; the export worker had not stopped {self.run.kill_grace_s:g} s after Cancel and " \
                   "was killed"
        else:
            what = describe_failure(code if code is not None else -signal.SIGKILL, "", "the export worker")
            what = "cancelled; " + what if self._cancelled else what
        last = status.stderr_tail[-1].strip() if status.stderr_tail else ""
        message = f"{what} after {self.done}/{self.total} samples" + (f": {last}" if last else "") + \
            "; the finished samples are kept (tick Resume to continue)"
        cancelled = self._cancelled or status.state is RunState.CANCELLED
        self._final = ExportStatus("cancelled" if cancelled else "failed", self.done, self.total, message,
                                   root if root.is_dir() else None)
        return self._final


def main(argv: list[str] | None = None) -> int:
    """The worker: run the job in ``argv[0]``; SIGTERM stops it after the sample in flight. It dies with the
    process that started it (a crashed or closed Slicer leaves no export computing on)."""
    from .process_guard import watch_parent_from_environment

    watch_parent_from_environment()
    from .errors import XraySegError
    from .scene_export import SceneExportJob

    argv = sys.argv[1:] if argv is None else argv
    job = SceneExportJob.from_dict(json.loads(Path(argv[0]).read_text()))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def progress(done: int, total: int, message: str) -> None:
        progress_line(PROGRESS, done, total)

    try:
        report = job.run(progress=progress, cancel=stop.is_set)
    except XraySegError as error:
        print(f"{error}", file=sys.stderr, flush=True)
        return 2
    print(REPORT + json.dumps({"n_ok": report.n_ok, "cancelled": bool(report.cancelled),
                               "failed_cts": {str(k): str(v) for k, v in report.failed_cts.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
