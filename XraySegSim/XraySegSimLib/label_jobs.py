"""Layer 2: bone labels for an unlabelled CT of the scene, computed in a background process, loaded as the Sim
module's input labels. Two ways (issue 14 item 6, issue 10 item 2):

* **Label bones in CT**: ``xrayseg ct-segment CT --model M --out DIR`` with the bundled 3D model
  (``Resources/Models/femur/``, a 3D V-Net package), which writes ``DIR/labels.nii.gz`` on the CT grid and
  ``DIR/segmentation.json`` (the structure's name).
* **Transfer labels from an atlas**: ``xrayseg label-transfer --atlas-ct A --atlas-labels L --ct T --out DIR``,
  with a CT and its labels from the scene, or the ``chest-ct`` sample (fetched first where it is not cached).

The parent writes the nodes through storage nodes (NIfTI, in the node's own coordinates) into a private folder,
runs the command with :class:`.background.BackgroundProcess` (staged output: the result folder exists only after
success) and, only then, reads ``labels.nii.gz`` into a segmentation node on the CT (same parent transform),
named, coloured and coded by SNOMED CT as the classes it came from. A cancelled, failed or killed run adds no
node and leaves no file. Qt-free::

    job = start_ct_labelling(scene, ctNode)            # or start_label_transfer(scene, ctNode, atlasCt, atlasLabels)
    job.poll()                                         # background.RunStatus: .state, .fraction, .message
    segmentation = job.finish(scene)                   # once it succeeded; job.cancel() otherwise
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .background import BackgroundProcess, RunStatus, xrayseg_argv
from .errors import InputError, XraySegError

CT_MODEL_NAME = "femur"
CT_MODEL_FORMAT = "xrayseg-ct-model/1"
BONE_COLOR = (0.89, 0.85, 0.72)
FEMUR = ("SCT", "71341001", "Femur")
ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
SIDES = {"left": ("SCT", "7771000", "Left"), "right": ("SCT", "24028007", "Right")}
ATLAS_SAMPLE = "chest-ct"


@dataclass(frozen=True)
class ClassEntry:
    """One label value of a result file: its segment's name, colour (RGB 0..1) and terminology tag."""
    value: int
    name: str
    color: tuple[float, float, float]
    terminology: str | None = None


def ct_model_dirs() -> list[Path]:
    """Where the 3D model may be: ``$XRAYSEG_CT_MODEL`` alone when set (a user's own package), else
    ``$XRAYSEG_MODELS/femur``, the installed module's ``Resources/Models/femur``, the source checkout's
    ``Resources/Models/femur``."""
    import os

    if os.environ.get("XRAYSEG_CT_MODEL"):
        return [Path(os.environ["XRAYSEG_CT_MODEL"])]
    here = Path(__file__).resolve().parents[1]
    dirs = [Path(os.environ["XRAYSEG_MODELS"]) / CT_MODEL_NAME] if os.environ.get("XRAYSEG_MODELS") else []
    return dirs + [here / "Resources" / "Models" / CT_MODEL_NAME, here.parent / "Resources" / "Models" / CT_MODEL_NAME]


def ct_model_problem(model_dir: str | Path | None) -> str | None:
    """Why ``model_dir`` cannot label a CT (one line for a tooltip), or None when its card is a 3D model card.
    Reads the JSON card only (no torch): the child checks the weights' SHA-256 when it loads them."""
    if model_dir is None:
        return ("no bundled 3D bone model: Resources/Models/femur/ is missing (train one with xrayseg ct-train, "
                "or use 'Transfer labels from atlas')")
    card = Path(model_dir) / "model.json"
    try:
        data = json.loads(card.read_text())
    except (OSError, ValueError) as error:
        return f"{card} is not a readable model card ({error})"
    if data.get("format") != CT_MODEL_FORMAT:
        return f"{card} is not a 3D CT model card (format {data.get('format')!r})"
    return None


def bundled_ct_model() -> Path | None:
    """The first folder of :func:`ct_model_dirs` that holds a 3D model card, else None."""
    return next((d for d in ct_model_dirs() if (d / "model.json").is_file()), None)


