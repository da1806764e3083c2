"""The ready-made wrist phantom of ``xrayseg fetch-sample wrist-phantom``: built once into the cache, then reused.

Its inputs are fetched and SHA-256-checked like every sample (the pose2sim wheel's meshes, see
:mod:`.hand_meshes`); the phantom itself is built from them with a fixed seed, deterministically, and its
``phantom.json`` (written last) records the seed and the generator version, so an outdated or half-built
folder is rebuilt.
"""

from __future__ import annotations

import json
from pathlib import Path

from .hand_meshes import default_cache_dir
from .wrist import PHANTOM_VERSION, random_params, write_wrist_phantom

SAMPLE_SEED = 2026
SAMPLE_FOLDER = "wrist-phantom"
SAMPLE_KEYS = {"ct": "ct.nii.gz", "labels": "labels.nii.gz", "names": "names.csv", "json": "phantom.json"}


def wrist_phantom_paths(cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Where the sample phantom's files are (or will be), by key: ct, labels, names, json."""
    folder = Path(cache_dir or default_cache_dir()) / SAMPLE_FOLDER
    return {key: folder / name for key, name in SAMPLE_KEYS.items()}


def _is_current(paths: dict[str, Path]) -> bool:
    if not all(p.is_file() for p in paths.values()):
        return False
    try:
        record = json.loads(paths["json"].read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return record.get("version") == PHANTOM_VERSION and record.get("params", {}).get("seed") == SAMPLE_SEED


def wrist_phantom_is_cached(cache_dir: str | Path | None = None) -> bool:
    """Whether the sample phantom is built (complete and of this generator version and seed)."""
    return _is_current(wrist_phantom_paths(cache_dir))


def fetch_wrist_phantom(cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Paths of the sample wrist phantom (seed 2026, 0.5 mm), built on first use (about 10-30 s)."""
    paths = wrist_phantom_paths(cache_dir)
    if not _is_current(paths):
        write_wrist_phantom(paths["ct"].parent, random_params(SAMPLE_SEED))
    return paths
