"""Shared pieces of the physics chain: its error type, valid ranges and parameter checks."""

from __future__ import annotations

import math

import numpy as np

from ..errors import XraySegError


class PhysicsError(XraySegError):
    """A physics parameter is out of its valid range; the message says the range."""


KVP_RANGE = (20.0, 150.0)


"""Diagnostic radiography range accepted here. spekpy itself models W targets from 10 to 500 kV (spekpy docs);
the scatter and grid data used below are for 50-150 kVp, and below 20 kV nothing crosses a patient."""


ANODE_ANGLE_RANGE = (5.0, 25.0)


REFERENCE_DISTANCE_CM = 100.0  # spekpy's fluence is given at this focus distance (z = 100 cm)


FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _check_range(name: str, value: float, low: float, high: float, unit: str = "") -> None:
    if not (np.isfinite(value) and low <= value <= high):
        raise PhysicsError(f"{name} = {value}{unit} is outside the valid range [{low:g}, {high:g}]{unit}")


def _check_non_negative(name: str, value: float, unit: str = "") -> None:
    if not (np.isfinite(value) and value >= 0):
        raise PhysicsError(f"{name} = {value}{unit} must be finite and >= 0{unit}")


def _check_photometric(value: str) -> None:
    if value not in ("MONOCHROME1", "MONOCHROME2"):
        raise PhysicsError(f"photometric interpretation {value!r} must be 'MONOCHROME1' or 'MONOCHROME2'")
