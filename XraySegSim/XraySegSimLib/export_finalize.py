"""The export's last step: labels from the dataset-wide atom table, orphans removed, then classes.json,
atoms.json, the manifest and dataset.json (last)."""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from .export_config import FORMAT_VERSION, ExportConfig, SampleOutcome, to_jsonable
from .export_inputs import CaseInput, ClassMapping, names_table
from .export_layout import (DatasetLayout, atom_table, atoms_json, case_name, dataset_json, load_json,
                            sample_complete, write_classes_json, write_manifest)
from .export_nrrd import write_image_2d
from .io import write_json


def finalize(layout: DatasetLayout, cases: Sequence[CaseInput], splits: dict[str, str], config: ExportConfig,
             mapping: ClassMapping, outcomes: list[SampleOutcome], failed: dict[str, str]) -> None:
    """Atoms over all complete samples -> labels; remove orphans; classes.json, atoms.json, manifest,
    dataset.json (last)."""
    complete: list[tuple[str, str]] = []
    unknown: dict[str, list[int]] = {}
    combos_all: set[tuple[int, ...]] = set()
    any_ignored = False
    for case in cases:
        for view in range(config.views_per_ct):
            name, split = case_name(case.ct_id, view), splits[case.ct_id]
            if sample_complete(layout, name, split, config.previews):
                complete.append((name, split))
                sidecar = load_json(layout.sidecar(name))
                combos_all.update(tuple(c) for c in sidecar["combinations"])
                any_ignored = any_ignored or bool(sidecar.get("ignored_pixels"))
                unknown[name] = sidecar.get("unknown_label_values_ignored") or []
    complete_names = {n for n, _ in complete}
    # Orphans: files of samples whose sidecar was never written (interrupted, failed): nnU-Net must not see them.
    for folder in ("imagesTr", "imagesTs", "labelsTr", "labelsTs", "masksTr", "masksTs", "previews"):
        for path in (layout.root / folder).glob("*"):
            stem = path.name.split(".")[0]
            stem = stem[:-5] if stem.endswith("_0000") and folder.startswith("images") else stem
            if stem not in complete_names:
                path.unlink(missing_ok=True)
    table = atom_table(len(mapping), combos_all)
    previous = layout.root / "atoms.json"
    new_atoms = atoms_json(table, mapping.names)
    same_table = previous.is_file() and load_json(previous) == to_jsonable(new_atoms)
    # nnU-Net v2: the ignore label must be the highest label value, one above the last atom.
    ignore_label = max(table.values()) + 1 if any_ignored else None
    dtype = np.uint8 if max(table.values()) + 1 < 256 else np.uint16
    for name, split in complete:
        target = layout.label(name, split)
        if same_table and target.is_file():
            continue
        with np.load(layout.codes(name)) as data:
            codes, combos = data["codes"], json.loads(str(data["combos"]))
            ignored = (np.unpackbits(data["ignored"], count=codes.size).reshape(codes.shape).astype(bool)
                       if "ignored" in data.files else None)
        lut = np.array([table[tuple(c)] for c in combos], dtype)
        spacing = load_json(layout.sidecar(name))["spacing_mm"]
        label = lut[codes]
        if ignore_label is not None and ignored is not None:
            label[ignored] = ignore_label
        write_image_2d(target, label, spacing, encoding="gzip")
    write_classes_json(layout.root / "classes.json", mapping.describe(names_table(mapping.default_names)))
    write_json(previous, new_atoms)
    rows = []
    status = {(o.case): o for o in outcomes}
    for case in cases:
        if case.ct_id in failed and not any(n.startswith(case.ct_id + "_v") for n in complete_names):
            rows.append({"case": "", "ct_id": case.ct_id, "split": splits[case.ct_id], "view": "",
                         "status": "failed", "message": failed[case.ct_id]})
            continue
        for view in range(config.views_per_ct):
            name = case_name(case.ct_id, view)
            if name in complete_names:
                note = f"label values {unknown[name]} are not in the names table: ignored" if unknown[name] else ""
                rows.append({"case": name, "ct_id": case.ct_id, "split": splits[case.ct_id], "view": config.view,
                             "view_index": view, "status": "ok", "message": note})
            else:
                o = status.get(name)
                rows.append({"case": name, "ct_id": case.ct_id, "split": splits[case.ct_id], "view": config.view,
                             "view_index": view, "status": o.status if o and o.status != "ok" else "incomplete",
                             "message": (o.message if o else "") or failed.get(case.ct_id, "")})
    write_manifest(layout.root / "manifest.csv", rows)
    n_train = sum(split == "train" for _, split in complete)
    write_json(layout.root / "dataset.json", dataset_json(
        config.dataset_name, mapping.names, table, n_train, len(complete) - n_train, ignore_label=ignore_label,
        extra={"xrayseg": {"format_version": FORMAT_VERSION, "view": config.view, "size": config.size,
                           "physics": config.physics, "seed": config.seed,
                           "test_ct_ids": sorted(i for i, s in splits.items() if s == "test")}}))
