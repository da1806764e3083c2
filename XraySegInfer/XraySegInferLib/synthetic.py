"""A small synthetic dataset in our nnU-Net layout, rendered by XraySegSimLib from phantom CTs.

Each phantom CT is a soft-tissue ellipsoid holding three 'bones' (a vertical rod, a crossing bar and a ball,
with random sizes and positions) that overlap in projection. Views are PA-like with random LAO/cranial angles.
Used by the tests and the benchmark; it needs no exporter and no data download.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

CLASS_NAMES = ("spine", "clavicle_left", "sternum")
COLORS = ((0.9, 0.8, 0.3), (0.3, 0.7, 0.9), (0.9, 0.4, 0.5))


def phantom_ct(rng: np.random.Generator, n: int = 48, spacing: float = 5.0):
    """(ct Volume in HU, labels Volume) of one random phantom; label values 1..3 = CLASS_NAMES."""
    from XraySegSimLib import Volume

    k, j, i = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * spacing] * 3, indexing="ij")
    x, y, z = i, j, k  # RAS = grid axes (identity direction)
    ct = np.full((n, n, n), -1000.0, np.float32)
    body = (x / 90) ** 2 + (y / 70) ** 2 + (z / 110) ** 2 <= 1
    ct[body] = 40.0
    labels = np.zeros((n, n, n), np.uint8)
    s = rng.uniform(0.8, 1.2, 3)
    c = rng.uniform(-12, 12, (3, 3))
    rod = ((x - c[0, 0]) / (14 * s[0])) ** 2 + ((y - 20 - c[0, 1]) / (14 * s[0])) ** 2 <= 1
    rod &= np.abs(z - c[0, 2]) < 80 * s[0]
    bar = ((y + 10 - c[1, 1]) / (10 * s[1])) ** 2 + ((z - 40 - c[1, 2]) / (10 * s[1])) ** 2 <= 1
    bar &= np.abs(x + 15 - c[1, 0]) < 55 * s[1]
    ball = ((x - 30 - c[2, 0]) ** 2 + (y + 25 - c[2, 1]) ** 2 + (z + 20 - c[2, 2]) ** 2) <= (26 * s[2]) ** 2
    for value, mask in ((1, rod), (2, bar), (3, ball)):
        ct[mask] = 700.0
        labels[mask] = value
    m = np.diag([spacing, spacing, spacing, 1.0])
    m[:3, 3] = -(n - 1) / 2 * spacing
    return Volume(ct, m.copy(), "phantom"), Volume(labels, m.copy(), "phantom labels")


def render_views(ct, labels, angles: list[tuple[float, float]], size: int = 64, detector_mm: float = 280.0):
    """[(image in [0, 1] MONOCHROME2, masks (3, H, W) uint8, spacing (row_mm, col_mm), geometry)] per angle."""
    from XraySegSimLib import DrrProjector, LabelClass, LabelClasses, views
    from XraySegSimLib.physics import normalize_radiograph

    classes = LabelClasses(tuple(LabelClass(n, (v,), COLORS[v - 1]) for v, n in enumerate(CLASS_NAMES, start=1)))
    projector = DrrProjector(ct, labels, classes, threads=2)
    out = []
    for lao, cranial in angles:
        geometry = views.from_preset("chest-pa", ct.center_ras, size, detector_mm=(detector_mm, detector_mm),
                                     lao_deg=lao, cranial_deg=cranial)
        result = projector.render(geometry)
        image = normalize_radiograph(result.line_integral, "MONOCHROME2")
        masks = result.masks().astype(np.uint8)
        spacing = (geometry.spacing[1], geometry.spacing[0])
        out.append((image, masks, spacing, geometry))
    return out


def write_case(folder: Path, split: str, case: str, image: np.ndarray, masks: np.ndarray,
               spacing: tuple[float, float], sidecar: dict) -> None:
    import nrrd
    import SimpleITK as sitk

    images, labels, mask_dir = (("imagesTr", "labelsTr", "masksTr") if split == "train"
                                else ("imagesTs", "labelsTs", "masksTs"))
    for sub in (images, labels, mask_dir, "sidecars"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    itk = sitk.GetImageFromArray(image.astype(np.float32))
    itk.SetSpacing((float(spacing[1]), float(spacing[0])))
    sitk.WriteImage(itk, str(folder / images / f"{case}_0000.nrrd"), True)
    atoms = np.zeros(masks.shape[1:], np.uint8)
    for index in range(masks.shape[0]):
        atoms |= (masks[index] > 0).astype(np.uint8) << index
    header = {"spacings": [float(spacing[1]), float(spacing[0])], "encoding": "gzip"}
    nrrd.write(str(folder / labels / f"{case}.nrrd"), atoms, header, index_order="C")
    nrrd.write(str(folder / mask_dir / f"{case}.nrrd"), masks.astype(np.uint8),
               {"kinds": ["domain", "domain", "list"], "encoding": "gzip"}, index_order="C")
    (folder / "sidecars" / f"{case}.json").write_text(json.dumps(sidecar))


def make_dataset(root: str | Path, n_cts: int = 4, views_per_ct: int = 4, size: int = 64, test_cts: int = 1,
                 seed: int = 0, name: str = "Dataset901_Phantom") -> Path:
    """Write a phantom dataset (``n_cts`` training CTs + ``test_cts`` test CTs); returns its folder."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    n_classes = len(CLASS_NAMES)
    rows = []
    for ct_index in range(n_cts + test_cts):
        split = "train" if ct_index < n_cts else "test"
        ct_id = f"phantom{ct_index:02d}"
        ct, labels = phantom_ct(rng)
        angles = [(float(rng.uniform(-25, 25)), float(rng.uniform(-10, 10))) for _ in range(views_per_ct)]
        for view_index, (image, masks, spacing, geometry) in enumerate(render_views(ct, labels, angles, size)):
            case = f"{ct_id}_{view_index:03d}"
            write_case(folder, split, case, image, masks, spacing,
                       {"ct_id": ct_id, "view": "chest-pa", "geometry": geometry.to_dict()})
            rows.append({"case": case, "ct_id": ct_id, "split": split, "view": "chest-pa", "status": "ok"})
    atom_values = range(1, 2 ** n_classes)
    dataset_json = {
        "channel_names": {"0": "radiograph"},
        "labels": {"background": 0, **{name: [a for a in atom_values if a >> i & 1]
                                       for i, name in enumerate(CLASS_NAMES)}},
        "regions_class_order": list(range(1, n_classes + 1)),
        "numTraining": sum(r["split"] == "train" for r in rows), "file_ending": ".nrrd",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    (folder / "atoms.json").write_text(json.dumps({str(a): [i + 1 for i in range(n_classes) if a >> i & 1]
                                                   for a in atom_values}))
    (folder / "classes.json").write_text(json.dumps([{"index": i + 1, "name": n, "color": list(COLORS[i]),
                                                      "label_values": [i + 1]} for i, n in enumerate(CLASS_NAMES)]))
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder
