"""2D NRRD writers of an exported dataset: images and labels (spacing = detector pixel spacing) and mask stacks;
atomic, without pynrrd's time stamp (the same content gives the same bytes)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .export_gzip import gzip_runs
from .export_mask_runs import MaskRuns
from .io import atomic_path

GZIP_LEVEL = 1  # masks and labels are mostly zeros: level 1 is ~10x faster than 9 and ~as small


def _plane_header(spacing: Sequence[float]) -> dict[str, Any]:
    return {"space dimension": 2, "space directions": np.diag([float(spacing[0]), float(spacing[1])]),
            "space origin": np.zeros(2), "kinds": ["domain", "domain"]}


_PYNRRD_TIME_STAMP = re.compile(rb"# on [0-9: -]+\(GMT\)\.\n")


def _without_time_stamp(data: bytes) -> bytes:
    """pynrrd writes the current time into its header comment: dropped, so the same dataset is the same bytes."""
    head, tail = data[:256], data[256:]
    return _PYNRRD_TIME_STAMP.sub(b"", head, count=1) + tail


def _write_nrrd(path: Path, array: np.ndarray, header: dict[str, Any], gzipped: bytes | None = None) -> None:
    """pynrrd's header and data; 8-bit gzip data from :func:`gzip_runs` (the same decoded bytes, much faster),
    raw data written straight after pynrrd's header (the same bytes as ``nrrd.write``, which was read back to
    drop its time stamp). No time stamp: the same content gives the same bytes. ``gzipped``: the gzip stream
    of the data, already made (``array`` then only gives the header its shape and type)."""
    import nrrd

    with atomic_path(path) as tmp:
        runs = header.get("encoding") == "gzip" and array.dtype.itemsize == 1  # byte runs: uint8 masks, labels
        if runs or header.get("encoding") == "raw":  # raw: pynrrd's bytes without its file round trip
            try:
                from nrrd.writer import _handle_header, _write_header
            except ImportError:  # pragma: no cover - another pynrrd: its own writer
                pass
            else:
                buffer = io.BytesIO()
                _write_header(buffer, _handle_header(array, dict(header), "C"))
                with open(tmp, "wb") as handle:
                    handle.write(_without_time_stamp(buffer.getvalue()))
                    if gzipped is not None:
                        handle.write(gzipped)
                    else:
                        array = np.ascontiguousarray(array)
                        handle.write(gzip_runs(array) if runs else memoryview(array).cast("B"))
                return
        if gzipped is not None:  # pragma: no cover - another pynrrd: decode, let it write
            import gzip

            array = np.frombuffer(gzip.decompress(gzipped), array.dtype).reshape(array.shape)
        nrrd.write(str(tmp), np.ascontiguousarray(array), header, index_order="C", compression_level=GZIP_LEVEL)
        tmp.write_bytes(_without_time_stamp(tmp.read_bytes()))


def write_image_2d(path: Path, image: np.ndarray, spacing: Sequence[float], encoding: str = "raw",
                   extra: dict | None = None) -> None:
    """A [row, column] image as a 2D NRRD whose spacing is (column mm, row mm)."""
    header = _plane_header(spacing)
    header["encoding"] = encoding
    header.update(extra or {})
    _write_nrrd(path, image, header)


def write_mask_stack(path: Path, masks: np.ndarray | MaskRuns, spacing: Sequence[float],
                     class_names: Sequence[str]) -> None:
    """uint8 (C, H, W) stack, or its :class:`MaskRuns`; read back with ``nrrd.read(path, index_order='C')``."""
    header = {"space dimension": 2, "encoding": "gzip",
              "space directions": np.vstack([np.diag([float(spacing[0]), float(spacing[1])]), np.full(2, np.nan)]),
              "space origin": np.zeros(2), "kinds": ["domain", "domain", "list"],
              "labels": ["column", "row", "class"],
              "xrayseg_classes": "|".join(class_names)}
    if isinstance(masks, MaskRuns):  # the header needs only the shape and type
        _write_nrrd(path, np.broadcast_to(np.uint8(0), masks.shape), header, masks.gzip())
    else:
        _write_nrrd(path, np.ascontiguousarray(masks, dtype=np.uint8), header)


def read_nrrd(path: Path) -> np.ndarray:
    import nrrd

    array, _ = nrrd.read(str(path), index_order="C")
    return array
