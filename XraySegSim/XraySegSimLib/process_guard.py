"""Process hygiene for long batch jobs: workers die with their parent; SIGINT/SIGTERM stop after the current sample.

* :func:`worker_initializer` runs first in every worker process of an export's pool: on Linux the kernel kills the
  worker when its parent dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), and a watchdog thread checks the parent's
  pid on every system (and covers the race where the parent died before ``prctl``). So after ``kill -9`` of the
  coordinator no worker goes on writing into the dataset, nor waits forever. Workers ignore SIGINT: a Ctrl-C
  reaches the whole process group, and the coordinator alone decides how to stop.
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


__all__ = ["StopOnSignals", "die_with_parent", "worker_initializer"]
