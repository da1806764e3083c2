"""An ``xrayseg`` command in a background *process*, for the Sim module's long CT work (label a CT with the 3D
model, transfer atlas labels): progress, cancel, staged output, and crashes that cannot take Slicer down.

Qt-free and MRML-free. XraySegSimLib never imports XraySegInferLib (Infer may import Sim, never the reverse), so
this is a lean runner of its own; the command runs by module name, ``python -m XraySegInferLib.child ARGS``
(``xrayseg ARGS`` that kills itself once the process named by ``XRAYSEG_PARENT_PID`` is gone).

* **Stages.** A run is one or more argvs, run one after the other (e.g. fetch the atlas sample, then register);
  the first that fails ends the run.
* **Staged output.** ``{out}`` in an argv becomes a fresh hidden folder beside ``output_dir``
  (``.NAME.partial-XXXX``), renamed to ``output_dir`` only after every stage exited with status 0; a cancelled,
  failed or killed run has it removed, so ``output_dir`` is either absent or complete.
* **Cancel** kills the child's whole process group at once (its output is discarded anyway).
* **Progress** comes from the child's stderr: tqdm bars (``40%|####  | 4/10``) or lines that start with a
  percentage (``  45% affine``, as ``xrayseg label-transfer`` prints); a run without either is busy
  (``fraction`` None).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

OUT_PLACEHOLDER = "{out}"
# "  45% affine" (label-transfer) or a tqdm bar "desc:  40%|####  | 4/10 [00:01<00:02]"
PERCENT_LINE = re.compile(r"^\s*(?:(?P<desc>[^%|:\r\n]{1,60}):\s*)?(?P<percent>\d{1,3}(?:\.\d+)?)%"
                          r"\s*(?:\|[^|]*\|\s*\d+/\d+)?\s*(?P<label>[^\[\r\n]*)")


@dataclass(frozen=True)
class CommandStatus:
    """What :meth:`CommandProcess.poll` reports; ``message`` is one line for the user."""
    state: str  # "running", "succeeded", "cancelled", "failed"
    fraction: float | None  # in [0, 1] over all stages; None: busy, no progress known
    message: str
    output_dir: Path | None = None  # the complete output (succeeded), else None

    @property
    def finished(self) -> bool:
        return self.state != "running"


def xrayseg_child_argv(*arguments: str | os.PathLike, python: str | None = None) -> list[str]:
    """``[python, "-m", "XraySegInferLib.child", *arguments]``: ``xrayseg`` as a child that dies with us."""
    from .export_process import worker_python

    return [python or worker_python(), "-m", "XraySegInferLib.child", *(os.fspath(a) for a in arguments)]


def parse_fraction(line: str) -> tuple[float, str] | None:
    """(fraction, label) of one progress line (tqdm bar or ``NN% label``), or None."""
    match = PERCENT_LINE.match(line)
    if not match:
        return None
    label = match.group("label").strip() or (match.group("desc") or "").strip()
    return min(1.0, float(match.group("percent")) / 100.0), label


def _environment() -> dict[str, str]:
    """Our packages (XraySegSimLib's folder and XraySegInferLib's beside it) on PYTHONPATH, unbuffered output."""
    here = Path(__file__).resolve().parents[1]
    roots = [str(here), str(here.parent / "XraySegInfer")]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(
        [r for r in roots if Path(r).is_dir()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env["PYTHONUNBUFFERED"] = "1"
    env["XRAYSEG_PARENT_PID"] = str(os.getpid())
    return env


class CommandProcess:
    """Stages of ``xrayseg`` run in the background (see the module docstring)."""

    def __init__(self, stages: Sequence[Sequence[str | os.PathLike]], output_dir: str | os.PathLike,
                 name: str = "the run", env: dict[str, str] | None = None) -> None:
        self.stages = [[os.fspath(a) for a in argv] for argv in stages]
        self.output_dir, self.name = Path(output_dir), name
        self.env = {**_environment(), **(env or {})}
        self.staging_dir: Path | None = None
        self._stage = -1
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._lines: deque[str] = deque(maxlen=50)
        self._progress: tuple[float, str] | None = None
        self._lock = threading.Lock()
        self._cancelled = False
        self._final: CommandStatus | None = None

    def start(self) -> "CommandProcess":
        """Create the staging folder and start the first stage. ``FileExistsError`` if ``output_dir`` exists."""
        if self.output_dir.exists():
            raise FileExistsError(f"{self.output_dir} already exists; choose a new output folder or remove it")
        self.output_dir.parent.mkdir(parents=True, exist_ok=True)
        self.staging_dir = Path(tempfile.mkdtemp(prefix=f".{self.output_dir.name}.partial-",
                                                 dir=self.output_dir.parent))
        try:
            self._start_next()
        except OSError:
            self._remove_staging()
            raise
        return self

    def _start_next(self) -> None:
        self._stage += 1
        argv = [a.replace(OUT_PLACEHOLDER, str(self.staging_dir)) for a in self.stages[self._stage]]
        kwargs = {"start_new_session": True} if os.name == "posix" else {
            "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True, errors="replace", env=self.env,
                                         **kwargs)
        self._reader = threading.Thread(target=self._read, args=(self._process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen) -> None:
        # text mode reads "\r" as a line end too, so each tqdm bar update is a line of its own
        for raw in process.stdout:
            line = raw.strip()
            if not line:
                continue
            found = parse_fraction(line)
            with self._lock:
                if found is not None:
                    self._progress = found
                else:
                    self._lines.append(line)

    def poll(self) -> CommandStatus:
        """The state now (never blocks); moves on to the next stage, or finishes, when a stage has ended."""
        if self._final is not None:
            return self._final
        code = self._process.poll()
        if code is None:
            return self._running()
        self._reader.join(timeout=5.0)  # the stage's last lines (its error message) are read
        if code == 0 and self._stage + 1 < len(self.stages):
            with self._lock:
                self._progress = None
            self._start_next()
            return self._running()
        return self._finish(code)

    def _running(self) -> CommandStatus:
        with self._lock:
            progress = self._progress
            last = self._lines[-1] if self._lines else ""
        share = 1.0 / len(self.stages)
        fraction = None if progress is None else min(1.0, (self._stage + progress[0]) * share)
        label = (progress[1] if progress else "") or last or "running"
        stage = f" (step {self._stage + 1}/{len(self.stages)})" if len(self.stages) > 1 else ""
        return CommandStatus("running", fraction, f"{self.name}{stage}: {label}"[:200])

    def wait(self, timeout: float | None = None) -> CommandStatus:
        """Block until the run ends (``TimeoutError`` after ``timeout`` seconds); returns the status."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while not (status := self.poll()).finished:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still running after {timeout:.0f} s")
            time.sleep(0.05)
        return status

    def cancel(self) -> CommandStatus:
        """Kill the run's process group now; nothing of its output is kept."""
        if self._final is None and self._process is not None:
            self._cancelled = True
            self._kill()
            self._process.wait()
        return self.poll()

    def _kill(self) -> None:
        try:
            if os.name == "posix":
                os.killpg(self._process.pid, signal.SIGKILL)
            else:  # pragma: no cover - Windows
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._process.pid)], capture_output=True)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone already

    def _finish(self, code: int) -> CommandStatus:
        if os.name == "posix":
            self._kill()  # pool workers of the group may outlive their leader: none may go on writing
        with self._lock:
            last = self._lines[-1] if self._lines else ""
        if self._cancelled:
            self._remove_staging()
            self._final = CommandStatus("cancelled", None, f"{self.name} cancelled; nothing was kept")
        elif code == 0:
            try:
                os.rename(self.staging_dir, self.output_dir)
                self.staging_dir = None
                self._final = CommandStatus("succeeded", 1.0, f"{self.name} finished", self.output_dir)
            except OSError as error:
                self._remove_staging()
                self._final = CommandStatus("failed", None, f"{self.name} finished but its output could not be "
                                                            f"moved to {self.output_dir}: {error}")
        else:
            self._remove_staging()
            if code < 0 and -code == getattr(signal, "SIGKILL", 9) or code == 137:
                what = f"{self.name} was killed (SIGKILL), e.g. by the system when memory ran out"
            elif code < 0:
                what = f"{self.name} was stopped by signal {-code}"
            else:
                what = f"{self.name} failed (exit status {code})"
            self._final = CommandStatus("failed", None, f"{what}: {last}" if last else what)
        return self._final

    def _remove_staging(self) -> None:
        if self.staging_dir is not None:
            shutil.rmtree(self.staging_dir, ignore_errors=True)
            self.staging_dir = None


__all__ = ["CommandProcess", "CommandStatus", "parse_fraction", "xrayseg_child_argv"]
