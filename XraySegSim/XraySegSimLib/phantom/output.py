"""Writing a phantom: ``ct.nii.gz``, ``labels.nii.gz``, ``names.csv`` and ``phantom.json``, staged then moved in."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..volume import Volume


def write_phantom_files(out: str | Path, ct: Volume, labels: Volume, names: dict[int, str],
                        record: dict) -> dict[str, Path]:
    """Write the four files into ``out``; everything is written in a temporary folder next to them first, and
    ``phantom.json`` is moved in last, so its presence means the phantom is complete."""
    from .wrist import names_csv_text, write_volume

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
