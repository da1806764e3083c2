"""Python packages and the compute device, for the Slicer module. Qt-free: the questions and the installer are
passed in (the module gives ``slicer.util.confirmOkCancelDisplay`` and ``slicer.util.pip_install``), so nothing
installs at import time and the tests can check the behaviour.

* **torch** comes from Slicer's PyTorch extension (``PyTorchUtils``), which installs the build that fits the GPU
  driver; never from pip here.
* The other packages (``REQUIREMENTS``) are checked on first use; when some are missing the user is asked once
  (a declined answer is remembered for the session) and ``pip_install`` installs them, with torch, SimpleITK,
  numpy and requests pinned to the installed versions (``XraySegSimLib.dependencies``), so pip never replaces
  them.
* ``resolve_device("auto" | "cuda" | "cpu")`` falls back to the CPU honestly: the note says why.

::

    installer = Dependencies(confirm=slicer.util.confirmOkCancelDisplay, pip_install=slicer.util.pip_install)
    installer.ensure()                 # raises DependencyError with what to do when the user declines
    device, note = resolve_device("auto")
"""

from __future__ import annotations

from XraySegSimLib.dependencies import (PROTECTED_DISTRIBUTIONS, DependencyError, missing_packages,
                                        protected_constraints)
from XraySegSimLib.dependencies import Dependencies as _Installer

from .errors import XraySegError

# import name -> pip requirement (what the inference path imports, besides torch and what Slicer ships: SimpleITK
# comes with Slicer and is never installed or replaced by pip here).
REQUIREMENTS: dict[str, str] = {
    "monai": "monai>=1.3",
    "safetensors": "safetensors>=0.4",
    "nrrd": "pynrrd>=1.0",
    "numba": "numba>=0.60",
    "pydicom": "pydicom>=2.4",
    "PIL": "pillow>=10",
}
DEVICES = ("Auto", "CUDA", "CPU")


class Dependencies(_Installer):
    """torch first (from the PyTorch extension), then ``requirements`` with the protected distributions pinned
    (``XraySegSimLib.dependencies.Dependencies``)."""

    def __init__(self, confirm, pip_install, requirements: dict[str, str] | None = None,
                 title: str = "XraySeg Infer") -> None:
        super().__init__(confirm, pip_install, REQUIREMENTS if requirements is None else requirements, title)

    def ensure_torch(self):
        """torch, from the PyTorch extension (installed through it after asking)."""
        try:
            import torch

            return torch
        except ImportError:
            pass
        try:
            import PyTorchUtils  # the PyTorch extension's module
        except ImportError as error:
            raise DependencyError(
                "PyTorch is needed. Install the 'PyTorch' extension from the Extensions Manager, restart "
                "Slicer, then run again (it installs the torch build that fits your GPU driver)") from error
        logic = PyTorchUtils.PyTorchUtilsLogic()
        if not logic.torchInstalled():
            if self.declined or not self._ask("XraySeg Infer needs PyTorch. Install it now with the PyTorch "
                                              "extension? (a download of up to a few GB)"):
                raise DependencyError("PyTorch is not installed; run again and accept the installation, or use "
                                      "the PyTorch Utils module")
            torch = logic.installTorch(askConfirmation=False)
            if torch is None:
                raise DependencyError("the PyTorch installation failed; see the Python console")
            return torch
        import torch

        return torch

    def ensure(self) -> list[str]:
        """Make sure torch and ``requirements`` import; returns what was installed. torch comes first, so the
        constraints pin the build PyTorchUtils chose before monai is installed."""
        self.ensure_torch()
        return super().ensure()


def resolve_device(choice: str = "Auto") -> tuple[str, str]:
    """("cuda" | "cpu", note). "Auto" takes CUDA when torch sees a GPU; "CUDA" without one falls back to the CPU
    with a note saying why (no GPU, or a CPU-only torch build)."""
    import torch

    choice = (choice or "Auto").strip().lower()
    if choice not in ("auto", "cuda", "cpu"):
        raise XraySegError(f"device must be one of {', '.join(DEVICES)}, got {choice!r}")
    if choice == "cpu":
        return "cpu", "Running on the CPU (chosen)."
    if torch.cuda.is_available():
        return "cuda", f"Running on CUDA GPU {torch.cuda.get_device_name(0)}."
    if torch.version.cuda is None:
        why = (f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build with the PyTorch Utils "
               "module to use a GPU")
    else:
        why = f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU or driver"
    prefix = "CUDA was chosen, but" if choice == "cuda" else "No GPU:"
    return "cpu", f"{prefix} {why}. Running on the CPU: slower (seconds per image), same result."


__all__ = ["DEVICES", "PROTECTED_DISTRIBUTIONS", "Dependencies", "DependencyError", "REQUIREMENTS", "missing_packages",
           "protected_constraints", "resolve_device"]
