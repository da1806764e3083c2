"""Errors of the segmentation core. All are ``XraySegError``s, so the CLI turns them into a message + exit 2."""

from __future__ import annotations

from XraySegSimLib.errors import InputError, XraySegError


class RadiographReadError(InputError):
    """A radiograph file cannot be read or holds no usable image."""


class ModelPackageError(XraySegError):
    """A model package is missing, corrupt, or does not fit its own card (classes vs network output, etc.)."""


class DatasetError(InputError):
    """A training/evaluation dataset folder does not follow the nnU-Net v2 layout we export."""


__all__ = ["DatasetError", "InputError", "ModelPackageError", "RadiographReadError", "XraySegError"]
