"""Anatomical plausibility of a PA chest segmentation on a radiograph that has no reference masks.

A real radiograph without expert masks (such as the CR ``RG1_UNCR.dcm``) cannot give a Dice, but it can show
that a model is wrong: the spine off the midline, clavicles low in the chest or on one side only, ribs that
miss the lung fields, bone painted over the heart, scattered fragments. :func:`check_chest_pa` measures each
rule and returns its value, its threshold and the reason for it, so a report says why a segmentation fails.

The landmarks come from the image alone (:func:`chest_landmarks`): the two lung fields are the two largest
dark regions inside the body (Otsu threshold of the smoothed, normalised MONOCHROME2 image, after removing
the air outside the body); the thorax width is the distance between their lateral borders, the midline lies
half-way, and the heart region is the mediastinal gap between their medial borders over the lower half of the
lung height. Everything is measured relative to these (fractions of the thorax width or lung height), so the
rules hold whatever the pixel spacing. On a PA view the patient's right is on the image LEFT (column 0).

The thresholds were set on the exact projected labels of simulated PA views (every rule passes on them;
``Testing/Python/test_plausibility.py`` checks that and that each rule fails when its anatomy is broken), with
margins for real anatomy. They are coarse on purpose: passing them does not make a segmentation right;
failing one means it is wrong.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .chest_landmarks import ChestLandmarks, chest_landmarks  # noqa: F401 (chest_landmarks: imported from here too)

# Class roles by name (the classes of the bundled chest model; other names are matched by these words).
SPINE_WORDS = ("thoracic_spine", "spine", "vertebrae")
STERNUM_WORDS = ("sternum",)
CLAVICLE_WORDS = ("clavicle", "clavicula")
HUMERUS_WORDS = ("humer",)
SCAPULA_WORDS = ("scapul",)
RIB_WORDS = ("rib",)
# How many separate pieces each bone shows on a PA chest (a pair is two; overlapping ribs merge into a few).
EXPECTED_PIECES = {"spine": 1, "sternum": 1, "clavicles": 2, "scapulae": 2, "humeri": 2, "ribs": 12}


@dataclass
class RuleResult:
    """One rule: ``value`` measured, ``passed`` when it satisfies ``threshold`` (text such as ">= 0.90")."""

    name: str
    passed: bool | None  # None: not applicable (class or landmark missing)
    value: float
    threshold: str
    reason: str
    detail: str = ""


@dataclass
class PlausibilityReport:
    rules: list[RuleResult] = field(default_factory=list)
    landmarks: ChestLandmarks | None = None

    @property
    def passed(self) -> bool:
        """True when every applicable rule passed."""
        return all(r.passed is not False for r in self.rules) and any(r.passed for r in self.rules)

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.rules if r.passed is False]

    def to_dict(self) -> dict:
        lm = self.landmarks
        return {"passed": self.passed, "rules_passed": sum(bool(r.passed) for r in self.rules),
                "rules_failed": len(self.failed), "rules": [_clean(asdict(r)) for r in self.rules],
                "landmarks": None if lm is None else {
                    "midline_col": lm.midline_col, "thorax_width_px": lm.thorax_width_px,
                    "lung_top_row": lm.lung_top_row, "lung_bottom_row": lm.lung_bottom_row,
                    "heart_px": int(lm.heart.sum())}}

    def markdown(self) -> str:
        lines = ["| rule | result | value | threshold | why |", "|---|---|---:|---|---|"]
        for r in self.rules:
            verdict = "n/a" if r.passed is None else ("pass" if r.passed else "**FAIL**")
            value = "n/a" if not math.isfinite(r.value) else f"{r.value:.3f}"
            lines.append(f"| {r.name} | {verdict} | {value} | {r.threshold} | {r.reason} |")
        lines.append("")
        lines.append(f"{sum(bool(r.passed) for r in self.rules)} passed, {len(self.failed)} failed: "
                     + ("PLAUSIBLE" if self.passed else "NOT PLAUSIBLE"))
        return "\n".join(lines)


def _clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _roles(class_names: list[str]) -> dict[str, list[int]]:
    roles: dict[str, list[int]] = {k: [] for k in EXPECTED_PIECES}
    words = {"spine": SPINE_WORDS, "sternum": STERNUM_WORDS, "clavicles": CLAVICLE_WORDS, "humeri": HUMERUS_WORDS,
             "scapulae": SCAPULA_WORDS, "ribs": RIB_WORDS}
    for i, name in enumerate(class_names):
        lower = name.lower()
        for role, keys in words.items():
            if any(k in lower for k in keys) and not (role == "spine" and "cervical" in lower):
                roles[role].append(i)
                break
    return roles


def _side(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith("_left") or lower.startswith("left") or "_left_" in lower:
        return "left"
    if lower.endswith("_right") or lower.startswith("right") or "_right_" in lower:
        return "right"
    return None


def _union(masks: np.ndarray, indices: list[int]) -> np.ndarray:
    out = np.zeros(masks.shape[1:], bool)
    for i in indices:
        out |= masks[i]
    return out


def _rule(name, value, low=None, high=None, reason="", detail="") -> RuleResult:
    if low is not None and high is not None:
        text, ok = f"{low:g} .. {high:g}", low <= value <= high
    elif low is not None:
        text, ok = f">= {low:g}", value >= low
    else:
        text, ok = f"<= {high:g}", value <= high
    passed = bool(ok) if math.isfinite(value) else None
    return RuleResult(name, passed, float(value), text, reason, detail)


def _absent(name: str, threshold: str, reason: str, what: str) -> RuleResult:
    return RuleResult(name, None, float("nan"), threshold, reason, f"not applicable: {what}")


def _largest_pieces_fraction(mask: np.ndarray, pieces: int) -> float:
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return float("nan")
    sizes = np.sort(ndimage.sum(mask, labels, np.arange(1, count + 1)))[::-1]
    return float(sizes[:pieces].sum() / sizes.sum())


def check_chest_pa(masks: np.ndarray, class_names: list[str], normalized: np.ndarray,
                   landmarks: ChestLandmarks | None = None) -> PlausibilityReport:
    """Measure the PA chest rules on ``masks`` (C, H, W) bool of ``class_names`` over the normalised image."""
    masks = np.asarray(masks, bool)
    lm = landmarks or chest_landmarks(normalized)
    report = PlausibilityReport(landmarks=lm)
    if lm is None:
        report.rules.append(RuleResult("lung_fields_found", False, 0.0, "2 lung fields",
                                       "every other rule is measured against the two lung fields", "not found"))
        return report
    roles = _roles(class_names)
    width, height, mid = lm.thorax_width_px, lm.lung_height_px, lm.midline_col
    rules = report.rules

    spine = _union(masks, roles["spine"])
    reason = ("the thoracic spine projects onto the midline between the lung fields on a PA view (a rotated "
              "patient shifts it by up to about a tenth of the thorax width)")
    if spine.any():
        spine_rows = [r for r in range(int(lm.lung_top_row), int(lm.lung_bottom_row) + 1) if spine[r].any()]
        centres = [np.nonzero(spine[r])[0].mean() for r in spine_rows]
        spans = [np.ptp(np.nonzero(spine[r])[0]) + 1 for r in spine_rows]
        offset = float(np.median(np.abs(np.array(centres) - mid)) / width) if centres else float("inf")
        rules.append(_rule("spine_near_midline", offset, high=0.15, reason=reason,
                           detail="median |row centre - midline| / thorax width"))
        rules.append(_rule("spine_width", float(np.median(spans) / width) if spans else float("inf"), high=0.35,
                           reason="vertebrae with their transverse processes span a band about a fifth of the "
                                  "thorax; a wider band is not a spine", detail="median row width / thorax width"))
        rules.append(_rule("spine_along_lungs", len(spine_rows) / max(height, 1), low=0.6,
                           reason="T1-T12 run the whole height of the lung fields",
                           detail="fraction of lung-field rows with spine"))
    else:
        rules.append(_absent("spine_near_midline", "<= 0.15", reason, "no spine class or none predicted"))

    clav = _union(masks, roles["clavicles"])
    reason = "the clavicles cross the lung apices, in the upper third of the lung height"
    if clav.any():
        cr, cc = np.nonzero(clav)
        rules.append(_rule("clavicles_upper_third", float(np.mean(cr <= lm.lung_top_row + height / 3)), low=0.9,
                           reason=reason, detail="fraction of clavicle pixels above lung top + height/3"))
        left_share = float(np.mean(cc < mid))
        rules.append(_rule("clavicles_both_sides", min(left_share, 1 - left_share), low=0.25,
                           reason="there is one clavicle on each side of the midline",
                           detail="smaller side's share of clavicle pixels"))
    else:
        rules.append(_absent("clavicles_upper_third", ">= 0.9", reason, "no clavicle class or none predicted"))

    hum = _union(masks, roles["humeri"])
    reason = "the humeri lie lateral to the rib cage, beyond the lung fields"
    if hum.any():
        _, hc = np.nonzero(hum)
        rules.append(_rule("humeri_lateral", float(np.mean(np.abs(hc - mid) >= 0.35 * width)), low=0.8,
                           reason=reason, detail="fraction of humerus pixels farther than 0.35 thorax width "
                                                 "from the midline"))
    else:
        rules.append(_absent("humeri_lateral", ">= 0.8", reason, "no humerus class or none predicted"))

    # Sides: on a PA view the patient's right is on the image left.
    for i, name in enumerate(class_names):
        side = _side(name)
        if side is None or not masks[i].any():
            continue
        _, c = np.nonzero(masks[i])
        share = float(np.mean(c < mid) if side == "right" else np.mean(c > mid))
        rules.append(_rule(f"{name}_correct_side", share, low=0.9,
                           reason=f"the patient's {side} is on the image {'left' if side == 'right' else 'right'} "
                                  "of a PA view", detail=f"fraction of {name} pixels on that side of the midline"))

    ribs = _union(masks, roles["ribs"])
    for lung, label in ((lm.lung_image_left, "image-left (right) lung"), (lm.lung_image_right,
                                                                          "image-right (left) lung")):
        coverage = float((ribs & lung).sum() / max(lung.sum(), 1))
        rules.append(_rule(f"ribs_cover_{'right' if lung is lm.lung_image_left else 'left'}_lung", coverage,
                           0.3, 0.97, reason="posterior and anterior ribs overlap most of each lung field on a PA "
                                              "view, with intercostal gaps between them",
                           detail=f"fraction of the {label} field covered by ribs"))

    heart = lm.heart
    if heart.sum() > 0:
        others = _union(masks, roles["clavicles"] + roles["scapulae"] + roles["humeri"])
        rules.append(_rule("heart_no_limb_girdle", float((others & heart).sum() / heart.sum()), high=0.03,
                           reason="only the spine, the sternum and the ribs (which run through the cardiac shadow) "
                                  "project over the heart; shoulder-girdle bones never do",
                           detail="fraction of the heart region covered by clavicles, scapulae or humeri"))
        axial = _union(masks, roles["spine"] + roles["sternum"])
        rules.append(_rule("heart_not_painted_as_axial_bone", float((axial & heart).sum() / heart.sum()), high=0.85,
                           reason="the spine and sternum are a midline band narrower than the heart; covering most "
                                  "of the heart means the heart was taken for bone",
                           detail="fraction of the heart region covered by spine or sternum"))

    for role, pieces in EXPECTED_PIECES.items():
        if not roles[role]:
            continue
        limit = 0.8 if role == "ribs" else 0.9
        if role == "ribs":
            fractions = [_largest_pieces_fraction(masks[i], pieces) for i in roles[role] if masks[i].any()]
            value = float(min(fractions)) if fractions else float("nan")
        else:
            value = _largest_pieces_fraction(_union(masks, roles[role]), pieces)
        rules.append(_rule(f"{role}_not_fragmented", value, low=limit,
                           reason=f"each bone is one connected piece: {pieces} piece(s) expected for {role}; "
                                  "scattered fragments are noise",
                           detail=f"share of the area in the {pieces} largest connected components"))
    return report


def rib_classes(class_names: list[str]) -> list[int]:
    """Indices of the classes the rules count as ribs."""
    return _roles(class_names)["ribs"]


def rib_shadow_contrast(normalized: np.ndarray, ribs: np.ndarray, landmarks: ChestLandmarks) -> list[float]:
    """Do the ribs of a segmentation follow the rib shadows? A measurement reported beside the rules, not a rule.

    Inside each lung field (image left, image right): the band-pass image (Gaussians of 1/200 and 1/30 of the
    thorax width, the scale of a rib) averaged over the pixels called rib minus its mean over the rest of the
    field, in units of its spread there. Ribs painted as broad regions score about 0 (the bundled chest model
    0.3.0 on RG1: 0.07 and -0.09), ribs that follow the bright bands well above it (exact labels of simulated
    views: 0.3-0.4). It cannot be a rule: a broad region that leaves out the dark border of the field scores high
    as well, so it means something beside the overlay only. NaN where a field has < 10 pixels on either side."""
    from scipy import ndimage

    image = np.asarray(normalized, np.float32)
    width = landmarks.thorax_width_px
    band = ndimage.gaussian_filter(image, width / 200) - ndimage.gaussian_filter(image, width / 30)
    values = []
    for lung in (landmarks.lung_image_left, landmarks.lung_image_right):
        inside, outside = band[lung & ribs], band[lung & ~ribs]
        values.append(float((inside.mean() - outside.mean()) / max(float(band[lung].std()), 1e-9))
                      if inside.size >= 10 and outside.size >= 10 else float("nan"))
    return values


def check_prediction(prediction) -> PlausibilityReport:
    """Rules on an ``inference.Prediction`` (its masks, class names and normalised image)."""
    return check_chest_pa(prediction.masks, list(prediction.class_names), prediction.normalized)


def landmarks_overlay(prediction, report: PlausibilityReport) -> np.ndarray:
    """RGB uint8: the prediction's overlay with the lung-field and heart outlines (white) and the midline."""
    from XraySegSimLib.labels import LabelClass, LabelClasses
    from XraySegSimLib.overlay import mask_outline, overlay_rgb

    classes = LabelClasses(tuple(LabelClass(n, (i + 1,), tuple(c)) for i, (n, c) in
                                 enumerate(zip(prediction.class_names, prediction.colors))))
    gray = (np.clip(prediction.normalized, 0, 1) * 255).round().astype(np.uint8)
    rgb = overlay_rgb(gray, prediction.masks, prediction.label_image, classes)
    lm = report.landmarks
    if lm is not None:
        from scipy import ndimage

        for region in (lm.lung_image_left, lm.lung_image_right, lm.heart):
            edge = ndimage.binary_dilation(mask_outline(region), iterations=max(1, rgb.shape[0] // 400))
            rgb[edge] = (255, 255, 255)
        col = int(round(lm.midline_col))
        rgb[:, max(0, col - 1): col + 2] = (255, 255, 255)
    return rgb
