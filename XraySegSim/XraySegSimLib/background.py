"""Long work in a background *process*: progress, cancel, and crashes that cannot take the caller down. The one
runner of both modules: the training-set export (``export_process``), the labels of an unlabelled CT
(``label_jobs``), the radiograph segmentation (``XraySegInferLib.segment_process``), or any ``xrayseg`` command.

Qt-free and MRML-free: a Slicer widget drives a :class:`BackgroundProcess` from a QTimer (``poll()`` never
blocks), a script calls ``wait()``. The child runs any argv, typically ``xrayseg`` (:func:`xrayseg_argv`:
``[python, "-m", "XraySegInferLib.child", ...]``, run by module name: XraySegSimLib never imports
XraySegInferLib), so an export, a segmentation or a training run that crashes, runs out of GPU memory or is
killed by the system's out-of-memory killer ends in one clear message instead of aborting Slicer.

* **Dies with its parent.** :func:`xrayseg_argv` runs ``python -m XraySegInferLib.child``, which watches the
  pid that started it (``XRAYSEG_PARENT_PID``) and kills its own group once that process is gone, so a
  crashed or closed Slicer leaves no export computing on (its staged folder then stays behind, hidden).
* **Own process group.** The child starts a new session (POSIX) or process group (Windows); ``cancel()`` stops
  the whole group, pool workers included (SIGKILL at once for a staged run, whose output is discarded anyway;
  SIGTERM, then SIGKILL after ``kill_grace_s``, for a run in place). ``request_stop()`` sends the SIGTERM and
  returns at once (for a GUI thread); ``poll()`` kills the group if it still runs ``kill_grace_s`` later.
* **Staged output.** With ``output_dir`` given, the argv's ``{out}`` placeholder is replaced by a fresh hidden
  folder beside it (``.NAME.partial-XXXX``); only a run that exits with status 0 has it renamed to
  ``output_dir`` (one atomic rename, so ``output_dir`` is either absent or complete). A cancelled, failed or
  killed run has it removed: no half-written file remains. ``staging=False`` runs in ``output_dir`` itself
  (for ``--resume``, whose own writes are atomic) and removes nothing.
* **Stages.** ``next_stages``: argvs run one after the other once the previous one exited with status 0 (e.g.
  fetch the atlas sample, then register), in the same staged folder; the first that fails ends the run.
* **Progress** is read from the child's own tqdm bars (``desc:  40%|####  | 4/10 [...]``), so no extra option is
  needed; with ``percent_lines`` also from lines that start with a percentage (``  45% affine``). Runs without
  either report ``fraction=None`` (busy). See ``background_output``.
* **Failures** become one line: the exit status or the signal (SIGKILL: "killed, e.g. by the system when
  memory ran out"), plus the child's last stderr line (``xrayseg``'s own one-line error, or the exception of a
  traceback such as ``torch.OutOfMemoryError: CUDA out of memory``).

::

    run = BackgroundProcess(xrayseg_argv("export", "--ct", ct, "--out", "{out}"), output_dir="dataset").start()
    while run.poll().state is RunState.RUNNING:      # a QTimer slot in Slicer
        ...                                          # run.poll().progress.fraction, .label
    status = run.wait()                              # or run.cancel()
"""

from __future__ import annotations

import dataclasses
import enum
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from .background_output import (OUT_OF_MEMORY, Progress, StreamReader, describe_failure, parse_fraction,
                                parse_progress)

OUT_PLACEHOLDER = "{out}"


