"""What an export was made from: each case's CT, labels and names table by absolute path and SHA-256.

``export.json`` records them (``inputs``); ``--resume`` recomputes them and refuses any difference before it
touches the dataset. Without this, a resume with another ``--ct`` and the same options was accepted and its
final step deleted every earlier sample as an orphan.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

from .errors import InputError

BLOCK = 1 << 20


def _hash_file(path: Path, digest) -> int:
    size = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
            size += len(block)
    return size


def fingerprint(path: str | Path | None) -> dict[str, Any] | None:
    """{"path": absolute path, "sha256": ..., "bytes": ...} of a file, or of a folder (DICOM series, mask
    folder: every file below it, by relative name and content). None for None; a missing path gets no hash."""
    if path is None:
        return None
    path = Path(path).absolute()
    entry: dict[str, Any] = {"path": str(path)}
    try:
        if path.is_file():
            digest = hashlib.sha256()
            entry["bytes"] = _hash_file(path, digest)
        elif path.is_dir():
            digest = hashlib.sha256()
            total = 0
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                digest.update(str(file.relative_to(path)).encode() + b"\0")
                total += _hash_file(file, digest)
            entry["bytes"] = total
        else:
            return entry
    except OSError as error:
        raise InputError(f"cannot read {path} to record what the export is made from ({error.strerror})") from None
    entry["sha256"] = digest.hexdigest()
    return entry


def _names_path(names: str | None) -> str | None:
    return names if names and Path(names).is_file() else None


def input_fingerprints(cases: Sequence) -> list[dict[str, Any]]:
    """One entry per case: ct_id, and the fingerprints of its CT, labels and (file) names table."""
    return [{"ct_id": case.ct_id, "ct": fingerprint(case.ct), "labels": fingerprint(case.labels),
             "names": fingerprint(_names_path(case.names))} for case in cases]


def _describe(entry: dict | None) -> str:
    if entry is None:
        return "none"
    digest = entry.get("sha256")
    return f"{entry['path']} (sha256 {digest[:12]}...)" if digest else f"{entry['path']} (missing)"


def check_same_inputs(root: Path, previous: dict, current: list[dict[str, Any]]) -> None:
    """Refuse a resume whose inputs differ from those recorded in ``export.json`` (nothing is touched)."""
    fix = "nothing was changed; resume with the same inputs, or give another --out"
    recorded = previous.get("inputs")
    if recorded is None:  # an export made before inputs were recorded: compare the paths it kept
        before = [(c.get("ct_id"), c.get("ct"), c.get("labels")) for c in previous.get("cases", [])]
        now = [(c["ct_id"], c["ct"]["path"] if c["ct"] else None, c["labels"]["path"] if c["labels"] else None)
               for c in current]
        absolute = [(i, str(Path(ct).absolute()) if ct else None, str(Path(lb).absolute()) if lb else None)
                    for i, ct, lb in before]
        if absolute != now:
            raise InputError(f"cannot resume {root}: its inputs (CT and label paths) differ from this run's; {fix}")
        return
    ids_before = [c["ct_id"] for c in recorded]
    ids_now = [c["ct_id"] for c in current]
    if ids_before != ids_now:
        raise InputError(f"cannot resume {root}: it was made from CTs {', '.join(ids_before)} but this run gives "
                         f"{', '.join(ids_now)}; {fix}")
    for old, new in zip(recorded, current):
        for kind in ("ct", "labels", "names"):
            a, b = old.get(kind), new.get(kind)
            same = (a is None and b is None) or (a is not None and b is not None and a.get("path") == b.get("path")
                                                 and a.get("sha256") == b.get("sha256"))
            if not same:
                what = {"ct": "CT", "labels": "labels", "names": "names table"}[kind]
                raise InputError(f"cannot resume {root}: the {what} of {new['ct_id']} was {_describe(a)} and is now "
                                 f"{_describe(b)}; {fix}")


__all__ = ["check_same_inputs", "fingerprint", "input_fingerprints"]