def structure_entry(name: str, value: int = 1) -> ClassEntry:
    """Name, colour and terminology of a structure: the shipped TotalSegmentator bone table's row of that name
    (``femur_left`` ...), else Femur (with its side, when the name says it) for a femur, else uncoded."""
    from .scene_inputs import read_label_table, terminology_entry

    row = next((r for r in read_label_table().values() if r.name == name), None)
    if row is not None:
        return ClassEntry(value, name, row.color, row.terminology)
    lowered = name.lower()
    if "femur" in lowered:
        side = next((code for word, code in SIDES.items() if word in lowered), None)
        return ClassEntry(value, name, BONE_COLOR, terminology_entry(ANATOMICAL_STRUCTURE, FEMUR, side))
    return ClassEntry(value, name, BONE_COLOR, None)


# ---- nodes to files and back ---------------------------------------------------------------------------------


def write_volume_file(node, path: str | Path) -> Path:
    """Write a volume node (scalar or label map) with a storage node, in the node's own coordinates (its parent
    transform is not applied: the result goes under the same transform)."""
    import slicer

    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(True)
    if not storage.WriteData(node):
        raise InputError(f"{node.GetName()}: could not be written to {path}; check that the volume holds voxels")
    return Path(path)


def _write_array_on_grid(scene, array: np.ndarray, grid_node, path: Path) -> Path:
    """``array`` [k, j, i] written as a label map with the IJK->RAS of ``grid_node`` (via a temporary node)."""
    import vtk

    from .scene_nodes import _image_data, node_transaction

    with node_transaction(scene, keep=False):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__xrayseg_atlas_labels__")
        vtk_type = vtk.VTK_UNSIGNED_SHORT if array.max(initial=0) > 255 else vtk.VTK_UNSIGNED_CHAR
        labelmap.SetAndObserveImageData(_image_data(array, vtk_type))
        matrix = vtk.vtkMatrix4x4()
        grid_node.GetIJKToRASMatrix(matrix)
        labelmap.SetIJKToRASMatrix(matrix)
        return write_volume_file(labelmap, path)


def _corners(node) -> np.ndarray:
    from .scene_inputs import volume_from_node

    corners = volume_from_node(node, role="label map").corners_ras()
    return corners[np.lexsort(corners.T[::-1])]


def load_labels_result(scene, labels_path: str | Path, ct_node, classes: Sequence[ClassEntry],
                       name: str):
    """Read a label map file on the CT grid into a new segmentation node on ``ct_node`` (same parent transform):
    one segment per value of ``classes`` present, with its name, colour and terminology. Values without a class
    are dropped. Refused (InputError, no node left): a file that is not on the CT's grid, or has no label."""
    import slicer

    from .scene_nodes import node_transaction

    with node_transaction(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__xrayseg_result__")
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(labels_path))
        if not storage.ReadData(labelmap):
            raise InputError(f"{labels_path}: could not be read as a label map")
        labelmap.SetAndObserveTransformNodeID(ct_node.GetTransformNodeID())
        if sorted(labelmap.GetImageData().GetDimensions()) != sorted(ct_node.GetImageData().GetDimensions()):
            raise InputError(f"{labels_path}: is not on the grid of {ct_node.GetName()}")
        if not np.allclose(_corners(labelmap), _corners(ct_node), atol=0.01):
            raise InputError(f"{labels_path}: does not cover {ct_node.GetName()} voxel for voxel (other grid)")
        array = slicer.util.arrayFromVolume(labelmap)
        by_value = {c.value: c for c in classes}
        present = [int(v) for v in np.unique(array) if int(v) in by_value]
        if not present:
            raise InputError(f"{labels_path}: holds none of the expected labels (the model or the registration "
                             "found no bone)")
        array[~np.isin(array, present)] = 0  # values without a class (e.g. organs) are not bones
        slicer.util.arrayFromVolumeModified(labelmap)
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct_node)
        segmentation.SetAndObserveTransformNodeID(ct_node.GetTransformNodeID())
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation):
            raise InputError(f"{labels_path}: could not be imported as segments")
        segments = segmentation.GetSegmentation()
        for index in range(segments.GetNumberOfSegments()):
            segment = segments.GetNthSegment(index)
            entry = by_value.get(int(segment.GetLabelValue()))
            if entry is None:
                continue
            segment.SetName(entry.name)
            segment.SetColor(*entry.color)
            if entry.terminology:
                segment.SetTerminology(entry.terminology)
        scene.RemoveNode(labelmap)
    return segmentation


# ---- the jobs ---------------------------------------------------------------------------------------------------


