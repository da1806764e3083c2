"""Output classes for label projection: which label-map values are projected, and how they are grouped.

A :class:`LabelClasses` is an ordered list of output classes. Class ``c`` (1-based in label images,
0 = background) gathers one or more label-map values, e.g. ``ribs = rib_left_1..12, rib_right_1..12``.
Each label value belongs to at most one class, so the projector needs a single lookup per voxel, and only
the requested classes cost memory (one thickness image each).

Group specification syntax (one group per line or ``;``-separated)::

    ribs = rib_left_1..12, rib_right_1..12     # ".." expands a trailing number range
    spine = vertebrae_*                        # shell-style wildcards
    sternum                                    # a single name keeps its own name
"""

from __future__ import annotations

import colorsys
import csv
import fnmatch
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .errors import InputError

BONE_GROUPS_TOTALSEGMENTATOR = ("vertebrae", "skeleton", "ribs", "test")
NOT_BONE = {"costal_cartilages"}  # in TotalSegmentator's "ribs" group, but cartilage


@dataclass(frozen=True)
class LabelClass:
    """One output class: its name, the label-map values it gathers, and a display colour (RGB 0..1)."""

    name: str
    values: tuple[int, ...]
    color: tuple[float, float, float]


def palette_color(index: int) -> tuple[float, float, float]:
    """Distinct, bright colours for any number of classes (golden-angle hues)."""
    hue = (index * 0.618033988749895) % 1.0
    return tuple(round(c, 4) for c in colorsys.hsv_to_rgb(hue, 0.7, 0.95))  # type: ignore[return-value]


def expand_names(pattern: str, known_names: Iterable[str]) -> list[str]:
    """``rib_left_1..12`` -> rib_left_1 ... rib_left_12; wildcards match known names; else the name itself."""
    pattern = pattern.strip()
    ranged = re.fullmatch(r"(.*?)(\d+)\.\.(\d+)", pattern)
    if ranged:
        stem, first, last = ranged.group(1), int(ranged.group(2)), int(ranged.group(3))
        step = 1 if last >= first else -1
        return [f"{stem}{n}" for n in range(first, last + step, step)]
    if any(ch in pattern for ch in "*?["):
        return [n for n in known_names if fnmatch.fnmatchcase(n, pattern)]
    return [pattern]


def parse_group_spec(text: str, known_names: Sequence[str]) -> dict[str, list[str]]:
    """Parse ``name = member, member..N`` lines into {class name: [label names]} (see module docstring)."""
    groups: dict[str, list[str]] = {}
    for raw in re.split(r"[;\n]", text):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" in line:
            name, members = (part.strip() for part in line.split("=", 1))
        else:
            name, members = line, line
        expanded = [n for member in members.split(",") if member.strip() for n in expand_names(member, known_names)]
        if not name or not expanded:
            raise InputError(f"class group '{line}' names no labels")
        if name in groups:  # a second definition would silently drop the first
            raise InputError(f"the class '{name}' is defined twice (at '{line}'); give each class one group listing "
                             "all its labels (name = a, b, c)")
        groups[name] = expanded
    return groups


def read_names_table(path: str | Path | None = None) -> dict[int, tuple[str, str]]:
    """{label value: (name, group)} from a CSV with columns value,name[,group]; default: TotalSegmentator v1."""
    if path is None:
        text = resources.files(__package__).joinpath("data/totalsegmentator_v1.csv").read_text()
    else:
        p = Path(path)
        if not p.exists():
            raise InputError(f"label names table not found: {p}")
        text = p.read_text()
    rows = csv.DictReader(text.splitlines())
    if not rows.fieldnames or not {"value", "name"} <= set(rows.fieldnames):
        raise InputError("a label names table needs a header with at least the columns: value,name")
    return {int(r["value"]): (r["name"].strip(), (r.get("group") or "").strip()) for r in rows}


@dataclass(frozen=True)
class LabelClasses:
    """Ordered output classes; class index ``c`` in label images is ``classes[c - 1]``."""

    classes: tuple[LabelClass, ...]

    def __post_init__(self) -> None:
        seen: dict[int, str] = {}
        for cls in self.classes:
            for value in cls.values:
                if value <= 0:
                    raise InputError(f"class '{cls.name}': label value {value} is background; use values >= 1")
                if value in seen:
                    raise InputError(
                        f"label value {value} is in both '{seen[value]}' and '{cls.name}'; "
                        "each label value may belong to one output class only"
                    )
                seen[value] = cls.name

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def values(self) -> set[int]:
        return {v for c in self.classes for v in c.values}

    def lookup_table(self, max_value: int) -> np.ndarray:
        """``lut[label value] = class index`` (1-based; 0 = not projected) for values 0..max_value."""
        dtype = np.uint8 if len(self.classes) < 255 else np.uint16
        lut = np.zeros(max(int(max_value), max(self.values, default=0)) + 1, dtype=dtype)
        for index, cls in enumerate(self.classes, start=1):
            lut[list(cls.values)] = index
        return lut

    def restricted_to(self, present_values: Iterable[int]) -> "LabelClasses":
        """Only the classes that have at least one of ``present_values`` (e.g. the labels in one CT)."""
        present = set(int(v) for v in present_values)
        return LabelClasses(tuple(c for c in self.classes if present & set(c.values)))

    @classmethod
    def from_values(cls, values: Mapping[int, str] | Sequence[int]) -> "LabelClasses":
        """One class per label value; names from a {value: name} mapping or ``label_<value>``."""
        items = values.items() if isinstance(values, Mapping) else [(v, f"label_{v}") for v in values]
        return cls(tuple(LabelClass(name, (int(v),), palette_color(i)) for i, (v, name) in enumerate(items)))

    @classmethod
    def from_names(
        cls,
        names_table: Mapping[int, str],
        groups: Mapping[str, Sequence[str]],
    ) -> "LabelClasses":
        """Classes from {class: [label names]} using a {value: name} table; unknown names are an error."""
        by_name = {name: value for value, name in names_table.items()}
        classes = []
        for index, (class_name, members) in enumerate(groups.items()):
            missing = [m for m in members if m not in by_name]
            if missing:
                raise InputError(
                    f"class '{class_name}': unknown label name(s) {', '.join(missing[:5])}; "
                    "check the names table (value,name CSV) or the spelling"
                )
            classes.append(LabelClass(class_name, tuple(by_name[m] for m in members), palette_color(index)))
        return cls(tuple(classes))

    @classmethod
    def totalsegmentator_bones(cls, group_spec: str | None = None) -> "LabelClasses":
        """TotalSegmentator v1 bones: one class per bone, or the groups of ``group_spec`` if given."""
        table = read_names_table()
        bone_names = [name for name, group in table.values()
                      if group in BONE_GROUPS_TOTALSEGMENTATOR and name not in NOT_BONE]
        names = {value: name for value, (name, _) in table.items()}
        if group_spec:
            return cls.from_names(names, parse_group_spec(group_spec, list(names.values())))
        return cls.from_names(names, {n: [n] for n in bone_names})


def unknown_label_values(present_values: Iterable[int], names_table: Mapping[int, object]) -> list[int]:
    """Non-zero label values present in a label map but absent from its names table (to report, then ignore)."""
    return sorted(int(v) for v in present_values if int(v) != 0 and int(v) not in names_table)