class RunState(str, enum.Enum):
    """A run's state; equal to its value too (``status.state == "succeeded"``)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


@dataclass(frozen=True)
class RunStatus:
    """What ``poll()``/``wait()``/``cancel()`` report. ``message`` is one line for the user."""

    state: RunState
    progress: Progress
    message: str
    returncode: int | None = None
    output_dir: Path | None = None  # the finished output (SUCCEEDED), else None
    stderr_tail: tuple[str, ...] = field(default_factory=tuple)
    stdout_tail: tuple[str, ...] = field(default_factory=tuple)  # e.g. the command's closing summary line

    @property
    def finished(self) -> bool:
        return self.state.finished

    @property
    def fraction(self) -> float | None:
        """The progress over all stages in [0, 1], None while busy without progress."""
        return self.progress.fraction


def package_roots() -> list[Path]:
    """Folders that hold the XraySegSimLib and XraySegInferLib packages (for the child's PYTHONPATH)."""
    import importlib.util

    here = Path(__file__).resolve().parents[1]
    roots = [here] + [p for p in (here.parent / "XraySegInfer",) if p.is_dir()]  # the source tree's layout
    infer = importlib.util.find_spec("XraySegInferLib")  # located, not imported (Sim never imports Infer)
    if infer is not None and infer.origin:
        roots.append(Path(infer.origin).resolve().parents[1])
    return list(dict.fromkeys(roots))


def default_python() -> str:
    """The interpreter for child processes: inside the Slicer application its ``PythonSlicer`` next to the
    application (as Slicer's own pip installs use), elsewhere this interpreter."""
    slicer = sys.modules.get("slicer")
    if slicer is not None and getattr(slicer, "app", None) is not None:
        found = shutil.which("PythonSlicer", path=os.pathsep.join(
            [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
        if found:
            return found
    return sys.executable


def xrayseg_argv(*arguments: str | os.PathLike, python: str | None = None) -> list[str]:
    """``[python, "-m", "XraySegInferLib.child", *arguments]``: the ``xrayseg`` command in a child process that
    dies with the process that started it (``XraySegInferLib.child``; ``python``: :func:`default_python`)."""
    return [python or default_python(), "-m", "XraySegInferLib.child", *(os.fspath(a) for a in arguments)]


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with unbuffered Python output and our packages on PYTHONPATH."""
    env = dict(os.environ)
    paths = [str(p) for p in package_roots()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _describe_argv(argv: Sequence[str]) -> str:
    """"xrayseg SUBCOMMAND" for our own commands, else the program's name (for messages)."""
    if argv[1:2] == ["-m"] and argv[2:3] in (["XraySegInferLib.entry"], ["XraySegInferLib.child"]):
        subcommand = next((a for a in argv[3:] if not a.startswith("-")), "")
        return f"xrayseg {subcommand}".strip()
    return Path(argv[0]).name if argv else "the run"


class BackgroundProcess:
    """One child process (or a few, one after the other) run in the background (see the module docstring)."""

    def __init__(self, argv: Sequence[str | os.PathLike], output_dir: str | os.PathLike | None = None, *,
                 staging: bool = True, name: str | None = None, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike | None = None, kill_grace_s: float = 3.0, tail_lines: int = 200,
                 next_stages: Sequence[Sequence[str | os.PathLike]] = (), percent_lines: bool = False) -> None:
        self.stages = [[os.fspath(a) for a in stage] for stage in (argv, *next_stages)]
        self.argv = self.stages[0]
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.staging = staging and self.output_dir is not None
        self.name = name or _describe_argv(self.argv)
        self.env = child_environment(env)
        self.cwd = cwd
        self.kill_grace_s = kill_grace_s
        self.tail_lines = tail_lines
        self.percent_lines = percent_lines
        self.staging_dir: Path | None = None
        self._stage = -1
        self._process: subprocess.Popen | None = None
        self._readers: list[StreamReader] = []
        self._cancel_requested = False
        self._stop_requested_at: float | None = None
        self._final: RunStatus | None = None
        self._lock = threading.Lock()

    # ---- life cycle ---------------------------------------------------------------------------------------

    def start(self) -> "BackgroundProcess":
        """Start the child (once). Raises ``FileExistsError`` when a staged ``output_dir`` already exists."""
        if self._process is not None:
            raise RuntimeError("this background process was already started")
        if self.staging:
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
        argv = self.stages[self._stage]
        if self.output_dir is not None:
            target = self.staging_dir if self.staging_dir is not None else self.output_dir
            argv = [a.replace(OUT_PLACEHOLDER, str(target)) for a in argv]
        kwargs: dict = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True  # its own session and process group: cancel() stops them all
        else:  # pragma: no cover - Windows
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        env = {**self.env, "XRAYSEG_PARENT_PID": str(os.getpid())}  # XraySegInferLib.child dies with us
        self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=env, cwd=self.cwd, **kwargs)
        self._readers = [StreamReader(self._process.stdout, self.tail_lines, self.percent_lines),
                         StreamReader(self._process.stderr, self.tail_lines, self.percent_lines)]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def poll(self) -> RunStatus:
        """The current status, without blocking. Starts the next stage once one has succeeded; finishes the run
        (rename or clean-up) once the last child ended."""
        with self._lock:
            if self._final is not None:
                return self._final
            if self._process is None:
                return RunStatus(RunState.PENDING, Progress(), "not started")
            returncode = self._process.poll()
            if returncode is None:
                if self._stop_requested_at is not None and \
                        time.monotonic() - self._stop_requested_at > self.kill_grace_s:
                    self._signal_group(signal.SIGKILL if os.name == "posix" else None, kill=True)
                return self._running()
            if returncode == 0 and self._stage + 1 < len(self.stages) and not self._cancel_requested:
                for reader in self._readers:
                    reader.join(timeout=5.0)
                try:
                    self._start_next()
                except OSError as error:  # e.g. a program that is not there: one line, nothing staged left
                    self._remove_staging()
                    self._final = RunStatus(RunState.FAILED, Progress(), f"{self.name} could not start step "
                                            f"{self._stage + 1}/{len(self.stages)}: {error}", returncode)
                    return self._final
                return self._running()
            return self._finish(returncode)

    def _progress(self) -> Progress:
        """The latest progress (stderr first, then stdout), its fraction spread over the stages."""
        progress = self._readers[1].snapshot()[0] or self._readers[0].snapshot()[0] or Progress()
        if len(self.stages) > 1 and progress.fraction is not None:
            progress = dataclasses.replace(progress, fraction=min(1.0, (self._stage + progress.fraction)
                                                                  / len(self.stages)))
        return progress

    def _running(self) -> RunStatus:
        progress = self._progress()
        last = (self._readers[1].snapshot()[1] or self._readers[0].snapshot()[1] or ("",))[-1].strip()
        stage = f" (step {self._stage + 1}/{len(self.stages)})" if len(self.stages) > 1 else ""
        label = progress.label or last or "running"
        return RunStatus(RunState.RUNNING, progress, f"{self.name}{stage}: {label}"[:200])

    def wait(self, timeout: float | None = None, poll_s: float = 0.05) -> RunStatus:
        """Block until the run has finished (``TimeoutError`` after ``timeout`` seconds) and return its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.poll()
            if status.state.finished or status.state is RunState.PENDING:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still running after {timeout:.0f} s")
            time.sleep(poll_s)

    def request_stop(self) -> None:
        """Ask the child's group to stop (SIGTERM) and return at once (for a GUI thread); :meth:`poll` reports
        the end, and kills the group if it still runs ``kill_grace_s`` later. The run then ends CANCELLED."""
        with self._lock:
            if self._final is not None or self._process is None or self._stop_requested_at is not None:
                return
            self._cancel_requested, self._stop_requested_at = True, time.monotonic()
            if self._process.poll() is None:
                self._signal_group(signal.SIGTERM if os.name == "posix" else None)

    def cancel(self) -> RunStatus:
        """Stop the child's whole process group and return the final status (CANCELLED, unless the run had
        already finished). A staged run is killed at once (SIGKILL) and its staged output removed; a run in
        place gets SIGTERM first and ``kill_grace_s`` seconds to stop by itself."""
        with self._lock:
            if self._final is not None or self._process is None:
                return self._final or RunStatus(RunState.CANCELLED, Progress(), "cancelled before it started")
            self._cancel_requested = True
            if not self.staging:  # its output stays: give it the chance to stop cleanly first
                if self._stop_requested_at is None:
                    self._signal_group(signal.SIGTERM if os.name == "posix" else None)
                    self._stop_requested_at = time.monotonic()
                try:
                    self._process.wait(max(0.0, self.kill_grace_s - (time.monotonic() - self._stop_requested_at)))
                except subprocess.TimeoutExpired:
                    pass
            self._signal_group(signal.SIGKILL if os.name == "posix" else None, kill=True)
            returncode = self._process.wait()
            return self._finish(returncode)

    def __enter__(self) -> "BackgroundProcess":
        return self if self._process is not None else self.start()

    def __exit__(self, *exc) -> None:
        if self._final is None and self._process is not None:
            self.cancel()

    # ---- internals ----------------------------------------------------------------------------------------

    def _signal_group(self, sig: signal.Signals | None, kill: bool = False) -> None:
        assert self._process is not None
        if os.name == "posix":
            try:
                os.killpg(self._process.pid, sig)  # the child leads its group (start_new_session)
            except (ProcessLookupError, PermissionError):
                pass  # the whole group is gone already
        elif kill:  # pragma: no cover - Windows
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._process.pid)], capture_output=True)
        else:  # pragma: no cover - Windows
            self._process.send_signal(signal.CTRL_BREAK_EVENT)

    def _finish(self, returncode: int) -> RunStatus:
        if os.name == "posix":  # workers of the group may outlive their leader: none may go on writing
            self._signal_group(signal.SIGKILL)
        for reader in self._readers:
            reader.join(timeout=5.0)
        progress = self._progress()
        stderr, stdout = self._readers[1].snapshot()[1], self._readers[0].snapshot()[1]
        last_line = (stderr or stdout or ("",))[-1].strip()
        output = None
        if self._cancel_requested:
            self._remove_staging()
            state, message = RunState.CANCELLED, f"{self.name} cancelled; no output was kept"
        elif returncode == 0:
            state, message, output = RunState.SUCCEEDED, f"{self.name} finished", self.output_dir
            if self.staging_dir is not None:
                try:
                    os.rename(self.staging_dir, self.output_dir)
                    self.staging_dir = None
                except OSError as error:
                    self._remove_staging()
                    state, output = RunState.FAILED, None
                    message = f"{self.name} finished but its output could not be moved to {self.output_dir}: {error}"
        else:
            self._remove_staging()
            state = RunState.FAILED
            where = f"{progress.label or 'item'} {progress.done}/{progress.total}" if progress.total else ""
            message = describe_failure(returncode, last_line, self.name,
                                       any(OUT_OF_MEMORY.search(line) for line in stderr[-20:]), where)
        self._final = RunStatus(state, progress, message, returncode, output, stderr, stdout)
        return self._final

    def _remove_staging(self) -> None:
        if self.staging_dir is None:
            return
        for _ in range(5):  # a dying worker may still close a file for a moment
            shutil.rmtree(self.staging_dir, ignore_errors=True)
            if not self.staging_dir.exists():
                break
            time.sleep(0.1)
        self.staging_dir = None


__all__ = ["BackgroundProcess", "Progress", "RunState", "RunStatus", "child_environment", "default_python",
           "describe_failure", "package_roots", "parse_fraction", "parse_progress", "xrayseg_argv"]