class LabelJob:
    """One labelling run in a child process (see the module docstring)."""

    def __init__(self, run: BackgroundProcess, work: Path, ct_node, classes: Sequence[ClassEntry] | None,
                 name: str) -> None:
        self.run, self.work, self.ct_node, self.classes, self.name = run, work, ct_node, classes, name
        self.warning: str | None = None  # set by finish(): the run's doubt about its result (e.g. a femur volume)
        self.metal_note: str | None = None  # set by finish(): the CT's metal the model read as bone-like HU

    def poll(self) -> RunStatus:
        """The run's status now (never blocks); a missing package in the child gets a hint how to install it."""
        status = self.run.poll()
        if status.state == "failed" and "No module named" in status.message:
            return dataclasses.replace(status, message=status.message + "; open the XraySeg Infer module once to "
                                                                        "install PyTorch and MONAI")
        return status

    def wait(self, timeout: float | None = None) -> RunStatus:
        self.run.wait(timeout)
        return self.poll()

    def cancel(self) -> RunStatus:
        """Stop the child now; no node is added and the job's files are removed."""
        status = self.run.cancel()
        self.close()
        return status

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def finish(self, scene):
        """The new segmentation node, once the run succeeded (raises ``XraySegError`` with the run's message
        otherwise); the job's files are removed either way."""
        try:
            status = self.poll()
            if status.state != "succeeded":
                raise XraySegError(status.message if status.finished else f"{self.run.name} has not finished")
            out = Path(status.output_dir)
            classes = self.classes
            if classes is None:  # ct-segment: the structure of label 1 is in its summary
                summary = json.loads((out / "segmentation.json").read_text())
                self.warning = summary.get("warning")
                self.metal_note = metal_note(summary.get("metal_suppression"))
                classes = [structure_entry(str(name), int(value)) for value, name in summary["labels"].items()
                           if int(value) > 0]
            return load_labels_result(scene, out / "labels.nii.gz", self.ct_node, classes, self.name)
        finally:
            self.close()


def metal_note(report: dict | None) -> str | None:
    """ct-segment's metal report (``segmentation.json``'s ``metal_suppression``) in a few words, when the model
    replaced any voxel of this CT; the CLI prints the same words."""
    if not report or not report.get("voxels_above"):
        return None
    return (f"metal: {report['voxels_above']} voxels above {report['above_hu']:g} HU read as {report['fill_hu']:g} "
            "HU")


def _work_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="xrayseg-labels-"))


def start_ct_labelling(scene, ct_node, model_dir: str | Path | None = None, device: str = "auto",
                       python: str | None = None) -> LabelJob:
    """Start ``xrayseg ct-segment`` on ``ct_node`` with ``model_dir`` (default: the bundled 3D model)."""
    from .scene_inputs import volume_from_node

    volume_from_node(ct_node)  # refuses no CT, a single slice, vectors
    model_dir = Path(model_dir) if model_dir is not None else bundled_ct_model()
    problem = ct_model_problem(model_dir)
    if problem:
        raise InputError(problem)
    work = _work_dir()
    try:
        ct_path = write_volume_file(ct_node, work / "ct.nii.gz")
        argv = xrayseg_argv("ct-segment", ct_path, "--model", Path(model_dir).resolve(), "--out", "{out}",
                            "--device", device, python=python)
        run = BackgroundProcess(argv, work / "result", name="labelling the CT", percent_lines=True).start()
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return LabelJob(run, work, ct_node, None, f"{ct_node.GetName()} bones")


def _scene_atlas(scene, atlas_ct, atlas_labels, work: Path) -> tuple[Path, Path, Path, list[ClassEntry]]:
    """Write the scene's atlas: its CT, its labels compacted to 1..n (class order) and the names table."""
    from .scene_inputs import labels_from_node, terminology_for_classes, volume_from_node

    ct = volume_from_node(atlas_ct, role="atlas CT")
    labels, classes = labels_from_node(scene, atlas_labels, atlas_ct)
    if labels is None or classes is None or not len(classes):
        raise InputError(f"{atlas_labels.GetName()}: holds no label classes to transfer")
    if labels.array.shape != ct.array.shape or not np.allclose(labels.ijk_to_ras, ct.ijk_to_ras, atol=1e-3):
        raise InputError(f"{atlas_labels.GetName()}: the atlas label map is not on the grid of "
                         f"{atlas_ct.GetName()}; resample it onto the atlas CT (or use a segmentation)")
    raw = np.asarray(labels.array)
    lut = np.zeros(max(max(c.values) for c in classes.classes) + 1, np.uint16)
    for index, cls in enumerate(classes.classes, start=1):
        lut[list(cls.values)] = index
    compact = lut[np.clip(raw, 0, len(lut) - 1)] * (raw < len(lut))
    tags = terminology_for_classes(atlas_labels, classes)
    entries = [ClassEntry(i, c.name, tuple(float(x) for x in c.color), tag)
               for i, (c, tag) in enumerate(zip(classes.classes, tags), start=1)]
    names = work / "atlas_names.csv"
    with open(names, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["value", "name"])
        writer.writerows([e.value, e.name] for e in entries)
    return (write_volume_file(atlas_ct, work / "atlas_ct.nii.gz"),
            _write_array_on_grid(scene, compact.astype(np.uint16), atlas_ct, work / "atlas_labels.nii.gz"),
            names, entries)


