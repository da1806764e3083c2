"""The scene's training-set export in a worker *process*, so a crash, an out-of-memory kill or numba's threading
cannot take Slicer down, and ``ProcessPoolExecutor`` (workers > 1) runs in a plain Python process, where it works
(inside the Slicer application it does not: Slicer issue #7445).

Qt-free: the Slicer widget polls :meth:`ExportProcess.poll` from a QTimer (it never blocks); a script calls
:meth:`ExportProcess.wait`. The parent prepares the job (``scene_export.prepare_scene_export`` writes the CT and
labels as NRRD into the dataset's ``.work``), writes it as JSON and starts ``python -m
XraySegSimLib.export_process JOB.json`` (Slicer's ``PythonSlicer`` inside the application). The child prints one
``XRAYSEG-PROGRESS done total`` line per sample and a final ``XRAYSEG-REPORT {json}`` line.

* **Cancel** sends SIGTERM: the child stops after the sample in flight and finalises the dataset, which stays
  resumable (its files are written atomically); after ``grace_s`` it is killed.
* **Killed or crashed** children give one line saying so (SIGKILL: "killed, e.g. by the system when memory ran
  out"); the temporary ``.*.part`` files of the write in flight are removed, so no half-written file remains.

::

    run = ExportProcess.start(job)            # job: scene_export.SceneExportJob
    status = run.poll()                       # .state "running"/"succeeded"/"cancelled"/"failed", .done, .total
    status = run.cancel()                     # or run.wait()
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PROGRESS = "XRAYSEG-PROGRESS"
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


def worker_python() -> str:
    """Slicer's ``PythonSlicer`` next to the application (what its own pip uses), else this interpreter."""
    if "slicer" in sys.modules and hasattr(sys.modules["slicer"], "app"):
        found = shutil.which("PythonSlicer", path=os.pathsep.join(
            [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
        if found:
            return found
    return sys.executable


def remove_partial_files(root: Path) -> list[Path]:
    """Remove the temporary files of atomic writes (``io.atomic_path``: ``.NAME.*.part``) a killed worker left."""
    removed = []
    for path in Path(root).rglob(".*.part"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class ExportProcess:
    """One export job running in a child process (see the module docstring)."""

    def __init__(self, job, process: subprocess.Popen, job_file: Path, grace_s: float = 30.0) -> None:
        self.job, self._process, self.job_file, self.grace_s = job, process, job_file, grace_s
        self.total = int(job.config.views_per_ct)
        self.done = 0
        self._report: dict | None = None
        self._stderr: list[str] = []
        self._cancelled = False
        self._cancel_time = 0.0
        self._final: ExportStatus | None = None
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    @classmethod
    def start(cls, job, python: str | None = None, grace_s: float = 30.0) -> "ExportProcess":
        """Write ``job`` next to its inputs and start the worker on it."""
        from .io import write_json

        job_file = Path(job.root) / ".work" / "scene_job.json"
        write_json(job_file, job.to_dict())
        package_root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [package_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
        kwargs = {"start_new_session": True} if os.name == "posix" else {
            "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        process = subprocess.Popen([python or worker_python(), "-m", "XraySegSimLib.export_process", str(job_file)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=env, **kwargs)
        return cls(job, process, job_file, grace_s)

    @property
    def pid(self) -> int:
        return self._process.pid

    def _read_stdout(self) -> None:
        for line in self._process.stdout:
            if line.startswith(PROGRESS):
                parts = line.split()
                self.done, self.total = int(parts[1]), max(1, int(parts[2]))
            elif line.startswith(REPORT):
                self._report = json.loads(line[len(REPORT):])

    def _read_stderr(self) -> None:
        for line in self._process.stderr:
            if line.strip() and "%|" not in line:  # progress bars are not messages
                self._stderr = (self._stderr + [line.strip()])[-20:]

    def poll(self) -> ExportStatus:
        """The state now (never blocks)."""
        if self._final is not None:
            return self._final
        code = self._process.poll()
        if code is None:
            if self._cancelled and time.monotonic() - self._cancel_time > self.grace_s:
                self._kill()  # it did not stop after the sample in flight
            doing = "cancelling after the sample in flight" if self._cancelled else "exporting"
            return ExportStatus("running", self.done, self.total, f"{doing}: {self.done}/{self.total} samples")
        return self._finish(code)

    def wait(self, timeout: float | None = None) -> ExportStatus:
        """Block until the worker ends (or ``timeout`` seconds); returns the status."""
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        return self.poll()

    def request_cancel(self) -> None:
        """Ask the worker to stop after the sample in flight (SIGTERM) and return at once (for a GUI thread):
        :meth:`poll` reports the end, and kills the worker if it has not stopped ``grace_s`` later."""
        if self._process.poll() is None and not self._cancelled:
            self._cancelled, self._cancel_time = True, time.monotonic()
            self._signal(signal.SIGTERM)

    def cancel(self) -> ExportStatus:
        """Ask the worker to stop after the sample in flight (SIGTERM); kill it after ``grace_s``. Blocks."""
        self.request_cancel()
        if self._process.poll() is None:
            try:
                self._process.wait(self.grace_s)
            except subprocess.TimeoutExpired:
                self._kill()
                self._process.wait()
        return self.poll()

    def _kill(self) -> None:
        self._signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)

    def _signal(self, sig) -> None:
        try:
            if os.name == "posix":
                os.killpg(self._process.pid, sig)
            else:  # pragma: no cover - Windows
                self._process.send_signal(signal.CTRL_BREAK_EVENT)
        except (ProcessLookupError, PermissionError):
            pass

    def _finish(self, code: int) -> ExportStatus:
        for reader in self._readers:
            reader.join(timeout=5)
        root = Path(self.job.root)
        report = self._report
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
        if code < 0 and -code == getattr(signal, "SIGKILL", 9):
            what = "the export worker was killed (SIGKILL), e.g. by the system when memory ran out"
        elif code < 0:
            what = f"the export worker was stopped by signal {-code}"
        else:
            what = f"the export worker failed (exit status {code})"
        if self._cancelled:
            what = "cancelled; " + what
        last = self._stderr[-1] if self._stderr else ""
        message = f"{what} after {self.done}/{self.total} samples" + (f": {last}" if last else "") + \
            "; the finished samples are kept (tick Resume to continue)"
        self._final = ExportStatus("cancelled" if self._cancelled else "failed", self.done, self.total, message,
                                   root if root.is_dir() else None)
        return self._final


def main(argv: list[str] | None = None) -> int:
    """The worker: run the job in ``argv[0]``; SIGTERM stops it after the sample in flight."""
    from .errors import XraySegError
    from .scene_export import SceneExportJob

    argv = sys.argv[1:] if argv is None else argv
    job = SceneExportJob.from_dict(json.loads(Path(argv[0]).read_text()))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def progress(done: int, total: int, message: str) -> None:
        print(f"{PROGRESS} {done} {total}", flush=True)

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
