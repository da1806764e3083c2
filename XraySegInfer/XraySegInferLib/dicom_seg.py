"""DICOM Segmentation objects (SEG, highdicom) for a prediction on a DICOM radiograph (CR, DX, DR, ...).

The SEG joins the source image's study (same StudyInstanceUID, patient and study modules copied by highdicom),
references the source in its ReferencedSeriesSequence and in every frame's Derivation Image / Source Image
Sequence, and holds one BINARY segment per model class, in the card's order (segment number = class index), so
overlapping bones stay separate segments. Each segment carries the class name as its label, the card's SNOMED
category / type / type modifier (Tissue / Bone when the card has none), the class colour (CIELab) and the
model as its algorithm (AUTOMATIC, family "Artificial Intelligence").

A projection radiograph has no patient coordinate system (no Frame of Reference, position or orientation), so
the SEG is tied to it pixel for pixel (Spatial Locations Preserved: YES) and carries no Pixel Measures: the
standard requires Slice Thickness with them only where a Frame of Reference exists, but readers (highdicom's
among them) insist on it, and a CR's Pixel Spacing is often absent or zero. The spacing stays the source's.
A projection image (CR, DX, ...) that does state a patient position but no Slice Thickness is treated the same
way; an image with a full patient geometry (e.g. a CT or MR slice) keeps its frame of reference.

::

    path = write_dicom_seg(prediction, "chest.dcm", "out/segmentation.dcm", card=predictor.card)
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import InputError, XraySegError

if TYPE_CHECKING:  # pragma: no cover - typing only; pydicom/highdicom are imported where they are used
    import pydicom

SEG_FILE = "segmentation.dcm"
DEFAULT_CATEGORY = {"CodeValue": "85756007", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Tissue"}
DEFAULT_TYPE = {"CodeValue": "272673000", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Bone"}
# Projection X-ray modalities, whose SEG refers to the image pixel for pixel even when it states a position.
PROJECTION_MODALITIES = {"CR", "DX", "DR", "RG", "MG", "IO", "PX", "XA", "RF"}
NON_DICOM_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nrrd", ".nhdr", ".nii", ".gz", ".mha",
                      ".mhd"}


def require_highdicom() -> None:
    """Raise a clear :class:`XraySegError` (not an ImportError traceback) when highdicom is missing."""
    try:
        import highdicom  # noqa: F401
    except ImportError as error:
        raise XraySegError("DICOM SEG output needs the highdicom package; install it with "
                           "'python -m pip install highdicom==0.28.2' (or pip install 'xrayseg[dicom]')") from error


def read_source_dataset(path: str | Path) -> "pydicom.Dataset":
    """The source radiograph's DICOM header (no pixel data), or :class:`InputError` when ``path`` is not a
    single-frame DICOM image with the UIDs a SEG must reference."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    fix = "drop --dicom-seg, or give the radiograph's DICOM file (CR, DX or DR)"
    if not path.is_file():
        raise InputError(f"--dicom-seg: {path} is not a file; {fix}")
    if path.suffix.lower() in NON_DICOM_SUFFIXES:
        raise InputError(f"--dicom-seg needs a DICOM radiograph, but {path} is a {path.suffix} file; {fix}")
    try:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except InvalidDicomError:  # no preamble: read as the reader does, then judge by the UIDs
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
            if "SOPInstanceUID" not in ds:
                raise
    except Exception as error:  # noqa: BLE001 - any parser failure means: not readable DICOM
        raise InputError(f"--dicom-seg needs a DICOM radiograph, but {path} is not DICOM ({error}); {fix}") \
            from error
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows",
                           "Columns") if k not in ds]
    if missing:
        raise InputError(f"--dicom-seg: {path} lacks {', '.join(missing)}, which a DICOM SEG must reference; "
                         f"{fix}")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError(f"--dicom-seg: {path} has {ds.NumberOfFrames} frames; only single-frame radiographs are "
                         f"supported; {fix}")
    return ds


def _coded(entry: dict[str, str]):
    from highdicom.sr import CodedConcept

    return CodedConcept(str(entry["CodeValue"]), str(entry["CodingSchemeDesignator"]), str(entry["CodeMeaning"]))


def segment_descriptions(class_names: Sequence[str], colors: Sequence[Sequence[float]], card: dict | None,
                         ) -> list:
    """One highdicom ``SegmentDescription`` per class (numbered from 1 in order), with the card's SNOMED
    codes (category, type, type modifier), the class colour and the model as the algorithm."""
    from highdicom import AlgorithmIdentificationSequence
    from highdicom.color import CIELabColor
    from highdicom.seg import SegmentAlgorithmTypeValues, SegmentDescription
    from pydicom.sr.codedict import codes

    card = card or {}
    snomed = {c.get("name"): c.get("snomed") or {} for c in card.get("classes") or []}
    algorithm = AlgorithmIdentificationSequence(
        name=str(card.get("name") or "xrayseg model")[:64], family=codes.cid7162.ArtificialIntelligence,
        version=str(card.get("version") or "unknown")[:64])
    out = []
    for number, (name, color) in enumerate(zip(class_names, colors), start=1):
        codes_of = snomed.get(name, {})
        rgb = [int(round(255 * float(np.clip(c, 0.0, 1.0)))) for c in color]
        description = SegmentDescription(
            segment_number=number, segment_label=str(name)[:64],
            segmented_property_category=_coded(codes_of.get("category") or DEFAULT_CATEGORY),
            segmented_property_type=_coded(codes_of.get("type") or DEFAULT_TYPE),
            algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            display_color=CIELabColor.from_rgb(*rgb))
        if codes_of.get("modifier"):  # highdicom has no argument for it; the attribute sits in the type item
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                _coded(codes_of["modifier"])]
        out.append(description)
    return out


