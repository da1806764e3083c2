"""The dataset's classes (:class:`ClassMapping`), defined by label names so that CTs whose label maps use
different values map onto the same classes, and the names tables {value: name} they are read with (split from
export_inputs, whose module docstring describes the mapping formats: ``bones``, group specs, JSON)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import InputError
from .labels import (BONE_GROUPS_TOTALSEGMENTATOR, NOT_BONE, LabelClass, LabelClasses, expand_names,
                     palette_color, read_names_table)

TOTALSEGMENTATOR = "totalsegmentator"


def names_table(option: str | Mapping | None) -> dict[int, str]:
    """{value: name} from 'totalsegmentator' (or None), a CSV path, or a {value: name} mapping."""
    if option is None or option == TOTALSEGMENTATOR:
        return {v: n for v, (n, _) in read_names_table().items()}
    if isinstance(option, Mapping):
        return {int(v): str(n) for v, n in option.items()}
    return {v: n for v, (n, _) in read_names_table(option).items()}


@dataclass(frozen=True)
class ClassMapping:
    """The dataset's classes, in order; each has member patterns (label names, ranges, wildcards) or raw values."""

    names: tuple[str, ...]
    members: tuple[tuple[str | int, ...], ...]
    colors: tuple[tuple[float, float, float], ...]
    default_names: str | dict | None = None  # names table for cases with none of their own
    spec: object = None  # what it was built from (recorded in export.json)

    def __len__(self) -> int:
        return len(self.names)

    def classes_for(self, table: Mapping[int, str] | None) -> LabelClasses:
        """Per-CT classes (same names and order as the dataset, absent ones dropped) for a names table."""
        by_name: dict[str, int] = {}
        for value, name in (table or {}).items():
            by_name.setdefault(name, int(value))
        known = list(by_name)
        used: set[int] = set()
        out = []
        for name, members, color in zip(self.names, self.members, self.colors):
            values: list[int] = []
            for member in members:
                if isinstance(member, int):
                    candidates = [member]
                else:
                    candidates = [by_name[n] for n in expand_names(member, known) if n in by_name]
                values.extend(v for v in candidates if v not in used and v not in values)
            used.update(values)
            if values:
                out.append(LabelClass(name, tuple(values), color))
        return LabelClasses(tuple(out))

    def describe(self, table: Mapping[int, str] | None) -> list[dict]:
        """classes.json rows: index (1-based), name, colour, and the label names/values in ``table``."""
        per_ct = {c.name: c for c in self.classes_for(table).classes}
        rows = []
        for index, (name, members, color) in enumerate(zip(self.names, self.members, self.colors), start=1):
            values = list(per_ct[name].values) if name in per_ct else []
            rows.append({"index": index, "name": name, "color_rgb": list(color),
                         "members": [m for m in members],
                         "label_values": values,
                         "label_names": [(table or {}).get(v, f"label_{v}") for v in values]})
        return rows


def _from_groups(groups: Mapping[str, Sequence[str | int]], colors: Mapping[str, Sequence[float]] | None = None,
                 default_names=None, spec=None) -> ClassMapping:
    if not groups:
        raise InputError("the class mapping defines no classes")
    names = tuple(groups)
    members = tuple(tuple(int(m) if isinstance(m, (int, np.integer)) else str(m) for m in groups[n]) for n in names)
    palette = tuple(tuple(float(c) for c in (colors or {}).get(n, palette_color(i)))[:3]  # type: ignore[misc]
                    for i, n in enumerate(names))
    return ClassMapping(names, members, palette, default_names, spec)  # type: ignore[arg-type]


def bone_mapping() -> ClassMapping:
    """Every TotalSegmentator v1 bone as its own class (the default)."""
    table = read_names_table()
    bones = [n for n, g in table.values() if g in BONE_GROUPS_TOTALSEGMENTATOR and n not in NOT_BONE]
    return _from_groups({n: [n] for n in bones}, spec="bones")


def duplicate_class_message(name: str, where: str) -> str:
    return (f"the class '{name}' is defined twice (at {where}); a later definition would silently replace the "
            "first: give each class one group listing all its labels (name = a, b, c)")


def _no_duplicate_keys(path: Path):
    def hook(pairs: list[tuple[str, Any]]) -> dict:
        keys = [k for k, _ in pairs]
        for key in keys:
            if keys.count(key) > 1:
                raise InputError(duplicate_class_message(key, str(path)))
        return dict(pairs)

    return hook


def load_mapping(option: str | Path | None, default_names: str | None = None) -> ClassMapping:
    """A :class:`ClassMapping` from 'bones' (default), a group spec (inline or file), or a JSON file."""
    if option is None or str(option) == "bones":
        mapping = bone_mapping()
        return ClassMapping(mapping.names, mapping.members, mapping.colors, default_names, "bones")
    if str(option) == "all":  # every name of the default names table is its own class, in value order
        table = names_table(default_names)
        mapping = _from_groups({name: [name] for _, name in sorted(table.items())})
        return ClassMapping(mapping.names, mapping.members, mapping.colors, default_names, "all")
    text = str(option)
    path = Path(text)
    if path.suffix.lower() == ".json":
        if not path.is_file():
            raise InputError(f"class mapping file not found: {path}")
        try:
            data = json.loads(path.read_text(), object_pairs_hook=_no_duplicate_keys(path))
        except json.JSONDecodeError as error:
            raise InputError(f"class mapping {path}: not valid JSON ({error})") from None
        names_option = default_names
        colors: dict[str, Sequence[float]] = {}
        if isinstance(data, dict):
            names_option = data.get("names", default_names)
            if isinstance(names_option, str) and names_option != TOTALSEGMENTATOR and not Path(names_option).is_absolute():
                names_option = str(path.parent / names_option)
            classes = data.get("classes")
        else:
            classes = data
        if isinstance(classes, list):
            groups = {}
            for item in classes:
                if not isinstance(item, dict) or "name" not in item:
                    raise InputError(f"class mapping {path}: each class needs a 'name' and 'labels'")
                if item["name"] in groups:
                    raise InputError(duplicate_class_message(item["name"], str(path)))
                groups[item["name"]] = list(item.get("labels", [item["name"]]))
                if "color" in item:
                    colors[item["name"]] = item["color"]
        elif isinstance(classes, dict):
            groups = {k: (v if isinstance(v, list) else [v]) for k, v in classes.items()}
        else:
            raise InputError(f"class mapping {path}: needs a 'classes' object {{name: [labels]}} or a list")
        return _from_groups(groups, colors, names_option, str(path))
    if path.is_file():
        text = path.read_text()
    # A group spec: patterns stay unexpanded here; ranges and wildcards are expanded against each CT's own
    # names table (see ``ClassMapping.classes_for``).
    raw: dict[str, list[str | int]] = {}
    for line in re.split(r"[;\n]", text):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, members = (line.split("=", 1) + [line])[:2] if "=" in line else (line, line)
        if name.strip() in raw:
            raise InputError(duplicate_class_message(name.strip(), line))
        raw[name.strip()] = [m.strip() for m in members.split(",") if m.strip()]
        if not name.strip() or not raw[name.strip()]:
            raise InputError(f"class group '{line}' names no labels")
    return _from_groups(raw, default_names=default_names, spec=str(option))


def mapping_has_any(mapping: ClassMapping, tables: Iterable[Mapping[int, str] | None]) -> bool:
    return any(len(mapping.classes_for(t)) for t in tables)
