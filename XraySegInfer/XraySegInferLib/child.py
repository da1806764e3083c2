"""``python -m XraySegInferLib.child ARGS``: ``xrayseg ARGS`` as a background child that dies with its parent.

:class:`XraySegSimLib.background.BackgroundProcess` puts its own pid in ``XRAYSEG_PARENT_PID``. When that
process is gone without having cancelled the run (Slicer crashed or was closed), a watchdog thread
(``XraySegSimLib.process_guard.watch_parent``, which the export worker uses too) kills the child's whole
process group (pool workers included) within ``WATCH_PERIOD_S``, instead of letting it go on computing and
writing. It watches that pid, not ``getppid()``: a launcher such as Slicer's ``PythonSlicer`` may stand
between the two. POSIX only (on Windows ``os.kill`` would terminate the process it probes). Without the
variable this is plain ``xrayseg``.
"""

from __future__ import annotations

import sys

# The watchdog lives in Sim (Infer may import Sim), where the export worker uses it too.
from XraySegSimLib.process_guard import (PARENT_PID_VARIABLE, WATCH_PERIOD_S, watch_parent,  # noqa: F401
                                         watch_parent_from_environment)


def main(argv: list[str] | None = None) -> int:
    """Watch the parent named by ``XRAYSEG_PARENT_PID`` (if set), then run ``xrayseg`` with ``argv``."""
    watch_parent_from_environment()
    from .entry import main as xrayseg

    return xrayseg(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
