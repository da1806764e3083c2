"""Inputs of a batch export: which CTs (with their labels), and one common class list for all of them.

**Cases** come from one CT + labels, a folder, or a CSV (see :func:`discover_cases`). Each case has a CT id
(sanitised to letters, digits and underscores, unique), a CT path (NIfTI, NRRD, MHA or a DICOM series folder)
and optionally a labels path: a label map on the CT grid (any of those formats), a Slicer ``.seg.nrrd`` (segment
names become the label names; a cropped segmentation is placed back on the CT grid), or a TotalSegmentator
``segmentations/`` folder (one binary mask per structure, named by the file name).

**Classes** (:class:`ClassMapping`) are defined by *label names*, so CTs whose label maps use different values
map onto the same classes: each CT has a names table {value: name} (default TotalSegmentator v1; a CSV
``value,name``; from the ``.seg.nrrd`` segments; or the CSV column ``names``). A mapping is

* ``bones``: every TotalSegmentator bone is its own class;
* a group spec, inline or a text file: ``ribs = rib_left_1..12, rib_right_1..12; spine = vertebrae_*``;
* a JSON file: ``{"classes": {"ribs": ["rib_left_1..12", "rib_right_1..12"], "L1": ["vertebrae_L1"],
  "implant": [200]}, "names": "table.csv"}`` (integers are label values taken as they are; ``names`` is the
  default names table for cases that have none) or a list ``[{"name": ..., "labels": [...], "color": [r,g,b]}]``.

A class none of whose labels occurs in a CT is *absent* there (all-zero masks), not an error. Label values that
are not in a CT's names table are reported, then ignored.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InputError
# The class mapping lives in export_mapping; its names stay importable from here, where callers found them.
from .export_mapping import (TOTALSEGMENTATOR, ClassMapping, bone_mapping, duplicate_class_message,  # noqa: F401
                             load_mapping, mapping_has_any, names_table)
from .volume import Volume, read_volume

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def sanitize_id(text: str) -> str:
    """CT ids: letters, digits and underscores only (nnU-Net case names are ``<ctid>_v<NNNN>``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    return cleaned or "ct"


def strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in (".seg.nrrd",) + IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class CaseInput:
    """One CT to export. ``names``: 'totalsegmentator', a CSV path, or None (the mapping's default)."""

    ct_id: str
    ct: str
    labels: str | None = None
    names: str | None = None
    split: str | None = None  # "train" / "test" to force the split of this CT

    def to_dict(self) -> dict:
        return {"ct_id": self.ct_id, "ct": self.ct, "labels": self.labels, "names": self.names, "split": self.split}


def _unique_ids(cases: list[CaseInput]) -> list[CaseInput]:
    seen: dict[str, int] = {}
    out = []
    for case in cases:
        base = sanitize_id(case.ct_id)
        n = seen.get(base, 0)
        seen[base] = n + 1
        ct_id = base if n == 0 else f"{base}_{n + 1}"
        out.append(CaseInput(ct_id, case.ct, case.labels, case.names, case.split))
    return out


def _find_image(folder: Path, stems: Sequence[str]) -> Path | None:
    for stem in stems:
        for suffix in IMAGE_SUFFIXES:
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
        if (folder / stem).is_dir() and stem in ("ct", "dicom"):
            return folder / stem
    return None


def _labels_in(folder: Path) -> Path | None:
    segs = sorted(folder.glob("*.seg.nrrd"))
    if segs:
        return segs[0]
    found = _find_image(folder, ["labels", "label", "mask", "seg", "segmentation"])
    if found is not None:
        return found
    if (folder / "segmentations").is_dir():
        return folder / "segmentations"
    return None


def discover_folder(folder: str | Path) -> list[CaseInput]:
    """Cases in a folder, in sorted order. Two layouts are recognised:

    * one sub-folder per CT: ``<case>/ct.nii.gz`` (or .nii/.nrrd/.mha, or a DICOM folder ``ct/``) with labels
      ``<case>/labels.*`` (also label/mask/seg/segmentation.*), ``<case>/*.seg.nrrd`` or ``<case>/segmentations/``
      (TotalSegmentator's dataset layout); the CT id is the sub-folder name;
    * flat files: ``<case>_ct.<ext>`` with ``<case>_labels.<ext>`` or ``<case>_labels.seg.nrrd``.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"input folder not found: {root}")
    cases = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        ct = _find_image(sub, ["ct", "image", "dicom"])
        if ct is not None:
            cases.append(CaseInput(sub.name, str(ct), str(_labels_in(sub)) if _labels_in(sub) else None))
    for ct in sorted(root.iterdir()):
        stem = strip_suffix(ct.name)
        if ct.is_file() and stem.endswith("_ct"):
            base = stem[:-3]
            labels = None
            for cand in [root / f"{base}_labels.seg.nrrd"] + [root / f"{base}_labels{s}" for s in IMAGE_SUFFIXES]:
                if cand.exists():
                    labels = cand
                    break
            cases.append(CaseInput(base, str(ct), str(labels) if labels else None))
    if not cases:
        raise InputError(
            f"no CTs found in {root}: use one sub-folder per CT holding ct.nii.gz (or .nrrd/.mha, or a DICOM "
            "folder ct/) and labels.nii.gz / *.seg.nrrd / segmentations/, or flat files <case>_ct.nii.gz with "
            "<case>_labels.nii.gz"
        )
    return _unique_ids(cases)


def read_pairs_csv(path: str | Path) -> list[CaseInput]:
    """Cases from a CSV with a header: columns ``ct`` and ``labels`` (required), ``id``, ``names`` and ``split``
    (optional). Relative paths are relative to the CSV's folder."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"pairs CSV not found: {p}")
    rows = list(csv.DictReader(p.read_text().splitlines()))
    if not rows or "ct" not in rows[0]:
        raise InputError(f"{p}: needs a header line with at least the columns ct,labels (optional: id,names,split)")

    def resolve(value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        q = Path(value.strip())
        return str(q if q.is_absolute() else (p.parent / q))

    cases = []
    for row in rows:
        ct = resolve(row.get("ct"))
        if ct is None:
            continue
        split = (row.get("split") or "").strip().lower() or None
        if split not in (None, "train", "test"):
            raise InputError(f"{p}: split must be 'train' or 'test', got '{split}'")
        cases.append(CaseInput((row.get("id") or "").strip() or strip_suffix(Path(ct).name), ct,
                               resolve(row.get("labels")), resolve(row.get("names")), split))
    return _unique_ids(cases)


def single_case(ct: str | Path, labels: str | Path | None, ct_id: str | None = None) -> list[CaseInput]:
    return _unique_ids([CaseInput(ct_id or strip_suffix(Path(ct).name), str(ct), str(labels) if labels else None)])


def check_cases_exist(cases: Sequence[CaseInput]) -> None:
    """Refuse, before any output is made, a case whose CT or labels path does not exist (a batch export otherwise
    creates the dataset folder and reports the case as a failed CT)."""
    for case in cases:
        for what, path in (("CT", case.ct), ("labels", case.labels)):
            if path is not None and not Path(path).exists():
                raise InputError(f"{what} of {case.ct_id}: file not found: {path}; check the path (relative paths in "
                                 "a --pairs CSV are relative to the CSV's folder)")


# ---------------------------------------------------------------------------------------------------------------
# Classes


# ---------------------------------------------------------------------------------------------------------------
# Reading one case


@dataclass
class LoadedCase:
    ct: Volume
    labels: Volume | None
    names: dict[int, str] | None
    notes: list[str] = field(default_factory=list)


def _read_totalsegmentator_folder(folder: Path, ct: Volume) -> tuple[Volume, dict[int, str]]:
    """One binary mask per structure (``<name>.nii.gz``) -> a label map; values from the TotalSegmentator v1
    table when the name is in it, else new values after its largest."""
    v1 = {n: v for v, n in names_table(TOTALSEGMENTATOR).items()}
    files = sorted(p for p in folder.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise InputError(f"labels folder {folder} holds no mask files (.nii.gz, .nrrd...)")
    next_value = max(v1.values()) + 1
    table: dict[int, str] = {}
    out: np.ndarray | None = None
    for file in files:
        name = strip_suffix(file.name)
        value = v1.get(name)
        if value is None:
            value, next_value = next_value, next_value + 1
        mask = read_volume(file, f"mask {file.name}")
        if not mask.same_grid_as(ct):
            raise InputError(f"mask {file} is not on the CT grid: {mask.describe_grid()} vs CT {ct.describe_grid()}")
        if out is None:
            out = np.zeros(ct.array.shape, np.uint16 if next_value > 255 else np.uint8)
        out[mask.array > 0] = value
        table[value] = name
    assert out is not None
    return Volume(out, ct.ijk_to_ras.copy(), f"labels {folder}"), table


def load_case(case: CaseInput, mapping: ClassMapping) -> LoadedCase:
    """Read a case's CT, labels and names table; raises InputError with what to fix."""
    from .seg_nrrd import embed_on_grid, read_seg_nrrd

    ct = read_volume(case.ct, f"CT {case.ct_id}")
    if case.labels is None:
        return LoadedCase(ct, None, None)
    labels_path = Path(case.labels)
    notes: list[str] = []
    if not labels_path.exists():
        raise InputError(f"labels of {case.ct_id}: file not found: {labels_path}")
    if labels_path.name.lower().endswith(".seg.nrrd"):
        seg = read_seg_nrrd(labels_path)
        embedded = embed_on_grid(seg.labels, ct)
        if embedded is None:
            raise InputError(
                f"the segmentation {labels_path} is not on the CT grid of {case.ct_id} (nor a cropped part of it): "
                f"{seg.labels.describe_grid()} vs CT {ct.describe_grid()}; resample it onto the CT (nearest "
                "neighbour), e.g. in Slicer with the CT as the segmentation's reference geometry"
            )
        if seg.overlap_voxels:
            notes.append(f"{seg.overlap_voxels} voxels belong to several segments; the later segment was used")
        return LoadedCase(ct, embedded, seg.names, notes)
    from .mesh_labels import is_mesh_labels_source, load_mesh_labels

    if is_mesh_labels_source(labels_path):  # a folder of meshes or a mesh mapping file: voxelised on the CT grid
        meshes = load_mesh_labels(labels_path, ct)
        return LoadedCase(ct, meshes.labels, meshes.names, notes + meshes.notes)
    if labels_path.is_dir() and not any(labels_path.glob("*.dcm")) and labels_path.name != "ct":
        labels, table = _read_totalsegmentator_folder(labels_path, ct)
        return LoadedCase(ct, labels, table, notes)
    labels = read_volume(labels_path, f"labels {case.ct_id}")
    if not labels.same_grid_as(ct):
        raise InputError(
            f"the label map grid differs from the CT grid for {case.ct_id}: labels {labels.describe_grid()} vs CT "
            f"{ct.describe_grid()}. Resample the labels onto the CT grid (nearest neighbour)"
        )
    table = names_table(case.names if case.names else mapping.default_names)
    return LoadedCase(ct, labels, table, notes)
