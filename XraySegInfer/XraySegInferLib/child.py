"""``python -m XraySegInferLib.child ARGS``: ``xrayseg ARGS`` as a background child that dies with its parent.

:class:`XraySegSimLib.background.BackgroundProcess` puts its own pid in ``XRAYSEG_PARENT_PID``. When that
process is gone without having cancelled the run (Slicer crashed or was closed), a watchdog thread here kills
the child's whole process group (pool workers included) within ``WATCH_PERIOD_S``, instead of letting it go on
computing and writing. It watches that pid, not ``getppid()``: a launcher such as Slicer's ``PythonSlicer``
may stand between the two. POSIX only (on Windows ``os.kill`` would terminate the process it probes). Without
the variable this is plain ``xrayseg``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

PARENT_PID_VARIABLE = "XRAYSEG_PARENT_PID"
WATCH_PERIOD_S = 0.5


def _parent_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (a reused pid): treat as alive
        return True
    return True


def watch_parent(pid: int, period_s: float = WATCH_PERIOD_S) -> threading.Thread | None:
    """Start a daemon thread that kills this process group once process ``pid`` no longer exists."""
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


def main(argv: list[str] | None = None) -> int:
    """Watch the parent named by ``XRAYSEG_PARENT_PID`` (if set), then run ``xrayseg`` with ``argv``."""
    watch_parent_from_environment()
    from .entry import main as xrayseg

    return xrayseg(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
