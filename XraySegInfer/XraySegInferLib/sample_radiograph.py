"""Real radiographs for tests and demos: the ``real-cr`` sample of ``XraySegSimLib.sample_data``.

The ``pydicom-data==1.0.0`` wheel (MIT) ships real CR images: ``RG1_UNCR.dcm`` (PA chest, 1841x1955,
MONOCHROME1, no usable pixel spacing) and ``RG3_UNCR.dcm`` (ankle AP). The sample registry fetches the wheel
with pip into ``<cache>/real-cr/`` and checks the SHA-256 of the archive and of each file; this module only
names the files.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InputError

SAMPLE = "real-cr"


def fetch_sample_radiograph(name: str = "RG1_UNCR.dcm", cache_dir: str | Path | None = None) -> Path:
    """Path of a real sample radiograph by file name (default: the PA chest CR ``RG1_UNCR.dcm``), downloaded
    and verified on first use (cache: ``$XRAYSEG_CACHE`` or ``./.cache/xrayseg``)."""
    from XraySegSimLib.sample_data import fetch_sample, get_sample

    keys = {item.name: item.key for item in get_sample(SAMPLE).files}
    if name not in keys:
        raise InputError(f"unknown sample radiograph {name!r}; choose one of: {', '.join(keys)}")
    return fetch_sample(SAMPLE, cache_dir)[keys[name]]
