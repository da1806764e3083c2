"""Proximal-femur datasets from CTs with femur labels (e.g. TotalSegmentator's femur_left / femur_right).

Crop rule (documented in the README and on the model card): along the body axis, from ``ABOVE_HEAD_MM`` above the top
of the femoral head down to ``BELOW_HEAD_MM`` below it; across, the femur's extent in that slab plus ``MARGIN_MM`` on
every side (so the acetabulum and the greater trochanter's surroundings are in the crop). The lesser trochanter lies
about 55-75 mm below the top of the adult femoral head, so 110 mm reaches 35-55 mm below it: the paper's "proximal
femur" (head, neck, trochanters, upper shaft). Where the CT ends sooner, the crop ends with it (it says so in
``crops.json``). The label of a crop is the femur inside the crop; everything else (pelvis, the other femur) is 0.

Hold-out by side: the training side is cropped as it is; the other side is mirrored left-right (``sitk.Flip`` about the
grid centre, so it keeps its physical placement) to look like the training side, and goes to imagesTs/labelsTs.
Hip phantoms (``xrayseg phantom hip``) add both their femurs to imagesTr, mirrored the same way.

``train_region="half-body"``: the CT's training case is not the crop but the training side's half of the whole CT
(cut at the sagittal midline between the two femur centroids, so the held-out femur is never in training, not even
as background), labelled with that femur in the crop rule's slab; the network then also sees the other bones and soft
tissue of that half of the body. The test case stays the mirrored crop of the other side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import DatasetError

ABOVE_HEAD_MM = 10.0
BELOW_HEAD_MM = 110.0
MARGIN_MM = 20.0
FEMUR_NAMES = {"left": "femur_left", "right": "femur_right"}


def _physical(image, indices_kji: np.ndarray) -> np.ndarray:
    """LPS mm of voxel indices given as [k, j, i] rows."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    ijk = indices_kji[:, ::-1].astype(float)
    return (ijk * np.array(image.GetSpacing())) @ direction.T + np.array(image.GetOrigin())


def crop_box(image, femur: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int], dict]:
    """(lower index, size) in SimpleITK's (i, j, k) order of the proximal-femur crop, and what bounded it."""
    points = _physical(image, np.argwhere(femur))
    top = points[:, 2].max()  # LPS: +z is superior
    slab = points[(points[:, 2] >= top - BELOW_HEAD_MM)]
    lo = np.r_[slab[:, :2].min(0) - MARGIN_MM, top - BELOW_HEAD_MM]
    hi = np.r_[slab[:, :2].max(0) + MARGIN_MM, top + ABOVE_HEAD_MM]
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    index = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(map(float, c))) for c in corners])
    size = np.array(image.GetSize())
    first = np.clip(np.floor(index.min(0)).astype(int), 0, size - 1)
    last = np.clip(np.ceil(index.max(0)).astype(int), 0, size - 1)
    k_axis_mm = float(np.array(image.GetSpacing())[2])
    bounded = {"head_top_lps_z_mm": round(float(top), 2),
               "reaches_mm_below_head": round(float(top - max(lo[2], _lowest_z(image))), 1),
               "k_spacing_mm": k_axis_mm}
    return tuple(int(v) for v in first), tuple(int(v) for v in last - first + 1), bounded


def _lowest_z(image) -> float:
    size = np.array(image.GetSize()) - 1
    corners = [image.TransformIndexToPhysicalPoint((int(a), int(b), int(c)))
               for a in (0, size[0]) for b in (0, size[1]) for c in (0, size[2])]
    return float(min(c[2] for c in corners))


def _femur_crops(ct_path: str | Path, labels_path: str | Path, names: dict[int, str]):
    """Yield (side, CT crop, femur-label crop, first index, size, bounds) for the left and right femur of a CT."""
    import SimpleITK as sitk

    from .ct_data import read_image

    value_of = {n: v for v, n in names.items()}
    missing = [n for n in FEMUR_NAMES.values() if n not in value_of]
    if missing:
        raise DatasetError(f"the names table of {labels_path} has no {', '.join(missing)}; give a TotalSegmentator "
                           "names table")
    ct, labels = read_image(ct_path), read_image(labels_path)
    label_array = sitk.GetArrayFromImage(labels)
    if label_array.shape != sitk.GetArrayFromImage(ct).shape:
        raise DatasetError(f"{labels_path} is not on the grid of {ct_path}")
    for side, femur_name in FEMUR_NAMES.items():
        femur = label_array == value_of[femur_name]
        if not femur.any():
            raise DatasetError(f"{labels_path} has no {femur_name} voxels")
        femur_image = sitk.GetImageFromArray(femur.astype(np.uint8))
        femur_image.CopyInformation(labels)
        first, size, bounded = crop_box(ct, femur)
        yield (side, sitk.RegionOfInterest(ct, size, first), sitk.RegionOfInterest(femur_image, size, first),
               first, size, bounded)


