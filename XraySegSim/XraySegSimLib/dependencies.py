"""Python packages the Slicer modules need beyond what Slicer ships, installed only after the user agrees.

Qt-free: the question and the installer are passed in (the module gives ``slicer.util.confirmOkCancelDisplay``
and ``slicer.util.pip_install``), so nothing installs at import time and the tests can check the behaviour.

* Packages are checked on first use (``find_spec``, nothing is imported); when some are missing the user is asked
  once (a declined answer is remembered for the session) and ``pip_install`` installs them.
* pip never touches what Slicer (or the PyTorch extension) already put there: torch, SimpleITK, numpy and
  requests are pinned to their installed versions in a constraints file passed with ``-c`` (as
  SlicerTotalSegmentator and SlicerNNUNet protect theirs), so a dependency that asks for another version makes
  pip fail with a message instead of replacing Slicer's copy.

::

    installer = Dependencies(confirm=slicer.util.confirmOkCancelDisplay, pip_install=slicer.util.pip_install,
                             requirements=SIM_REQUIREMENTS, title="XraySeg Sim")
    installer.ensure()                 # raises DependencyError with what to do when the user declines
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import tempfile
from typing import Callable, Sequence

from .errors import XraySegError

# import name -> pip requirement: what rendering, physics and export import (Slicer ships numpy and vtk).
SIM_REQUIREMENTS: dict[str, str] = {
    "numba": "numba>=0.60",
    "nrrd": "pynrrd>=1.0",
    "spekpy": "spekpy>=2.5",
    "xraydb": "xraydb>=4.5",
}
# Distributions pip must never replace inside Slicer: Slicer's own (SimpleITK, numpy, requests) and the torch
# build the PyTorch extension chose for the GPU driver.
PROTECTED_DISTRIBUTIONS = ("torch", "SimpleITK", "numpy", "requests")


class DependencyError(XraySegError):
    """A package is missing and was not installed; the message says how to get it."""


def missing_packages(requirements: dict[str, str]) -> list[str]:
    """pip requirements of the packages that cannot be found (nothing is imported)."""
    def absent(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except (ImportError, ValueError):  # a finder that refuses it, a half-removed package
            return True
    return [spec for name, spec in requirements.items() if absent(name)]


def protected_constraints(distributions: Sequence[str] = PROTECTED_DISTRIBUTIONS) -> list[str]:
    """``name==version`` of each protected distribution that is installed (pip constraints)."""
    pins = []
    for name in distributions:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def is_protected(requirement: str) -> bool:
    """True when a pip requirement names a protected distribution (never installed by us)."""
    name = requirement.split(";")[0].strip()
    for stop in "<>=!~[ ":
        name = name.split(stop)[0]
    return name.lower().replace("_", "-") in {d.lower() for d in PROTECTED_DISTRIBUTIONS}


class Dependencies:
    """Checks, asks once, installs with the protected distributions pinned.

    ``confirm(text) -> bool``; ``pip_install(arguments: list[str])`` (``slicer.util.pip_install`` takes a list of
    pip arguments, so a constraints path with spaces stays one argument)."""

    def __init__(self, confirm: Callable[[str], bool], pip_install: Callable[[list[str]], None],
                 requirements: dict[str, str] | None = None, title: str = "XraySeg Sim") -> None:
        self.confirm, self.pip_install = confirm, pip_install
        self.requirements = SIM_REQUIREMENTS if requirements is None else requirements
        self.title = title
        self.declined = False
        self.asked = 0
        refused = [spec for spec in self.requirements.values() if is_protected(spec)]
        if refused:
            raise ValueError(f"never install {', '.join(refused)} with pip inside Slicer")

    def _ask(self, text: str) -> bool:
        self.asked += 1
        answer = bool(self.confirm(text))
        self.declined = not answer
        return answer

    def missing(self) -> list[str]:
        return missing_packages(self.requirements)

    def ensure(self) -> list[str]:
        """Make sure ``requirements`` import; returns what was installed."""
        missing = self.missing()
        if not missing:
            return []
        if self.declined or not self._ask(
                f"{self.title} needs these Python packages, which are not installed yet:\n  " + "\n  ".join(missing)
                + "\nInstall them now (pip, into Slicer's Python)? Slicer's own torch, SimpleITK, numpy and "
                "requests are kept as they are."):
            raise DependencyError(f"{self.title}: missing Python packages: {', '.join(missing)}. Open the module "
                                  "again and accept the installation (a restart is not needed)")
        self.install(missing)
        importlib.invalidate_caches()
        still = self.missing()
        if still:
            raise DependencyError("these packages did not install: " + ", ".join(still) + "; see the Python console")
        return missing

    def install(self, requirements: Sequence[str]) -> None:
        """``pip install REQUIREMENTS -c <constraints>`` with the protected distributions pinned."""
        handle, path = tempfile.mkstemp(prefix="xrayseg-constraints-", suffix=".txt")
        try:
            with os.fdopen(handle, "w") as out:
                out.write("\n".join(protected_constraints()) + "\n")
            self.pip_install([*requirements, "-c", path])
        finally:
            os.unlink(path)


__all__ = ["DependencyError", "Dependencies", "PROTECTED_DISTRIBUTIONS", "SIM_REQUIREMENTS", "is_protected",
           "missing_packages", "protected_constraints"]
