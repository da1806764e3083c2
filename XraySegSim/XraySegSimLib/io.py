"""Writing DRRs and projected labels so that Slicer and the standard tools read them in the right place.

Every file is written atomically: to a temporary name in the same folder, then renamed, so an interrupted
run never leaves a half-written file; a run's whole output folder is staged and swapped in
(:func:`replace_folder`), so a failed run leaves the previous result untouched and no stale files. NRRD files carry the detector placement (LPS, as Slicer writes), so a
DRR loaded in Slicer lies exactly on the detector plane in 3D.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Collection, Iterator

import numpy as np

from .errors import InputError
from .geometry import XrayGeometry
from .labels import LabelClasses

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def check_output_folder(target: str | Path, known_files: Collection[str], kind: str) -> Path:
    """Refuse an ``--out`` that cannot hold a fresh ``kind`` (a file, or a folder with files that are not an
    earlier ``kind``'s: they would be lost when it is replaced). Returns the target as a Path."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise InputError(f"--out {target} is a file; give a folder (it is created if needed)")
    if target.is_dir():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in known_files
                         and not (p.name.startswith(STAGING_PREFIX) and p.is_dir()))
        if foreign:
            raise InputError(f"--out {target} holds files that are not an earlier {kind}'s (e.g. {foreign[0]}); "
                             "give an empty or new folder: a new result replaces the whole folder")
    return target


def _os_error_reason(error: OSError) -> str:
    reasons = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EROFS: "the file system is read-only"}
    where = f" ({error.filename})" if getattr(error, "filename", None) else ""
    return reasons.get(error.errno, error.strerror or str(error)) + where


STAGING_PREFIX = ".xrayseg-staging-"  # inside --out, only when its parent folder is not writable


def _stage_inside(target: Path) -> Path:
    """Staging folder inside ``target`` (for an ``--out`` whose parent we may not write); leftovers of an
    earlier interrupted run there are removed first."""
    for stale in target.glob(STAGING_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target))


def _swap_inside(staging: Path, target: Path, known_files: Collection[str]) -> None:
    """Replace ``target``'s files by ``staging``'s (the fallback: a file-by-file swap, each file atomic)."""
    for old in target.iterdir():
        if old.name in known_files and old.is_file():
            old.unlink()
    for new in staging.iterdir():
        os.replace(new, target / new.name)
    staging.rmdir()