def build_dicom_seg(masks: np.ndarray, class_names: Sequence[str], colors: Sequence[Sequence[float]],
                    source: "pydicom.Dataset", card: dict | None = None, series_number: int = 901,
                    series_description: str | None = None):
    """A highdicom ``Segmentation`` (BINARY, one segment per class) of ``masks`` (C, rows, cols) bool, which
    must lie on the source image's own grid (as ``Prediction.masks`` do)."""
    require_highdicom()
    import highdicom
    from highdicom.seg import Segmentation, SegmentationTypeValues

    from . import __version__

    masks = np.asarray(masks).astype(bool)
    if masks.ndim != 3 or len(class_names) != masks.shape[0]:
        raise XraySegError(f"DICOM SEG: masks of shape {masks.shape} do not match {len(class_names)} classes")
    rows, cols = int(source.Rows), int(source.Columns)
    if masks.shape[1:] != (rows, cols):
        raise InputError(f"DICOM SEG: the masks are {masks.shape[2]}x{masks.shape[1]} pixels but the source image "
                         f"is {cols}x{rows}; segment the same file the SEG refers to")
    header = copy.deepcopy(source)  # attributes are dropped below; the caller's dataset stays as it was
    if "PixelData" in header:  # highdicom needs the header only
        del header.PixelData
    spatial = highdicom.spatial.get_image_coordinate_system(header) is not None
    if spatial and "SliceThickness" not in header:
        if str(header.get("Modality", "")) not in PROJECTION_MODALITIES:
            raise InputError(f"DICOM SEG: the source {header.get('Modality', '?')} image has a patient position but "
                             "no SliceThickness, which a SEG in its frame of reference needs; fix the source header")
        spatial = False  # a projection image placed in space: refer to it pixel for pixel instead
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient"):
            if keyword in header:
                delattr(header, keyword)
    if not spatial:
        for keyword in ("PixelSpacing", "SliceThickness"):  # see the module docstring
            if keyword in header:
                delattr(header, keyword)
    model = str((card or {}).get("name") or "xrayseg model")
    seg = Segmentation(
        source_images=[header],
        pixel_array=np.moveaxis(masks, 0, -1)[None].astype(np.uint8),  # (frames=1, rows, cols, segments)
        segmentation_type=SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(class_names, colors, card),
        series_instance_uid=highdicom.UID(), series_number=series_number,
        sop_instance_uid=highdicom.UID(), instance_number=1,
        manufacturer="XraySeg", manufacturer_model_name="XraySegInfer", software_versions=__version__,
        device_serial_number="0", content_label="BONES",
        content_description=f"Bone segmentation by {model}"[:64],
        series_description=(series_description or f"XraySeg {model}")[:64])
    if not spatial:  # General Image module, Type 2C without a plane orientation: the source's own (may be empty)
        seg.PatientOrientation = source.get("PatientOrientation", "")
    if "ContentCreatorName" not in seg:  # Type 2 in the Content Identification Macro: present, empty (software)
        seg.ContentCreatorName = ""
    return seg


def write_dicom_seg(prediction: Any, source_path: str | Path, out_path: str | Path, card: dict | None = None,
                    series_number: int = 901) -> Path:
    """Write ``prediction`` (an ``inference.Prediction`` of ``source_path``) as a DICOM SEG at ``out_path``
    (a file, or a folder that gets ``segmentation.dcm``), atomically (temporary name, then rename). Returns
    the path written."""
    source = read_source_dataset(source_path)
    out = Path(out_path)
    if out.is_dir() or not out.suffix:
        out = out / SEG_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    seg = build_dicom_seg(prediction.masks, prediction.class_names, prediction.colors, source, card,
                          series_number)
    staged = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        seg.save_as(staged)
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    return out


def dicom_source_file(volume_node: Any, dicom_database: Any = None) -> Path | None:
    """The DICOM file a Slicer volume node was loaded from, or None: its first ``DICOM.instanceUIDs`` entry
    looked up in ``dicom_database`` (``slicer.dicomDatabase``, loaded through the DICOM module), else its
    storage node's file when that is DICOM (loaded with "Add data"). Slicer keeps such a node on the file's
    own pixel grid (no flips), so a prediction on the node fits the file."""
    uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
    if uids and dicom_database is not None:
        path = dicom_database.fileForInstance(uids[0])
        if path and Path(path).is_file():
            return Path(path)
    storage = volume_node.GetStorageNode()
    filename = storage.GetFileName() if storage is not None else None
    if filename and Path(filename).is_file():
        try:
            read_source_dataset(filename)
        except InputError:
            return None
        return Path(filename)
    return None


def write_dicom_seg_for_node(prediction: Any, volume_node: Any, out_path: str | Path, card: dict | None = None,
                             dicom_database: Any = None) -> Path:
    """The Infer module's "Save DICOM SEG": :func:`write_dicom_seg` for a prediction on ``volume_node``, whose
    source file :func:`dicom_source_file` finds; :class:`InputError` when the node did not come from DICOM."""
    source = dicom_source_file(volume_node, dicom_database)
    if source is None:
        raise InputError(f"'{volume_node.GetName()}' was not loaded from a DICOM file, and a DICOM SEG must refer "
                         "to one; load the radiograph through the DICOM module or from its .dcm file, then "
                         "segment it again")
    return write_dicom_seg(prediction, source, out_path, card)
