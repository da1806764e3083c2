"""Clinical view presets and C-arm angles, producing :class:`XrayGeometry` in RAS.

Presets assume the CT patient is in the standard anatomical position in RAS (as Slicer shows any CT after
reading its orientation): head towards +S, face towards +A. Each preset gives where the source sits
relative to the isocentre, the detector's display axes (see ``geometry`` for the display convention),
and typical distances and detector sizes.

C-arm angles: at LAO = CRA = 0 the source is posterior and the detector anterior (an under-table tube).
LAO (positive ``lao_deg``) turns the detector towards the patient's left, RAO is negative LAO;
CRA (positive ``cranial_deg``) tilts the detector towards the head, CAU is negative CRA.
The rotation is ``Rz(lao) @ Rx(cranial)`` about the isocentre, in RAS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import GeometryError
from .geometry import XrayGeometry, pixel_counts

RIGHT, LEFT = np.array([1.0, 0, 0]), np.array([-1.0, 0, 0])
ANTERIOR, POSTERIOR = np.array([0, 1.0, 0]), np.array([0, -1.0, 0])
SUPERIOR, INFERIOR = np.array([0, 0, 1.0]), np.array([0, 0, -1.0])


@dataclass(frozen=True)
class ViewPreset:
    """A clinical projection: source side, displayed image axes, and typical distances (mm)."""

    name: str
    description: str
    source_direction: np.ndarray  # unit RAS vector from the isocentre towards the source
    column_axis: np.ndarray  # screen right
    row_axis: np.ndarray  # screen down
    source_to_detector_mm: float
    source_to_isocenter_mm: float
    detector_mm: tuple[float, float]  # width (along columns), height (along rows)


PRESETS: dict[str, ViewPreset] = {
    p.name: p
    for p in [
        ViewPreset("chest-pa", "Chest PA, erect, 180 cm, 43x43 cm detector", POSTERIOR, LEFT, INFERIOR,
                   1800.0, 1650.0, (430.0, 430.0)),
        ViewPreset("chest-lateral", "Chest left lateral, 180 cm; anterior on screen left", RIGHT, POSTERIOR,
                   INFERIOR, 1800.0, 1620.0, (430.0, 430.0)),
        ViewPreset("chest-ap", "Chest AP (supine/bedside), 100 cm", ANTERIOR, LEFT, INFERIOR,
                   1000.0, 850.0, (430.0, 430.0)),
        ViewPreset("wrist-pa", "Wrist PA (dorsal to palmar), 100 cm, fingers up on screen", POSTERIOR,
                   RIGHT, SUPERIOR, 1000.0, 970.0, (240.0, 240.0)),
        ViewPreset("wrist-lateral", "Wrist lateral, 100 cm, fingers up on screen", RIGHT, ANTERIOR,
                   SUPERIOR, 1000.0, 965.0, (240.0, 240.0)),
        # The two 45-degree obliques of a right wrist: wrist-pa turned about the forearm axis (S) by +45 and +135
        # degrees (the C-arm's LAO), i.e. the beam enters dorso-radially (PA oblique of the semi-pronated hand)
        # or palmo-radially (AP oblique of the semi-supinated hand, which frees the pisiform).
        ViewPreset("wrist-oblique-pronated", "Wrist PA oblique, hand semi-pronated 45 deg, 100 cm",
                   (POSTERIOR + RIGHT) / np.sqrt(2), (RIGHT + ANTERIOR) / np.sqrt(2), SUPERIOR,
                   1000.0, 970.0, (240.0, 240.0)),
        ViewPreset("wrist-oblique-supinated", "Wrist AP oblique, hand semi-supinated 45 deg, 100 cm",
                   (ANTERIOR + RIGHT) / np.sqrt(2), (ANTERIOR + LEFT) / np.sqrt(2), SUPERIOR,
                   1000.0, 970.0, (240.0, 240.0)),
        ViewPreset("lumbar-ap", "Lumbar spine AP, supine, 100 cm with Bucky", ANTERIOR, LEFT, INFERIOR,
                   1000.0, 850.0, (350.0, 430.0)),
        ViewPreset("lumbar-lateral", "Lumbar spine left lateral, 100 cm; anterior on screen left", RIGHT,
                   POSTERIOR, INFERIOR, 1000.0, 820.0, (350.0, 430.0)),
        ViewPreset("pelvis-ap", "Pelvis / hip AP, supine, 115 cm", ANTERIOR, LEFT, INFERIOR,
                   1150.0, 1000.0, (430.0, 350.0)),
        ViewPreset("carm-ap", "C-arm at LAO 0 / CRA 0: under-table source, detector anterior", POSTERIOR, LEFT,
                   INFERIOR, 1200.0, 800.0, (300.0, 300.0)),
    ]
}
PRESET_NAMES = tuple(PRESETS)


def rotation_z(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def rotation_x(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def rotation_y(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def carm_rotation(lao_deg: float, cranial_deg: float) -> np.ndarray:
    """RAS rotation of a C-arm at (LAO, CRA) degrees relative to its AP position."""
    return rotation_z(lao_deg) @ rotation_x(cranial_deg)


def from_preset(
    name: str,
    isocenter: Sequence[float],
    size: int | tuple[int, int] = 512,
    source_to_detector_mm: float | None = None,
    source_to_isocenter_mm: float | None = None,
    detector_mm: tuple[float, float] | None = None,
    lao_deg: float = 0.0,
    cranial_deg: float = 0.0,
) -> XrayGeometry:
    """Geometry of a clinical view aimed at ``isocenter`` (RAS mm).

    ``size`` is the pixel count: an int gives that many pixels along the longer detector side and square
    pixels; a (columns, rows) tuple is used as is. Distances and detector size default to the preset's.
    ``lao_deg``/``cranial_deg`` then rotate the whole set-up about the isocentre (C-arm convention).
    """
    try:
        preset = PRESETS[name]
    except KeyError:
        raise GeometryError(f"unknown view '{name}'; choose one of: {', '.join(PRESET_NAMES)}") from None
    sdd = preset.source_to_detector_mm if source_to_detector_mm is None else float(source_to_detector_mm)
    sid = preset.source_to_isocenter_mm if source_to_isocenter_mm is None else float(source_to_isocenter_mm)
    width, height = preset.detector_mm if detector_mm is None else detector_mm
    if not 0 < sid < sdd:
        raise GeometryError(
            f"source-to-isocentre distance ({sid} mm) must be positive and below the source-to-detector "
            f"distance ({sdd} mm), or the patient would be behind the detector"
        )
    if isinstance(size, int):
        pixels = pixel_counts(width, height, size)
        spacing = (max(width, height) / size,) * 2
    else:
        pixels = (int(size[0]), int(size[1]))
        spacing = (width / pixels[0], height / pixels[1])
    iso = np.asarray(isocenter, dtype=float).reshape(3)
    source = iso + sid * preset.source_direction
    center = source - sdd * preset.source_direction
    geometry = XrayGeometry(source, center, preset.column_axis, preset.row_axis, pixels, spacing, iso, name)
    if lao_deg or cranial_deg:
        geometry = geometry.rotated(carm_rotation(lao_deg, cranial_deg), about=iso)
    return geometry


def from_carm(
    lao_deg: float,
    cranial_deg: float,
    isocenter: Sequence[float],
    size: int | tuple[int, int] = 512,
    source_to_detector_mm: float = 1200.0,
    source_to_isocenter_mm: float = 800.0,
    detector_mm: tuple[float, float] = (300.0, 300.0),
) -> XrayGeometry:
    """C-arm geometry from LAO/RAO (+/-) and cranial/caudal (+/-) angles in degrees, about ``isocenter``."""
    return from_preset(
        "carm-ap", isocenter, size, source_to_detector_mm, source_to_isocenter_mm, detector_mm,
        lao_deg, cranial_deg,
    )
