"""Datasets in our nnU-Net v2 raw layout (what the exporter writes), read without the exporter's code.

Layout of ``<root>/Dataset<ID>_<Name>/``::

    imagesTr/<case>_0000.nrrd   2D float32 radiograph in [0, 1], MONOCHROME2, spacing = pixel spacing (mm)
    labelsTr/<case>.nrrd        2D region-encoded labels (atoms): class c = union of its atoms (dataset.json)
    masksTr/<case>.nrrd         uint8 (C, H, W) overlapping binary masks in class order (preferred when present)
    imagesTs/ labelsTs/ masksTs/    the test split, same layout
    dataset.json                nnU-Net v2: labels {"background": 0, "<class>": [atoms...]}, regions_class_order...
    atoms.json                  {atom: [class indices]} (used when dataset.json has no region lists)
    classes.json                [{index, name, color, label_values}]
    sidecars/<case>.json        geometry (with the preset name in geometry.view), "ct_id", physics
    manifest.csv                case, ct_id, split, view, status, ...; ``view`` is the view preset name
                                (older exports wrote the view's index there; then the sidecar names the preset)

The validation split is by CT (``ct_id``), so no CT contributes views to both training and validation.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .ignore import IGNORE_VALUE

BAD_STATUS = {"failed", "error", "skipped", "excluded"}


@dataclass(frozen=True)
class ClassInfo:
    index: int  # 1-based, class order
    name: str
    color: tuple[float, float, float]
    atoms: tuple[int, ...] = ()


@dataclass
class Case:
    case_id: str
    split: str  # "train" (imagesTr) or "test" (imagesTs)
    image: Path
    label: Path | None
    mask: Path | None
    ct_id: str
    view: str = "unknown"  # the view preset name ("chest-pa"), "unknown" when the dataset does not say
    sidecar: Path | None = None
    view_index: int | None = None  # the view's number within its CT, when the dataset gives it


@dataclass
class SegmentationDataset:
    root: Path
    name: str
    classes: list[ClassInfo]
    cases: list[Case]
    dataset_json: dict = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def ignore_label(self) -> int | None:
        """nnU-Net v2's ``"ignore"`` value in dataset.json labels (unknown pixels), or None."""
        value = (self.dataset_json.get("labels") or {}).get("ignore")
        return None if value is None else int(value)

    def split(self, which: str = "train") -> list[Case]:
        return [c for c in self.cases if c.split == which]

    def split_by_ct(self, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[Case], list[Case]]:
        """(train, validation) of the training cases, split by CT: every view of a CT lands on one side.
        With a single CT there is nothing to hold out: validation is empty (a warning is the caller's)."""
        cases = self.split("train")
        cts = sorted({c.ct_id for c in cases})
        if len(cts) < 2 or val_fraction <= 0:
            return cases, []
        rng = np.random.default_rng(seed)
        order = [cts[i] for i in rng.permutation(len(cts))]
        n_val = min(len(cts) - 1, max(1, int(round(val_fraction * len(cts)))))
        held = set(order[:n_val])
        return [c for c in cases if c.ct_id not in held], [c for c in cases if c.ct_id in held]

    def load(self, case: Case) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """(image float32 (H, W) as stored, masks uint8 (C, H, W), spacing (row_mm, col_mm)). Masks are 0/1, and
        ``IGNORE_VALUE`` (255) in every plane where the pixel is unknown (see ``ignore.split_ignore``)."""
        from .reader import read_radiograph

        image = read_radiograph(case.image)
        if case.mask is not None and case.mask.exists():
            masks = read_mask_stack(case.mask, len(self.classes))
        elif case.label is not None and case.label.exists():
            masks = decode_regions(read_label_image(case.label), self.classes, self.ignore_label)
        else:
            given = [str(p) for p in (case.mask, case.label) if p is not None]
            raise DatasetError(f"case {case.case_id} has no masks or label image"
                               + (f" ({' nor '.join(given)} exists)" if given else "")
                               + "; export the dataset again, or remove the case's image")
        if masks.shape[1:] != image.shape:
            raise DatasetError(f"case {case.case_id}: masks {masks.shape[1:]} and image {image.shape} differ in size")
        return image.pixels, masks, image.spacing_mm or (1.0, 1.0)