def _sample_atlas(cache_dir: Path) -> tuple[Path, Path, Path, list[ClassEntry]]:
    """The chest-ct sample's files (maybe not fetched yet) and its classes: names from its table, colours and
    terminology from the shipped TotalSegmentator bone table."""
    from .labels import read_names_table
    from .sample_data import sample_paths
    from .scene_inputs import read_label_table

    paths = sample_paths(ATLAS_SAMPLE, cache_dir)
    table = read_label_table()
    entries = [ClassEntry(value, row.name, row.color, row.terminology) for value, row in table.items()]
    if paths["names"].is_file():  # the sample's own names where it has them
        names = read_names_table(paths["names"])
        entries = [ClassEntry(e.value, names.get(e.value, (e.name,))[0], e.color, e.terminology) for e in entries]
    return paths["ct"], paths["labels"], paths["names"], entries


def start_label_transfer(scene, ct_node, atlas_ct=None, atlas_labels=None, bspline_iterations: int | None = None,
                         cache_dir: str | Path | None = None, python: str | None = None) -> LabelJob:
    """Start ``xrayseg label-transfer`` onto ``ct_node`` from the scene's ``atlas_ct`` + ``atlas_labels``
    (a segmentation, or a label map on the atlas CT grid), or, with neither given, from the chest-ct sample
    (fetched first by ``xrayseg fetch-sample`` where it is not cached, into ``cache_dir``)."""
    from .sample_data import default_cache_dir, is_cached
    from .scene_inputs import volume_from_node

    volume_from_node(ct_node)
    if (atlas_ct is None) != (atlas_labels is None):
        raise InputError("choose both the atlas CT and its labels, or neither (then the chest-ct sample is the "
                         "atlas)")
    if atlas_ct is not None and atlas_ct is ct_node:
        raise InputError("the atlas CT is the CT to label; choose another, labelled CT as the atlas")
    work = _work_dir()
    try:
        stages, env = [], {}
        if atlas_ct is None:
            cache = Path(cache_dir or default_cache_dir()).resolve()
            env["XRAYSEG_CACHE"] = str(cache)  # the child fetches into, and reads from, the same cache
            a_ct, a_labels, names, entries = _sample_atlas(cache)
            if not is_cached(ATLAS_SAMPLE, cache):
                stages.append(xrayseg_argv("fetch-sample", ATLAS_SAMPLE, python=python))
            atlas_name, values = ATLAS_SAMPLE, []
        else:
            a_ct, a_labels, names, entries = _scene_atlas(scene, atlas_ct, atlas_labels, work)
            atlas_name, values = atlas_ct.GetName(), ["--labels", ",".join(str(e.value) for e in entries)]
        ct_path = write_volume_file(ct_node, work / "ct.nii.gz")
        extra = ["--bspline-iterations", str(int(bspline_iterations))] if bspline_iterations else []
        stages.append(xrayseg_argv("label-transfer", "--atlas-ct", a_ct, "--atlas-labels", a_labels,
                                   "--ct", ct_path, "--names", names, "--out", "{out}", *values, *extra,
                                   python=python))
        run = BackgroundProcess(stages[0], work / "result", name="the label transfer", env=env,
                                next_stages=stages[1:], percent_lines=True).start()
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return LabelJob(run, work, ct_node, entries, f"{ct_node.GetName()} bones (from {atlas_name})")


__all__ = ["ClassEntry", "LabelJob", "bundled_ct_model", "ct_model_problem", "load_labels_result",
           "start_ct_labelling", "start_label_transfer", "structure_entry", "write_volume_file"]
