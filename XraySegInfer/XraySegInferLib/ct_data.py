"""3D CT segmentation datasets in nnU-Net v2's raw layout, and CT resampling for the 3D networks.

Layout of ``Dataset<ID>_<Name>/`` (what nnU-Net v2 reads, and what ``femur_data`` writes)::

    imagesTr/<case>_0000.nii.gz   CT in HU
    labelsTr/<case>.nii.gz        0 = background, 1 = the structure (e.g. the proximal femur)
    imagesTs/ labelsTs/           the held-out cases, same layout
    dataset.json                  channel_names {"0": "CT"}, labels {"background": 0, "<name>": 1}, file_ending

Images are handled with SimpleITK (LPS, any orientation); arrays are indexed ``[k, j, i]`` as everywhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetError

# HU window of the network input: air to dense cortical bone; metal saturates at the top.
HU_RANGE = (-1000.0, 2000.0)


@dataclass(frozen=True)
class MetalSuppression:
    """Metal replaced by bone-like HU before the network sees it (``ct-train --suppress-metal``).

    Voxels above ``above_hu`` (metal: natural bone of the sample CT stays below 1,300 HU at 3 mm, and cortical bone
    below ~2,000 HU even in fine QCT), and their one-voxel rim where it is brighter than ``fill_hu`` (partial-volume
    metal), are set to ``fill_hu``. The dark streaks around the metal stay. Applied in training and in segmentation
    alike (the card carries the values), so an implant looks the same whether or not the training femur had one."""

    above_hu: float = 2000.0
    fill_hu: float = 150.0  # about the median HU of a natural femur (the sample CT's right one: 168 HU at 3 mm)

    def apply(self, hu: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        metal = hu > self.above_hu
        if not metal.any():
            return hu
        rim = ndimage.binary_dilation(metal, ndimage.generate_binary_structure(hu.ndim, 1)) & (hu > self.fill_hu)
        out = hu.copy()
        out[metal | rim] = self.fill_hu
        return out

    def apply_to_image(self, image):
        """The SimpleITK CT ``image`` with its metal suppressed, on its own grid: before any resampling, so that a
        thin screw is found at the CT's resolution (linear resampling could blur it below ``above_hu``)."""
        import SimpleITK as sitk

        hu = sitk.GetArrayFromImage(image)
        out = self.apply(hu)
        if out is hu:
            return image
        suppressed = sitk.GetImageFromArray(out)
        suppressed.CopyInformation(image)
        return suppressed

    def to_card(self) -> dict[str, float]:
        return {"above_hu": self.above_hu, "fill_hu": self.fill_hu}

    @classmethod
    def from_card(cls, card: dict[str, Any] | None) -> "MetalSuppression | None":
        return cls(float(card["above_hu"]), float(card["fill_hu"])) if card else None


@dataclass
class CtCase:
    case_id: str
    image: Path
    label: Path | None


@dataclass
class CtDataset:
    root: Path
    structure: str  # the name of label 1
    train: list[CtCase]
    test: list[CtCase]


def _cases(root: Path, images: str, labels: str, ending: str) -> list[CtCase]:
    folder = root / images
    if not folder.is_dir():
        return []
    cases = []
    for image in sorted(folder.glob(f"*_0000{ending}")):
        case_id = image.name[: -len(f"_0000{ending}")]
        label = root / labels / f"{case_id}{ending}"
        cases.append(CtCase(case_id, image, label if label.exists() else None))
    return cases


def read_ct_dataset(path: str | Path) -> CtDataset:
    """Read a 3D dataset folder (``Dataset<ID>_<Name>/`` or its parent, when it holds exactly one)."""
    root = Path(path)
    if not (root / "dataset.json").exists():
        found = sorted(p.parent for p in root.glob("Dataset*/dataset.json"))
        if len(found) != 1:
            raise DatasetError(f"{root} is not an nnU-Net v2 dataset folder (no dataset.json); give the "
                               "Dataset<ID>_<Name> folder")
        root = found[0]
    try:
        meta = json.loads((root / "dataset.json").read_text())
    except (OSError, ValueError) as error:
        raise DatasetError(f"{root / 'dataset.json'} cannot be read ({error}); re-create the dataset") from None
    labels = {name: value for name, value in meta.get("labels", {}).items() if name != "background"}
    if list(labels.values()) != [1]:
        raise DatasetError(f"{root}: 3D training needs exactly one foreground label with value 1, got {labels}")
    ending = meta.get("file_ending", ".nii.gz")
    train = _cases(root, "imagesTr", "labelsTr", ending)
    if not train or any(c.label is None for c in train):
        raise DatasetError(f"{root}: imagesTr is empty or some training images have no labelsTr file")
    return CtDataset(root, next(iter(labels)), train, _cases(root, "imagesTs", "labelsTs", ending))


def read_image(path: str | Path):
    """A SimpleITK image; a clear error for a missing or unreadable file."""
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise DatasetError(f"cannot read {path}: {first}; check that it is a complete NIfTI/NRRD/MHA file") from None


def resample(image, spacing_mm: tuple[float, float, float], is_label: bool, reference=None):
    """Resample ``image`` to ``spacing_mm`` (same origin and direction), or onto the grid of ``reference``."""
    import SimpleITK as sitk

    interpolator = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    default = 0 if is_label else HU_RANGE[0]
    if reference is not None:
        return sitk.Resample(image, reference, sitk.Transform(), interpolator, default, image.GetPixelID())
    old_spacing, old_size = np.array(image.GetSpacing()), np.array(image.GetSize())
    size = np.maximum(1, np.round(old_size * old_spacing / np.array(spacing_mm))).astype(int)
    return sitk.Resample(image, [int(s) for s in size], sitk.Transform(), interpolator, image.GetOrigin(),
                         tuple(float(s) for s in spacing_mm), image.GetDirection(), default, image.GetPixelID())


def normalise_hu(array: np.ndarray) -> np.ndarray:
    """HU -> network input: clipped to HU_RANGE and scaled so that water is 0 and 1000 HU is 1."""
    return (np.clip(array, *HU_RANGE) / 1000.0).astype(np.float32)


def load_case(case: CtCase, spacing_mm: tuple[float, float, float],
              metal: MetalSuppression | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The case's normalised CT (``normalise_hu``; metal suppressed first, when asked) and binary label as
    float32/uint8 arrays ``[k, j, i]`` at ``spacing_mm``."""
    import SimpleITK as sitk

    ct = read_image(case.image)
    if metal is not None:
        ct = metal.apply_to_image(ct)
    array = sitk.GetArrayFromImage(resample(ct, spacing_mm, False)).astype(np.float32)
    if not np.isfinite(array).all():
        raise DatasetError(f"{case.image} holds NaN or infinite voxels; fix or re-export the CT")
    label = None
    if case.label is not None:
        label_image = resample(read_image(case.label), spacing_mm, True)
        label = (sitk.GetArrayFromImage(label_image) == 1).astype(np.uint8)
        if label.shape != array.shape:
            raise DatasetError(f"{case.label} is not on the grid of {case.image}")
    return normalise_hu(array), label


def median_spacing(cases: list[CtCase]) -> tuple[float, float, float]:
    """The median voxel size over the cases' images (x, y, z in mm, SimpleITK order)."""
    import SimpleITK as sitk

    spacings = []
    for case in cases:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(case.image))
        reader.ReadImageInformation()
        spacings.append(reader.GetSpacing())
    return tuple(float(s) for s in np.median(np.array(spacings), axis=0))
