"""Samples built from other samples: ``chest-full-ct-labelled`` (the bone labels of ``chest-ct`` transferred
onto ``chest-full-ct``). Built once on first use, then cached with the report of how it was made; a change of
the transfer settings or of the inputs rebuilds it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .errors import InputError
from .sample_data import fetch_sample, get_sample, sha256_file

ATLAS, TARGET = "chest-ct", "chest-full-ct"
T12_VALUE = 32  # vertebrae_T12 in the TotalSegmentator tables of both CTs


def _recipe(cache: Path) -> dict:
    from .label_transfer import TransferSettings
    from .sample_data import SAMPLES

    atlas, target = SAMPLES[ATLAS], SAMPLES[TARGET]
    return {"atlas": ATLAS, "target": TARGET,
            "inputs_sha256": {f"{s.name}/{f.name}": f.sha256 for s in (atlas, target) for f in s.files
                              if f.key in ("ct", "labels")},
            "settings": asdict(TransferSettings()),
            # the heart, vessels and enhancing organs come along for export --suppress-contrast
            "carry": "enhancing"}


def _paths(name: str, cache: Path) -> dict[str, Path]:
    folder = cache / get_sample(name).folder
    return {"labels": folder / "labels.nii.gz", "names": folder / "names.csv",
            "transfer_report": folder / "transfer.json"}


def built_sample_paths(name: str, cache: Path) -> dict[str, Path]:
    """Where the files of a built sample are (or will be), by key; builds nothing."""
    from .sample_data import sample_paths

    target = sample_paths(TARGET, cache)
    return {"ct": target["ct"], **_paths(name, cache), "t12_reference": target["t12_reference"]}


def labelled_sample_is_cached(name: str, cache: Path) -> bool:
    """Whether the built sample is in the cache, made by the current recipe, with its recorded SHA-256s."""
    paths = _paths(name, cache)
    if not all(p.is_file() for p in paths.values()):
        return False
    try:
        report = json.loads(paths["transfer_report"].read_text())
    except (OSError, ValueError):
        return False
    recorded = report.get("files_sha256", {})
    return (report.get("recipe") == _recipe(cache)
            and all(recorded.get(key) == sha256_file(paths[key]) for key in ("labels", "names")))


def build_labelled_sample(name: str, cache: Path, progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Paths of ``chest-full-ct-labelled`` by key (``ct``, ``labels``, ``names``, ``transfer_report``,
    ``t12_reference``); runs the label transfer (a few minutes on two cores) when it is not cached yet."""
    if name != "chest-full-ct-labelled":
        raise InputError(f"{name} is not a built sample; choose chest-full-ct-labelled")
    atlas, target = fetch_sample(ATLAS, cache, progress), fetch_sample(TARGET, cache, progress)
    paths = _paths(name, cache)
    result = built_sample_paths(name, cache)
    if labelled_sample_is_cached(name, cache):
        return result
    from .label_transfer import transfer_labels, write_transfer_outputs

    if progress:
        progress(f"transferring the bone labels of {ATLAS} onto {TARGET} (first use: a few minutes)")
    from .contrast import enhancing_values
    from .export_inputs import names_table

    carried = enhancing_values(names_table(atlas["names"]))
    transferred = transfer_labels(atlas["ct"], atlas["labels"], target["ct"], reference=target["t12_reference"],
                                  reference_value=T12_VALUE, carry_values=carried,
                                  progress=(lambda f, m: progress(f"  {100 * f:3.0f}% {m}")) if progress else None)
    folder = paths["labels"].parent
    folder.mkdir(parents=True, exist_ok=True)
    staged_names = folder / ".names.csv.part"
    shutil.copyfile(atlas["names"], staged_names)
    staged_names.replace(paths["names"])
    transferred.report["recipe"] = _recipe(cache)
    write_transfer_outputs(transferred, folder, names_path=paths["names"])
    return result