def find_dataset_folder(root: str | Path) -> Path:
    """``root`` itself if it holds dataset.json, else its single ``Dataset*`` subfolder."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset folder not found: {root}")
    if (root / "dataset.json").is_file():
        return root
    found = sorted(p for p in root.glob("Dataset*") if (p / "dataset.json").is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(f"{root} holds no dataset.json and no Dataset<ID>_<Name>/ folder with one; give the "
                           "nnU-Net raw dataset folder written by the exporter")
    raise DatasetError(f"{root} holds several datasets ({', '.join(p.name for p in found)}); give one of them")


def _color(value, index: int) -> tuple[float, float, float]:
    from XraySegSimLib.labels import palette_color

    if value is None:
        return palette_color(index)
    rgb = [float(v) for v in value][:3]
    if max(rgb) > 1.0:
        rgb = [v / 255.0 for v in rgb]
    return tuple(rgb)  # type: ignore[return-value]


def read_classes(folder: Path, dataset_json: dict) -> list[ClassInfo]:
    """Classes in dataset.json order (non-background keys of ``labels``), with names and colours from
    classes.json and the atoms of each class from dataset.json (region lists) or atoms.json."""
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DatasetError(f"{folder / 'dataset.json'} has no 'labels' mapping")
    names = [name for name in labels if name not in ("background", "ignore")]  # "ignore": unknown pixels
    extra = {}
    classes_path = folder / "classes.json"
    if classes_path.is_file():
        entries = json.loads(classes_path.read_text())
        if isinstance(entries, dict):
            entries = entries.get("classes", [])
        extra = {e["name"]: e for e in entries}
    atoms_by_class: dict[str, list[int]] = {}
    atoms_path = folder / "atoms.json"
    if atoms_path.is_file():
        raw = json.loads(atoms_path.read_text())
        raw = raw.get("atoms", raw) if isinstance(raw, dict) else raw
        index_to_name = {int(e.get("index", i + 1)): e["name"] for i, e in enumerate(extra.values())} if extra \
            else {i + 1: n for i, n in enumerate(names)}
        for atom, members in (raw.items() if isinstance(raw, dict) else []):
            for member in members:
                name = member if isinstance(member, str) else index_to_name.get(int(member))
                if name is not None:
                    atoms_by_class.setdefault(name, []).append(int(atom))
    classes = []
    for i, name in enumerate(names):
        value = labels[name]
        atoms = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
        if name in atoms_by_class and not isinstance(value, (list, tuple)):
            atoms = sorted(set(atoms) | set(atoms_by_class[name]))
        info = extra.get(name, {})
        color = info.get("color", info.get("color_rgb"))  # the exporter writes color_rgb
        classes.append(ClassInfo(i + 1, name, _color(color, i), tuple(sorted(set(atoms)))))
    return classes


def _manifest(folder: Path) -> dict[str, dict]:
    path = folder / "manifest.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {row["case"]: row for row in csv.DictReader(handle) if row.get("case")}


SPLIT_FOLDERS = {"train": ("imagesTr", "labelsTr", "masksTr"), "test": ("imagesTs", "labelsTs", "masksTs")}


def _as_index(value) -> int | None:
    """``value`` as a view index when it is a whole number (``3``, ``"3"``, ``"3.0"``), else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _view_name(row: dict, meta: dict) -> tuple[str, int | None]:
    """(view preset name, view index) of a case. The manifest's ``view`` column holds the preset name; older
    exports wrote the view's index there (and the index may also come in a ``view_index`` column). A numeric
    ``view`` is an index, never a name: the name then comes from the sidecar (``geometry.view``, else its
    ``view``/``view_preset``), else it is "unknown"."""
    index = None
    for value in (row.get("view_index"), meta.get("view_index"), row.get("view")):
        index = _as_index(value)
        if index is not None:
            break
    geometry = meta.get("geometry") if isinstance(meta.get("geometry"), dict) else {}
    for value in (row.get("view"), geometry.get("view"), meta.get("view"), meta.get("view_preset")):
        text = "" if value is None else str(value).strip()
        if text and _as_index(text) is None:
            return text, index
    return "unknown", index


