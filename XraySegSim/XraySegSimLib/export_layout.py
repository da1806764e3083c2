"""On-disk layout of an exported training set (nnU-Net v2 raw dataset) and the region ("atom") label encoding.

See ``export`` for the whole contract. This module only knows paths, file formats and the encoding:

* images: 2D NRRD, float32, raw encoding (fast to write and read), ``space dimension: 2``, ``space directions``
  = diag(column mm, row mm), origin 0: SimpleITK reads the detector pixel spacing as the image spacing;
* labels: 2D NRRD, uint8 (uint16 beyond 255 atoms), gzip, same spacing;
* masks: NRRD of the uint8 (C, H, W) stack (C-order; NRRD axes: column, row, class-list), gzip;
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

import numpy as np

from .errors import InputError
from .io import atomic_path, write_json

FILE_ENDING = ".nrrd"
MANIFEST_FIELDS = ["case", "ct_id", "split", "view", "status", "message"]
GZIP_LEVEL = 1  # masks and labels are mostly zeros: level 1 is ~10x faster than 9 and ~as small


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


# ---------------------------------------------------------------------------------------------------------------
# NRRD writers


def _plane_header(spacing: Sequence[float]) -> dict[str, Any]:
    return {"space dimension": 2, "space directions": np.diag([float(spacing[0]), float(spacing[1])]),
            "space origin": np.zeros(2), "kinds": ["domain", "domain"]}


def write_image_2d(path: Path, image: np.ndarray, spacing: Sequence[float], encoding: str = "raw",
                   extra: dict | None = None) -> None:
    """A [row, column] image as a 2D NRRD whose spacing is (column mm, row mm)."""
    import nrrd

    header = _plane_header(spacing)
    header["encoding"] = encoding
    header.update(extra or {})
    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), np.ascontiguousarray(image), header, index_order="C", compression_level=GZIP_LEVEL)


def write_mask_stack(path: Path, masks: np.ndarray, spacing: Sequence[float], class_names: Sequence[str]) -> None:
    """uint8 (C, H, W) stack; read back with ``nrrd.read(path, index_order='C')``."""
    import nrrd

    header = {"space dimension": 2, "encoding": "gzip",
              "space directions": np.vstack([np.diag([float(spacing[0]), float(spacing[1])]), np.full(2, np.nan)]),
              "space origin": np.zeros(2), "kinds": ["domain", "domain", "list"],
              "labels": ["column", "row", "class"],
              "xrayseg_classes": "|".join(class_names)}
    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), np.ascontiguousarray(masks, dtype=np.uint8), header, index_order="C",
                   compression_level=GZIP_LEVEL)


def read_nrrd(path: Path) -> np.ndarray:
    import nrrd

    array, _ = nrrd.read(str(path), index_order="C")
    return array


# ---------------------------------------------------------------------------------------------------------------
# Combination codes and atoms


def combination_codes(masks: np.ndarray) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """(H, W) uint16 index into the returned list of class combinations (1-based class indices, sorted); the
    empty combination () is index 0 when present. ``masks``: (C, H, W) bool/uint8."""
    n_classes, rows, cols = masks.shape
    if n_classes == 0:
        return np.zeros((rows, cols), np.uint16), [()]
    flat = masks.reshape(n_classes, -1).astype(bool)
    if n_classes <= 64:
        bits = np.zeros(flat.shape[1], np.uint64)
        for c in np.flatnonzero(flat.any(axis=1)):
            bits |= flat[c].astype(np.uint64) << np.uint64(c)
        keys, inverse = np.unique(bits, return_inverse=True)
        combos = [tuple(int(c) + 1 for c in range(n_classes) if (int(k) >> c) & 1) for k in keys]
    else:
        packed = np.packbits(flat, axis=0).T  # (pixels, bytes)
        keys, inverse = np.unique(packed, axis=0, return_inverse=True)
        unpacked = np.unpackbits(keys, axis=1)[:, :n_classes]
        combos = [tuple(int(c) + 1 for c in np.flatnonzero(row)) for row in unpacked]
    if len(combos) > 65535:
        raise InputError("more than 65535 class combinations in one image")
    return inverse.reshape(rows, cols).astype(np.uint16), combos


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
                 num_test: int, extra: dict | None = None) -> dict[str, Any]:
    """nnU-Net v2 dataset.json for region-based training: each class is the region of the atoms containing it."""
    labels: dict[str, Any] = {"background": 0}
    for index, class_name in enumerate(class_names, start=1):
        labels[class_name] = sorted(atom for combo, atom in table.items() if index in combo)
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
