"""Clinical presets and the randomisation ranges used by the export (data)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import PhysicsError
from .chain import PhysicsParams
from .detector import DetectorParams, GridParams
from .processing import ProcessingParams
from .scatter import ScatterParams
from .spectrum import SpectrumParams


def _grid(ratio: float) -> GridParams:
    return GridParams(ratio=ratio)


PRESETS: dict[str, PhysicsParams] = {
    # Chest PA: high kV technique with grid, ~2 mAs at 180 cm (e.g. European guidelines on quality criteria for
    # diagnostic radiographic images, EUR 16260, 1996: 125 kV, grid r = 10, large focus <= 1.3 mm).
    "chest-pa": PhysicsParams(
        SpectrumParams(kvp=120.0, filtration_mm_al=3.0, filtration_mm_cu=0.1), mas=2.5,
        scatter=ScatterParams(grid=_grid(10.0)), focal_spot_mm=1.2, anode_side="top",
        processing=ProcessingParams(unsharp_amount=0.6, unsharp_sigma_mm=20.0, gamma=1.4)),
    # Wrist PA / lateral: 55-60 kV, no grid, small focus, ~2-4 mAs at 100 cm (EUR 16260: extremities < 60 kV).
    "wrist-pa": PhysicsParams(
        SpectrumParams(kvp=55.0, filtration_mm_al=2.5), mas=3.0, scatter=ScatterParams(grid=None),
        focal_spot_mm=0.6, anode_side="top", detector=DetectorParams(psf_sigma_mm=0.1),
        processing=ProcessingParams(unsharp_amount=0.5, unsharp_sigma_mm=4.0)),
    "wrist-lateral": PhysicsParams(
        SpectrumParams(kvp=60.0, filtration_mm_al=2.5), mas=4.0, scatter=ScatterParams(grid=None),
        focal_spot_mm=0.6, anode_side="top", detector=DetectorParams(psf_sigma_mm=0.1),
        processing=ProcessingParams(unsharp_amount=0.5, unsharp_sigma_mm=4.0)),
    # Lumbar spine lateral: 85-95 kV, grid r = 10-12, large focus, ~40 mAs at 100-115 cm.
    "lumbar-lateral": PhysicsParams(
        SpectrumParams(kvp=90.0, filtration_mm_al=2.5, filtration_mm_cu=0.1), mas=40.0,
        scatter=ScatterParams(grid=_grid(12.0)), focal_spot_mm=1.2, anode_side="top",
        processing=ProcessingParams(unsharp_amount=0.8, unsharp_sigma_mm=10.0)),
    # Pelvis / hip AP: 70-80 kV, grid r = 10, ~20 mAs at 100-115 cm.
    "pelvis-ap": PhysicsParams(
        SpectrumParams(kvp=75.0, filtration_mm_al=2.5, filtration_mm_cu=0.1), mas=20.0,
        scatter=ScatterParams(grid=_grid(10.0)), focal_spot_mm=1.2, anode_side="top",
        processing=ProcessingParams(unsharp_amount=0.8, unsharp_sigma_mm=10.0)),
}


PRESETS["hip-ap"] = PRESETS["pelvis-ap"]


# Randomisation ranges for export (uniform; "log" = log-uniform), by dotted parameter name. Chosen to span
# clinical practice across vendors and sites around each preset.
COMMON_RANGES: dict[str, tuple[float, float, str]] = {
    "spectrum.anode_angle_deg": (10.0, 16.0, "uniform"),
    "spectrum.filtration_mm_al": (2.5, 4.0, "uniform"),
    "detector.thickness_mm": (0.4, 0.7, "uniform"),
    "detector.psf_sigma_mm": (0.08, 0.3, "uniform"),
    "detector.electronic_noise_quanta": (0.0, 10.0, "uniform"),
    "scatter.spr_at_20cm": (2.0, 5.0, "uniform"),  # the published range, PUBLISHED_SPR_20CM_WATER
    "scatter.kernel_sigma_mm": (25.0, 60.0, "uniform"),
    "processing.unsharp_amount": (0.0, 1.5, "uniform"),
    "processing.unsharp_sigma_mm": (4.0, 30.0, "uniform"),
    "processing.gamma": (0.9, 1.6, "uniform"),
}


RANDOMIZATION_RANGES: dict[str, dict[str, tuple[float, float, str]]] = {
    "chest-pa": {"spectrum.kvp": (110.0, 130.0, "uniform"), "mas": (1.0, 5.0, "log"),
                 "spectrum.filtration_mm_cu": (0.0, 0.2, "uniform"), "focal_spot_mm": (1.0, 1.3, "uniform")},
    "wrist-pa": {"spectrum.kvp": (50.0, 62.0, "uniform"), "mas": (1.0, 8.0, "log"),
                 "focal_spot_mm": (0.4, 0.8, "uniform")},
    "wrist-lateral": {"spectrum.kvp": (52.0, 65.0, "uniform"), "mas": (1.5, 10.0, "log"),
                      "focal_spot_mm": (0.4, 0.8, "uniform")},
    "lumbar-lateral": {"spectrum.kvp": (85.0, 95.0, "uniform"), "mas": (20.0, 80.0, "log"),
                       "spectrum.filtration_mm_cu": (0.0, 0.2, "uniform"), "focal_spot_mm": (1.0, 1.3, "uniform")},
    "pelvis-ap": {"spectrum.kvp": (70.0, 82.0, "uniform"), "mas": (10.0, 40.0, "log"),
                  "spectrum.filtration_mm_cu": (0.0, 0.2, "uniform"), "focal_spot_mm": (1.0, 1.3, "uniform")},
}


RANDOMIZATION_RANGES["hip-ap"] = RANDOMIZATION_RANGES["pelvis-ap"]


def preset(name: str | None) -> PhysicsParams:
    """Physics parameters of a named preset (``PRESETS``); None gives the defaults."""
    if name is None:
        return PhysicsParams()
    if name not in PRESETS:
        raise PhysicsError(f"unknown physics preset {name!r}; use one of {sorted(PRESETS)}")
    return PRESETS[name]


def randomized(name: str, rng: np.random.Generator | int | None = None, kvp_step: float = 1.0) -> PhysicsParams:
    """A random draw around preset ``name`` within ``COMMON_RANGES`` and ``RANDOMIZATION_RANGES[name]``.

    kVp is rounded to ``kvp_step`` so spectra (spekpy, ~0.2 s each) and tables are re-used from the caches."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    base = preset(name)
    ranges = {**COMMON_RANGES, **RANDOMIZATION_RANGES.get(name, {})}
    changes: dict[str, Any] = {}
    for key, (low, high, kind) in sorted(ranges.items()):
        value = math.exp(rng.uniform(math.log(low), math.log(high))) if kind == "log" else rng.uniform(low, high)
        changes[key] = round(value / kvp_step) * kvp_step if key == "spectrum.kvp" else float(value)
    if base.scatter.grid is None:
        changes = {k: v for k, v in changes.items() if not k.startswith("scatter.grid")}
    return base.replace(**changes)
