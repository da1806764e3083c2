"""Writing a phantom: ``ct.nii.gz``, ``labels.nii.gz``, ``names.csv`` and ``phantom.json``, staged then moved in."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ..volume import Volume


def write_volume(volume: Volume, path: Path) -> None:
    """NIfTI/NRRD via SimpleITK (which stores LPS); callers write into a staging folder (see below)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume.array)
    lps = np.diag([-1.0, -1.0, 1.0])
    spacing = volume.spacing
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps @ volume.ijk_to_ras[:3, :3] / spacing).flatten().tolist())
    image.SetOrigin((lps @ volume.ijk_to_ras[:3, 3]).tolist())
    sitk.WriteImage(image, str(path), True)


def names_csv_text(names: dict[int, str]) -> str:
    """The ``value,name`` table with its header row."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["value", "name"])
    writer.writerows(sorted(names.items()))
    return text.getvalue()


def write_phantom_files(out: str | Path, ct: Volume, labels: Volume, names: dict[int, str],
                        record: dict) -> dict[str, Path]:
    """Write the four files into ``out``; everything is written in a temporary folder next to them first, and
    ``phantom.json`` is moved in last, so its presence means the phantom is complete."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"ct": out / "ct.nii.gz", "labels": out / "labels.nii.gz", "names": out / "names.csv",
             "json": out / "phantom.json"}
    with tempfile.TemporaryDirectory(prefix=".phantom-", dir=out) as tmp:
        staged = {key: Path(tmp) / path.name for key, path in files.items()}
        write_volume(ct, staged["ct"])
        write_volume(labels, staged["labels"])
        staged["names"].write_text(names_csv_text(names))
        staged["json"].write_text(json.dumps(record, indent=2) + "\n")
        for key in ("ct", "labels", "names", "json"):
            os.replace(staged[key], files[key])
    return files
