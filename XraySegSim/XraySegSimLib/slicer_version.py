"""The oldest Slicer the modules run in, and the start-up check against it (Qt-free: the caller passes what it
reads from ``slicer.app`` and ``slicer.vtkSegment``).

Slicer 5.10 is the first with ``vtkSegment.SetTerminology`` / ``GetTerminology`` (segment terminology as a
property of the segment), which both modules use for the projected and the predicted bone segments.
"""

from __future__ import annotations

MINIMUM_SLICER = (5, 10)


def slicer_version_problem(major: int, minor: int, has_segment_terminology: bool) -> str | None:
    """None when this Slicer is new enough, else a message saying what to install."""
    if (int(major), int(minor)) < MINIMUM_SLICER or not has_segment_terminology:
        found = f"{major}.{minor}" + ("" if has_segment_terminology else " (without vtkSegment.SetTerminology)")
        return (f"XraySeg needs Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or newer; this is Slicer {found}. "
                "Install a current Slicer from download.slicer.org and the XraySeg extension for it")
    return None


def check_running_slicer(slicer_module) -> str | None:
    """:func:`slicer_version_problem` for the running application (``slicer`` module with ``app``)."""
    app = slicer_module.app
    return slicer_version_problem(app.majorVersion, app.minorVersion,
                                  hasattr(slicer_module.vtkSegment, "SetTerminology"))


__all__ = ["MINIMUM_SLICER", "check_running_slicer", "slicer_version_problem"]
