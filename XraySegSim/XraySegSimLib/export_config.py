"""What decides an export's content (``ExportConfig``, stored in ``export.json``) and the records it passes
between the coordinator (``export.run_export``) and its workers (``export_worker.process_ct``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .export_inputs import CaseInput, ClassMapping
from .virtual_patient import VirtualPatientRanges

FORMAT_VERSION = 1

# name: (low, high) of a uniform draw. Angles in degrees, shifts in mm, scales relative to the preset.
DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "lao_deg": (-10.0, 10.0),  # C-arm rotation about the isocentre (LAO +, RAO -)
    "cranial_deg": (-8.0, 8.0),  # CRA +, CAU -
    "roll_deg": (-5.0, 5.0),  # in-plane rotation about the principal ray
    "shift_r_mm": (-20.0, 20.0),  # isocentre shift along R, A, S
    "shift_a_mm": (-10.0, 10.0),
    "shift_s_mm": (-25.0, 25.0),
    "sdd_scale": (0.9, 1.1),  # SDD = preset SDD x this
    "magnification_scale": (0.95, 1.05),  # M = SDD / SID = preset M x this (kept >= 1.02)
    "pixel_scale": (0.85, 1.15),  # pixel spacing = (preset detector longer side / size) x this
}
# Views whose physics preset has another name (physics.PRESETS has no entry of their own).
PHYSICS_FOR_VIEW = {"chest-lateral": "chest-pa", "chest-ap": "chest-pa", "lumbar-ap": "pelvis-ap",
                    "carm-ap": "pelvis-ap", "wrist-oblique-pronated": "wrist-pa",
                    "wrist-oblique-supinated": "wrist-pa"}


@dataclass
class ExportConfig:
    """Everything that decides the dataset's content (stored in ``export.json``; resume checks it)."""

    out: str
    dataset_id: int = 501
    dataset_name: str = "XraySeg"
    view: str = "chest-pa"
    views_per_ct: int = 10
    size: int = 512
    physics: str = "auto"  # "auto" (the view's physics preset), a physics preset name, or "none"
    randomize_physics: bool = True
    ranges: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_RANGES))
    randomize_geometry: bool = True
    seed: int = 0
    test_fraction: float = 0.2
    test_ids: tuple[str, ...] | None = None
    isocenter: str = "labels"  # "labels" (centroid of the projected labels) or "center"
    previews: bool = True
    # Longest side of previews/<case>.png: a thumbnail, reduced by a whole factor (512^2 samples: 256^2, a
    # quarter of the disk and of the PNG coding); 0 = the image's full resolution.
    preview_max_px: int = 256
    # Move the detector back along the principal ray when a drawn geometry puts it inside the body (the
    # projector integrates from the source to the detector only: anatomy beyond the plane would be cut off).
    detector_beyond_body: bool = True
    # Mark pixels whose ray crosses body beyond a cut face of the CT as nnU-Net's "ignore" (see truncation).
    ignore_truncated: bool = True
    # Virtual patients (see virtual_patient): 0 = the CT as it is; N > 0 = every sample is one of N random bodies
    # made from the CT (sample v is patient v % N), with these ranges (VirtualPatientRanges fields).
    virtual_patients: int = 0
    virtual_patient_ranges: dict = field(default_factory=lambda: VirtualPatientRanges().to_dict())
    # Virtual non-contrast (see contrast): set the CT's iodine-enhanced blood and organs, found from the label
    # map's heart, vessel and organ labels, to blood HU before rendering; plain radiographs have no contrast.
    suppress_contrast: bool = False
    # Image-domain randomisation (see domain_randomisation): "none", "light" or "strong".
    domain_randomisation: str = "none"

    def physics_preset(self) -> str | None:
        from . import physics

        if self.physics == "none":
            return None
        name = self.view if self.physics == "auto" else self.physics
        name = name if name in physics.PRESETS else PHYSICS_FOR_VIEW.get(name, name)
        if name not in physics.PRESETS:
            raise InputError(f"unknown physics preset '{self.physics}'; use 'auto', 'none' or one of "
                             f"{sorted(physics.PRESETS)}")
        return name

    def content_dict(self) -> dict[str, Any]:
        """The fields that must match on resume (not out, workers...)."""
        data = dataclasses.asdict(self)
        data.pop("out")
        data["ranges"] = {k: list(v) for k, v in sorted(self.ranges.items())}
        data["test_ids"] = list(self.test_ids) if self.test_ids is not None else None
        return data


@dataclass
class SampleOutcome:
    case: str
    ct_id: str
    split: str
    view: int | str
    status: str  # ok / skipped (already complete) / failed / cancelled
    message: str = ""

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CtTask:
    case: CaseInput
    split: str
    views: list[int]  # view indices still to make
    config: ExportConfig
    mapping: ClassMapping
    root: str
    threads: int | None
    device: str = "cpu"  # where the projector traces: "cpu" or "cuda" (resolved by run_export)


@dataclass
class ExportReport:
    root: Path
    samples: list[SampleOutcome]
    failed_cts: dict[str, str]
    elapsed_s: float
    cancelled: bool = False

    @property
    def n_ok(self) -> int:
        return sum(s.status in ("ok", "skipped") for s in self.samples)


def to_jsonable(value: Any) -> Any:
    """``value`` with dataclasses, tuples, NumPy arrays and scalars turned into JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value