def read_dataset(root: str | Path, require: str | None = None) -> SegmentationDataset:
    """Index a dataset folder (see module docstring); images are read lazily by :meth:`SegmentationDataset.load`.

    A dataset may hold only training images (imagesTr) or only test images (imagesTs). ``require`` ("train" or
    "test") names the split the caller needs: it is an error when that split has no images. A dataset with no
    images at all is always an error."""
    if require is not None and require not in SPLIT_FOLDERS:
        raise ValueError(f"require must be one of {sorted(SPLIT_FOLDERS)}, not {require!r}")
    folder = find_dataset_folder(root)
    try:
        dataset_json = json.loads((folder / "dataset.json").read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{folder / 'dataset.json'} is not valid JSON: {error}") from error
    classes = read_classes(folder, dataset_json)
    ending = dataset_json.get("file_ending", ".nrrd")
    manifest = _manifest(folder)
    cases: list[Case] = []
    for split, (images, labels, masks) in SPLIT_FOLDERS.items():
        for image in sorted((folder / images).glob(f"*_0000{ending}")):
            case_id = image.name[: -len(f"_0000{ending}")]
            row = manifest.get(case_id, {})
            if str(row.get("status", "")).strip().lower() in BAD_STATUS:
                continue
            sidecar = folder / "sidecars" / f"{case_id}.json"
            meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
            ct_id = str(row.get("ct_id") or meta.get("ct_id") or case_id.rsplit("_", 1)[0])
            view, view_index = _view_name(row, meta)
            label = folder / labels / f"{case_id}{ending}"
            mask = folder / masks / f"{case_id}{ending}"
            cases.append(Case(case_id, split, image, label if label.exists() else None,
                              mask if mask.exists() else None, ct_id, view, sidecar if sidecar.is_file() else None,
                              view_index))
    counts = {split: sum(c.split == split for c in cases) for split in SPLIT_FOLDERS}
    where = " or ".join(f"{SPLIT_FOLDERS[s][0]}/<case>_0000{ending}" for s in SPLIT_FOLDERS)
    if not cases:
        raise DatasetError(f"{folder} has no images ({where})")
    if require is not None and not counts[require]:
        other = next(s for s in SPLIT_FOLDERS if s != require)
        raise DatasetError(f"{folder} has no {require} images ({SPLIT_FOLDERS[require][0]}/<case>_0000{ending}); "
                           f"it has {counts[other]} {other} images ({SPLIT_FOLDERS[other][0]})")
    return SegmentationDataset(folder, folder.name, classes, cases, dataset_json)


def _read_nrrd(path: Path) -> tuple[np.ndarray, dict]:
    import nrrd

    try:
        return nrrd.read(str(path), index_order="C")
    except Exception as error:  # noqa: BLE001 - pynrrd raises several types
        raise DatasetError(f"cannot read {path}: {error}") from error


def read_label_image(path: Path) -> np.ndarray:
    data, _ = _read_nrrd(path)
    data = np.squeeze(data)
    if data.ndim != 2:
        raise DatasetError(f"{path}: label image of shape {data.shape} is not 2D")
    return data.astype(np.int64)


def read_mask_stack(path: Path, n_classes: int) -> np.ndarray:
    """(C, H, W) uint8 from a mask NRRD; accepts (C, H, W), (H, W, C), (1, H, W, C) (Slicer .seg layout)."""
    data, header = _read_nrrd(path)
    kinds = list(reversed(header.get("kinds", [])))  # C order
    if kinds and "list" in kinds and data.ndim == len(kinds):
        data = np.moveaxis(data, kinds.index("list"), 0)
    data = data.reshape([s for i, s in enumerate(data.shape) if not (s == 1 and i > 0)] or data.shape)
    if data.ndim == 2 and n_classes == 1:
        data = data[None]
    if data.ndim != 3:
        raise DatasetError(f"{path}: mask stack of shape {data.shape} is not (classes, rows, cols)")
    if data.shape[0] != n_classes and data.shape[-1] == n_classes:
        data = np.moveaxis(data, -1, 0)
    if data.shape[0] != n_classes:
        raise DatasetError(f"{path}: {data.shape[0]} mask layers but dataset.json names {n_classes} classes")
    return np.where(data == IGNORE_VALUE, IGNORE_VALUE, data > 0).astype(np.uint8)


def decode_regions(label: np.ndarray, classes: list[ClassInfo], ignore_label: int | None = None) -> np.ndarray:
    """Overlapping masks (C, H, W) from a region-encoded label image: class c = pixels whose atom is one of its;
    pixels at ``ignore_label`` get ``IGNORE_VALUE`` in every plane."""
    masks = np.stack([np.isin(label, c.atoms) for c in classes]).astype(np.uint8)
    if ignore_label is not None:
        masks[:, label == ignore_label] = IGNORE_VALUE
    return masks


def masks_to_label(masks: np.ndarray) -> np.ndarray:
    """Single-label image from overlapping masks: later classes are painted over earlier ones (nnU-Net's
    regions_class_order convention). 0 = background."""
    label = np.zeros(masks.shape[1:], np.int64)
    for index in range(masks.shape[0]):
        label[masks[index] > 0] = index + 1
    return label