def _half_body(ct_path: str | Path, labels_path: str | Path, names: dict[int, str], side: str):
    """(CT, femur label, first index, size, bounds) of ``side``'s half of the whole CT, cut at the femur midline."""
    import SimpleITK as sitk

    from .ct_data import read_image
    from .ct_sides import side_of_voxels, x_of_voxels

    ct, labels = read_image(ct_path), read_image(labels_path)
    label_array = sitk.GetArrayFromImage(labels)
    value_of = {n: v for v, n in names.items()}
    x = x_of_voxels(ct)
    femurs = {s: label_array == value_of[n] for s, n in FEMUR_NAMES.items()}
    midline = float(np.mean([x[f].mean() for f in femurs.values()]))
    half = side_of_voxels(x, midline)[side]
    columns = np.flatnonzero(half[0, 0])  # i indices of that half
    if not (half == half[:1, :1, :]).all() or len(columns) == 0 or np.ptp(columns) + 1 != len(columns):
        raise DatasetError(f"{ct_path}: the left-right axis is not the grid's i axis; resample the CT to an axial grid")
    femur = femurs[side]
    top = _physical(ct, np.argwhere(femur))[:, 2].max()
    z = _physical(ct, np.argwhere(np.ones(label_array.shape[:1] + (1, 1), bool)))[:, 2]
    in_slab = ((z >= top - BELOW_HEAD_MM) & (z <= top + ABOVE_HEAD_MM))[:, None, None]
    femur_image = sitk.GetImageFromArray((femur & in_slab).astype(np.uint8))
    femur_image.CopyInformation(labels)
    first = (int(columns[0]), 0, 0)
    size = (len(columns), *ct.GetSize()[1:])
    bounded = {"head_top_lps_z_mm": round(float(top), 2), "midline_x_mm": round(midline, 2),
               "region": f"the {side} half of the whole CT"}
    return (sitk.RegionOfInterest(ct, size, first), sitk.RegionOfInterest(femur_image, size, first), first, size,
            bounded)


def write_femur_dataset(ct_path: str | Path, labels_path: str | Path, names: dict[int, str], out_dir: str | Path,
                        train_side: str = "left", dataset_id: int = 701, name: str = "ProximalFemur",
                        case_prefix: str = "body0", phantoms: Sequence[str | Path] = (),
                        ct_test_only: bool = False, train_region: str = "crop") -> Path:
    """Write ``Dataset<ID>_<Name>/`` with the training side in imagesTr and the mirrored other side in imagesTs.

    ``phantoms``: folders of ``xrayseg phantom hip`` (ct.nii.gz, labels.nii.gz, names.csv); both their femurs go
    to imagesTr, the one not on ``train_side`` mirrored. ``ct_test_only``: both femurs of the CT go to imagesTs
    (the training side as it is, the other mirrored), so a model trained on phantoms alone is tested on both.
    ``train_region``: "crop" (the crop rule) or "half-body" (the training side's half of the whole CT; see above).
    """
    import SimpleITK as sitk

    from XraySegSimLib.export_inputs import names_table
    from XraySegSimLib.io import write_json

    if train_side not in FEMUR_NAMES:
        raise DatasetError(f"train side must be left or right, got '{train_side}'")
    if train_region not in ("crop", "half-body"):
        raise DatasetError(f"train region must be crop or half-body, got '{train_region}'")
    sources = [(case_prefix, Path(ct_path), Path(labels_path), names, False)]
    for folder in map(Path, phantoms):
        files = [folder / n for n in ("ct.nii.gz", "labels.nii.gz", "names.csv")]
        if not all(f.is_file() for f in files):
            raise DatasetError(f"{folder} is not a hip phantom folder (ct.nii.gz, labels.nii.gz, names.csv); write "
                               "one with 'xrayseg phantom hip --out DIR'")
        sources.append((f"phantom_{folder.name}", files[0], files[1], names_table(files[2]), True))
    root = Path(out_dir) / f"Dataset{dataset_id:03d}_{name}"
    crops = {}
    for prefix, ct_file, labels_file, table, is_phantom in sources:
        for side, ct_crop, label_crop, first, size, bounded in _femur_crops(ct_file, labels_file, table):
            mirrored = side != train_side
            if mirrored:  # mirror left-right so that it looks like the training side
                ct_crop = sitk.Flip(ct_crop, [True, False, False])
                label_crop = sitk.Flip(label_crop, [True, False, False])
            held_out = not is_phantom and (mirrored or ct_test_only)
            if train_region == "half-body" and not is_phantom and not held_out:
                ct_crop, label_crop, first, size, bounded = _half_body(ct_file, labels_file, table, side)
            case_id = f"{prefix}_{side}" + ("_mirrored" if mirrored else "")
            images, label_folder = ("imagesTs", "labelsTs") if held_out else ("imagesTr", "labelsTr")
            (root / images).mkdir(parents=True, exist_ok=True)
            (root / label_folder).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(sitk.Cast(ct_crop, sitk.sitkInt16), str(root / images / f"{case_id}_0000.nii.gz"), True)
            sitk.WriteImage(label_crop, str(root / label_folder / f"{case_id}.nii.gz"), True)
            crops[case_id] = {"side": side, "split": "test" if held_out else "train", "source": str(ct_file),
                              "first_index_ijk": first, "size_ijk": size, **bounded}
    write_json(root / "dataset.json", {
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "proximal_femur": 1},
        "numTraining": sum(c["split"] == "train" for c in crops.values()), "file_ending": ".nii.gz", "name": name,
        "description": f"Proximal femur crops ({ABOVE_HEAD_MM:g} mm above the femoral head to {BELOW_HEAD_MM:g} mm "
                       f"below it); train side {train_side}, other sides mirrored to it; the CT's "
                       + ("femurs are both test cases" if ct_test_only else "other side is the test case")
                       + ("; the CT's training case is its whole half-body" if train_region == "half-body" else "")
                       + (f"; {len(phantoms)} hip phantoms (both femurs) in training" if phantoms else ""),
    })
    write_json(root / "crops.json", {"ct": str(ct_path), "labels": str(labels_path), "crops": crops,
                                      "phantoms": [str(p) for p in phantoms],
                                      "rule": {"above_head_mm": ABOVE_HEAD_MM, "below_head_mm": BELOW_HEAD_MM,
                                               "margin_mm": MARGIN_MM, "train_region": train_region}})
    return root
