"""On-disk layout of an exported training set (nnU-Net v2 raw dataset) and the region ("atom") label encoding.

See ``export`` for the whole contract. This module knows the paths, the dataset-level files and the encoding
(the sample files are written by ``export_nrrd``, ``export_masks`` and ``export_preview``):

* images: 2D NRRD, float32, raw encoding (fast to write and read), ``space dimension: 2``, ``space directions``
  = diag(column mm, row mm), origin 0: SimpleITK reads the detector pixel spacing as the image spacing;
* labels: 2D NRRD, uint8 (uint16 beyond 255 atoms), gzip, same spacing;
* masks: NRRD of the uint8 (C, H, W) stack (C-order; NRRD axes: column, row, class-list), gzip (run-coded by
  :func:`gzip_runs`: a standard gzip stream, fast to write);
* atoms: every combination of overlapping classes that occurs gets one integer. Atoms ``1..C`` are reserved for
  the single classes (atom ``c`` = class ``c`` alone, 1-based class index) whether or not they occur alone;
  combinations of two or more classes get ``C+1, C+2, ...`` sorted by (size, class indices). So the label
  values are consecutive (nnU-Net requires it), ``regions_class_order = [1, ..., C]`` turns region predictions
  back into a single-class map (later classes win), and the numbering depends only on the set of
  combinations in the dataset, never on the order samples were made in.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import InputError
from .io import atomic_path, write_json

FILE_ENDING = ".nrrd"
MANIFEST_FIELDS = ["case", "ct_id", "split", "view", "view_index", "status", "message"]


@dataclass(frozen=True)
class DatasetLayout:
    """Paths of one dataset folder ``<out>/Dataset<ID>_<Name>``."""

    root: Path

    @classmethod
    def create(cls, out: str | Path, dataset_id: int, name: str) -> "DatasetLayout":
        if not 0 <= int(dataset_id) <= 999:
            raise InputError(f"the dataset id must be 0..999 (3 digits), got {dataset_id}")
        clean = "".join(ch for ch in name if ch.isalnum() or ch in "_-") or "XraySeg"
        return cls(Path(out) / f"Dataset{int(dataset_id):03d}_{clean}")

    def _split_dir(self, kind: str, split: str) -> Path:
        return self.root / f"{kind}{'Tr' if split == 'train' else 'Ts'}"

    def image(self, case: str, split: str) -> Path:
        return self._split_dir("images", split) / f"{case}_0000{FILE_ENDING}"

    def label(self, case: str, split: str) -> Path:
        return self._split_dir("labels", split) / f"{case}{FILE_ENDING}"

    def masks(self, case: str, split: str) -> Path:
        return self._split_dir("masks", split) / f"{case}{FILE_ENDING}"

    def sidecar(self, case: str) -> Path:
        return self.root / "sidecars" / f"{case}.json"

    def preview(self, case: str) -> Path:
        return self.root / "previews" / f"{case}.png"

    def codes(self, case: str) -> Path:
        """Per-sample combination codes (uint16 .npy) and their table: turned into atoms by the finalisation."""
        return self.root / ".work" / "codes" / f"{case}.npz"

    @property
    def config(self) -> Path:
        return self.root / "export.json"

    @property
    def cancel_flag(self) -> Path:
        return self.root / ".work" / "cancel"

    def sample_files(self, case: str, split: str, preview: bool = True) -> list[Path]:
        files = [self.image(case, split), self.masks(case, split), self.codes(case)]
        return files + ([self.preview(case)] if preview else [])

    def folders(self) -> list[Path]:
        return [self.root / d for d in ("imagesTr", "labelsTr", "masksTr", "imagesTs", "labelsTs", "masksTs",
                                        "sidecars", "previews", ".work/codes")]


def case_name(ct_id: str, view: int) -> str:
    return f"{ct_id}_v{view:04d}"


def sample_complete(layout: DatasetLayout, case: str, split: str, previews: bool) -> bool:
    return layout.sidecar(case).is_file() and all(p.is_file() for p in layout.sample_files(case, split, previews))


def atom_table(n_classes: int, combos: Iterable[tuple[int, ...]]) -> dict[tuple[int, ...], int]:
    """{combination: atom}; () -> 0, (c,) -> c, larger combinations C+1... in (size, indices) order."""
    table: dict[tuple[int, ...], int] = {(): 0}
    table.update({(c,): c for c in range(1, n_classes + 1)})
    multi = sorted({tuple(sorted(c)) for c in combos if len(c) > 1}, key=lambda c: (len(c), c))
    table.update({combo: n_classes + 1 + i for i, combo in enumerate(multi)})
    return table


def atoms_json(table: dict[tuple[int, ...], int], class_names: Sequence[str]) -> dict[str, Any]:
    return {
        "description": "atom (label value in labelsTr/labelsTs) -> the 1-based class indices it contains "
                       "(classes.json); 0 = background. Atoms 1..C are the single classes.",
        "classes": list(class_names),
        "atoms": {str(atom): list(combo) for combo, atom in sorted(table.items(), key=lambda kv: kv[1])},
    }


def dataset_json(name: str, class_names: Sequence[str], table: dict[tuple[int, ...], int], num_training: int,
                 num_test: int, extra: dict | None = None, ignore_label: int | None = None) -> dict[str, Any]:
    """nnU-Net v2 dataset.json for region-based training: each class is the region of the atoms containing it.
    ``ignore_label``: the value of unknown pixels (nnU-Net v2 ``"ignore"``: the highest value, an int)."""
    labels: dict[str, Any] = {"background": 0}
    for index, class_name in enumerate(class_names, start=1):
        labels[class_name] = sorted(atom for combo, atom in table.items() if index in combo)
    if ignore_label is not None:
        labels["ignore"] = int(ignore_label)
    data = {
        "channel_names": {"0": "radiograph"},
        "labels": labels,
        "regions_class_order": list(range(1, len(class_names) + 1)),
        "numTraining": int(num_training),
        "file_ending": FILE_ENDING,
        "overwrite_image_reader_writer": "SimpleITKIO",
        "name": name,
        "description": "Simulated radiographs (XraySeg) with exactly projected, overlapping bone labels. "
                       "Region-based labels: see atoms.json and classes.json.",
        "numTest": int(num_test),
    }
    data.update(extra or {})
    return data


# ---------------------------------------------------------------------------------------------------------------
# Manifest and disk space


def write_manifest(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, MANIFEST_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in MANIFEST_FIELDS})
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def read_manifest(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    return list(csv.DictReader(path.read_text().splitlines()))


def expected_sample_bytes(rows: int, cols: int, n_classes: int, previews: bool = True) -> int:
    """Generous estimate of one sample on disk: raw float32 image, compressed masks/labels/codes, preview, JSON."""
    pixels = rows * cols
    image = 4 * pixels + 1024
    masks = int(0.08 * n_classes * pixels) + pixels // 4 + 1024  # gzip of sparse binary masks
    labels = pixels // 2 + 1024
    codes = 2 * pixels + 1024
    preview = (3 * pixels) // 2 if previews else 0
    return image + masks + labels + codes + preview + 32 * 1024


def check_disk_space(folder: Path, needed_bytes: int) -> None:
    """Raise InputError if ``folder``'s file system has less than ``needed_bytes`` (+5 %) free."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes * 1.05:
        raise InputError(
            f"not enough disk space in {probe}: the export needs about {needed_bytes / 1e9:.2f} GB, only "
            f"{free / 1e9:.2f} GB are free. Free space, pick another --out, or lower --views-per-ct / --size"
        )


def write_classes_json(path: Path, rows: list[dict]) -> None:
    write_json(path, {"description": "dataset classes, in mask-stack and atom order (index is 1-based); "
                                     "label_values/label_names: in the default names table", "classes": rows})


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
