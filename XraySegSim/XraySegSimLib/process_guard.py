"""Process hygiene for long batch jobs: workers die with their parent; SIGINT/SIGTERM stop after the current sample.

* :func:`worker_initializer` runs first in every worker process of an export's pool: on Linux the kernel kills the
  worker when its parent dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), and a watchdog thread checks the parent's
  pid on every system (and covers the race where the parent died before ``prctl``). So after ``kill -9`` of the
  coordinator no worker goes on writing into the dataset, nor waits forever. Workers ignore SIGINT: a Ctrl-C
  reaches the whole process group, and the coordinator alone decides how to stop.
* :func:`watch_parent_from_environment`: a worker module that ``background.BackgroundProcess`` starts (it sets
  ``XRAYSEG_PARENT_PID`` and a new process group) calls it first thing, so a crashed or closed Slicer leaves
  no worker group computing on (``XraySegInferLib.child``, ``export_process``, ``segment_process``).
* :class:`StopOnSignals` (command line only, main thread): the first SIGINT or SIGTERM sets ``requested``, so
  the export stops after the samples in flight and finalises what is complete; a second one exits at once
  (every file is written atomically, so the dataset stays resumable).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCHDOG_PERIOD_S = 0.5
PARENT_PID_VARIABLE = "XRAYSEG_PARENT_PID"  # set by background.BackgroundProcess
WATCH_PERIOD_S = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Make this process exit when the process ``parent_pid`` (its parent) is gone."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl: the watchdog still runs
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(WATCHDOG_PERIOD_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="xrayseg-parent-watchdog", daemon=True).start()


def worker_initializer(parent_pid: int, then: Callable | None = None, *args) -> None:
    """Pool initializer: die with the parent, ignore Ctrl-C, then run ``then(*args)`` (e.g. thread settings)."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if then is not None:
        then(*args)


def _parent_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (a reused pid): treat as alive
        return True
    return True


def watch_parent(pid: int, period_s: float = WATCH_PERIOD_S) -> threading.Thread | None:
    """Start a daemon thread that kills this process group once process ``pid`` no longer exists. It watches
    that pid, not ``getppid()``: a launcher such as Slicer's ``PythonSlicer`` may stand between the two. POSIX
    only (on Windows ``os.kill`` would terminate the process it probes)."""
    if os.name != "posix":
        return None

    def watch() -> None:
        while _parent_alive(pid):
            time.sleep(period_s)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="xrayseg-parent-watch", daemon=True)
    thread.start()
    return thread


def watch_parent_from_environment() -> threading.Thread | None:
    """For any worker module started by ``BackgroundProcess`` (which sets ``XRAYSEG_PARENT_PID`` and a new
    process group): call first thing in its ``main`` to die with the parent. No-op otherwise."""
    parent = os.environ.get(PARENT_PID_VARIABLE, "")
    if os.name == "posix" and parent.isdigit() and os.getpgrp() == os.getpid():  # leading a group of its own
        return watch_parent(int(parent))
    return None


class StopOnSignals:
    """Context manager: SIGINT/SIGTERM -> ``requested`` (first), immediate exit (second). No-op off the main
    thread (Slicer), where signals cannot be handled."""

    def __init__(self, first_message: str, abort_message: str, stream=None):
        self.first_message = first_message
        self.abort_message = abort_message
        self.stream = stream or sys.stderr
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    @property
    def exit_status(self) -> int:
        """128 + the signal number, as shells report a job stopped by that signal."""
        return 128 + int(getattr(signal, self.signal_name or "SIGINT"))

    def _handle(self, signum, _frame) -> None:
        if self.signal_name is not None:
            print(self.abort_message, file=self.stream, flush=True)
            os._exit(128 + signum)  # files are atomic: only temporary parts are left, which --resume removes
        self.signal_name = signal.Signals(signum).name
        print(self.first_message.format(signal=self.signal_name), file=self.stream, flush=True)

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


__all__ = ["StopOnSignals", "die_with_parent", "watch_parent", "watch_parent_from_environment", "worker_initializer"]