@contextlib.contextmanager
def replace_folder(target: str | Path, known_files: Collection[str], kind: str) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``target``; when the block succeeds it takes ``target``'s place
    (an earlier result there is removed only then). On any failure the temporary folder is removed and
    ``target`` is as it was: never a mixture of old and new files. ``known_files``: the names a ``kind`` writes
    (see :func:`check_output_folder`). An OSError (disk full, read-only...) becomes one-line InputError."""
    target = check_output_folder(target, known_files, kind)
    inside = False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir() and not os.access(target.parent, os.W_OK | os.X_OK) and os.access(target, os.W_OK):
            staging, inside = _stage_inside(target), True  # e.g. --out /data/mine where /data is not ours
        else:
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".new", dir=target.parent))
    except OSError as error:
        raise InputError(f"cannot create the {kind} folder {target}: {_os_error_reason(error)}; choose a writable "
                         "--out") from None
    try:
        yield staging
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700
        if inside:
            _swap_inside(staging, target, known_files)
        elif target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "previous")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except OSError as error:
        raise InputError(f"{kind} not written: {_os_error_reason(error)}; {target} is unchanged") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def _detector_space_header(geometry: XrayGeometry) -> dict[str, Any]:
    ijk_to_ras = geometry.detector_ijk_to_ras()
    directions_lps = (RAS_TO_LPS @ ijk_to_ras[:3, :3]).T  # one row per image axis
    return {
        "space": "left-posterior-superior",
        "space directions": directions_lps,
        "space origin": RAS_TO_LPS @ ijk_to_ras[:3, 3],
        "kinds": ["domain", "domain", "domain"],
    }


def write_detector_image(path: str | Path, image: np.ndarray, geometry: XrayGeometry) -> None:
    """Write a [row, column] image as a single-slice NRRD volume placed on the detector (LPS header)."""
    import nrrd

    array = np.ascontiguousarray(image)[None]  # [k=0, j, i]
    header = _detector_space_header(geometry)
    header["encoding"] = "gzip"
    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), array, header, index_order="C")


def write_segmentation_nrrd(
    path: str | Path, masks: np.ndarray, classes: LabelClasses, geometry: XrayGeometry
) -> None:
    """Write overlapping binary masks (n_classes, rows, cols) as a Slicer ``.seg.nrrd``.

    Each class is its own layer (label value 1), so overlaps survive; Slicer loads it as a segmentation
    node with the class names and colours, lying on the detector plane.
    """
    import nrrd

    n_classes, rows, cols = masks.shape
    # C-order [k, j, i, layer]; NRRD (Fortran) order is then layer, i, j, k: Slicer's 4D segmentation layout.
    array = np.ascontiguousarray(np.moveaxis(masks.astype(np.uint8), 0, -1)[None])
    space = _detector_space_header(geometry)
    header: dict[str, Any] = {
        "encoding": "gzip",
        "space": space["space"],
        "space directions": np.vstack([np.full(3, np.nan), space["space directions"]]),
        "space origin": space["space origin"],
        "kinds": ["list", "domain", "domain", "domain"],
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
        # Slicer's serialisation of the reference geometry: the 16 IJK->RAS values (row-major) then the extent.
        "Segmentation_ConversionParameters": "Reference image geometry|"
        + "".join(f"{v:.10g};" for v in geometry.detector_ijk_to_ras().ravel())
        + f"0;{cols - 1};0;{rows - 1};0;0;|Image geometry description",
    }
    for index, cls in enumerate(classes.classes):
        prefix = f"Segment{index}_"
        header[prefix + "ID"] = cls.name
        header[prefix + "Name"] = cls.name
        header[prefix + "NameAutoGenerated"] = "0"
        header[prefix + "Color"] = " ".join(f"{c:.4f}" for c in cls.color)
        header[prefix + "ColorAutoGenerated"] = "0"
        header[prefix + "Layer"] = str(index)
        header[prefix + "LabelValue"] = "1"
        header[prefix + "Extent"] = f"0 {cols - 1} 0 {rows - 1} 0 0"
        header[prefix + "Tags"] = "|"
    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), array, header, index_order="C", custom_field_map=None)


def write_png(path: str | Path, rgb_or_gray: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb_or_gray).save(tmp, format="PNG")


def write_render_outputs(result, out_dir: str | Path, sidecar: dict[str, Any] | None = None,
                         save_thickness: bool = False) -> dict[str, Path]:
    """Write a :class:`DrrResult` to ``out_dir``; returns {kind: path}. The JSON sidecar is written last.

    Files: ``drr.nrrd`` (line integral, float32, on the detector), ``drr.png`` (8-bit display),
    ``labels.nrrd`` (single-label image, longest path wins), ``labels.seg.nrrd`` (overlapping masks, one layer
    per class), ``labels.png`` and ``overlay.png`` (previews), optionally ``thickness.nrrd`` (mm per class),
    and ``drr.json`` (geometry, P, classes, conventions).
    """
    from .overlay import drr_to_uint8, labels_rgb, overlay_rgb

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    geometry, classes = result.geometry, result.classes
    paths = {"drr": out / "drr.nrrd", "drr_png": out / "drr.png", "sidecar": out / "drr.json"}
    write_detector_image(paths["drr"], result.line_integral, geometry)
    gray = drr_to_uint8(result.line_integral)
    write_png(paths["drr_png"], gray)
    masks = result.masks()
    if len(classes):
        label_image = result.label_image()
        paths.update(labels=out / "labels.nrrd", segmentation=out / "labels.seg.nrrd",
                     labels_png=out / "labels.png", overlay_png=out / "overlay.png")
        write_detector_image(paths["labels"], label_image, geometry)
        write_segmentation_nrrd(paths["segmentation"], masks, classes, geometry)
        write_png(paths["labels_png"], labels_rgb(label_image, classes))
        write_png(paths["overlay_png"], overlay_rgb(gray, masks, label_image, classes))
        if save_thickness:
            paths["thickness"] = out / "thickness.nrrd"
            _write_stack(paths["thickness"], result.thickness_mm, geometry)
    meta = {
        "geometry": geometry.to_dict(),
        "drr": {"file": "drr.nrrd", "quantity": "line integral of linear attenuation, sum(mu * length), "
                "dimensionless; transmission I/I0 = exp(-value)"},
        "classes": [{"index": i + 1, "name": c.name, "label_values": list(c.values),
                     "color_rgb": list(c.color),
                     "projected_pixels": int(masks[i].sum()) if len(classes) else 0}
                    for i, c in enumerate(classes.classes)],
        "mask_rule": f"a pixel is in a class when its ray runs >= {result.min_mask_thickness_mm:.3g} mm through it "
                     "(the CT's smallest voxel spacing); labels.seg.nrrd keeps overlaps (one layer per class)",
        "label_image_rule": "each pixel takes the class with the longest path through it (ties: lower index); "
                            "0 = no class",
        "unknown_label_values_ignored": result.unknown_label_values,
    }
    meta.update(sidecar or {})
    write_json(paths["sidecar"], meta)
    return paths


def _write_stack(path: Path, stack: np.ndarray, geometry: XrayGeometry) -> None:
    import nrrd

    space = _detector_space_header(geometry)
    header = {"encoding": "gzip", "space": space["space"], "space origin": space["space origin"],
              "space directions": np.vstack([np.full(3, np.nan), space["space directions"]]),
              "kinds": ["list", "domain", "domain", "domain"]}
    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), np.ascontiguousarray(np.moveaxis(stack, 0, -1)[None]), header, index_order="C")
