"""Layer 2: MRML scene <-> XraySegSimLib. Qt-free; every function takes the scene and nodes explicitly.

This module re-exports the scene adapters, split by responsibility: ``scene_nodes`` (small MRML helpers),
``scene_inputs`` (CT, labels, terminology, isocentre), ``scene_rig`` (the X-ray set-up nodes), ``scene_outputs``
(rendering into the DRR and label nodes), ``scene_export`` (the batch-export bridge). None of them imports numba,
the projector or the physics at import time: the Slicer module imports them before the user agrees to install.

It runs wherever ``slicer`` (MRML) does: inside the Slicer application, and headless on the ``slicer-core``
wheel (the tests). Nothing here touches ``slicer.mrmlScene``, ``slicer.app`` or ``qt``.

Inputs (any orientation; parent transforms honoured when linear)::

    ct = volume_from_node(ct_node)                        # Volume in world RAS (parent transforms applied)
    labels, classes = labels_from_node(scene, seg_or_labelmap_node, ct_node)   # on the CT grid

The X-ray set-up in the scene (:class:`XraySimScene`), all nodes tagged with the attribute
``XraySegSim.Role`` so a later session finds them again:

* ``pose`` -- a linear transform node: the tube / C-arm pose. Dragging it (its 3D handles, or the Transforms
  module) moves the whole set-up: ``geometry() == base_geometry().transformed(pose_matrix())``.
* ``source`` -- a point list markup with one point; ``detector`` -- a plane markup (centre, axes, size in mm);
  ``frustum`` -- a model: lines from the source to the detector corners and the detector outline. All three
  sit under ``pose`` and hold the *base* (untransformed) set-up. Moving the source point or the detector plane
  on its own changes the set-up too; call :meth:`XraySimScene.update_frustum` after that.
* ``drr`` -- the DRR, a single-slice scalar volume whose IJK->RAS is ``geometry.detector_ijk_to_ras()``, so it
  lies on the detector in 3D; ``labels`` -- the projected labels, a segmentation on the same grid, one
  segment (and one layer, so overlaps survive) per class, with the input's names, colours and terminology;
  ``labels3d`` -- a model that shows the projected labels in 3D: one coloured quad per labelled pixel (the
  class with the longest path), just in front of the detector.

Isocentre (the point the view is aimed at)::

    isocenter_ras("Segment centre", ct_node, labels_node=bones, segment="femur_left")
    isocenter_ras("Markup point", ct_node, markup=point_list_node)     # its first control point
    isocenter_ras("CT centre", ct_node)

Label maps whose colour table is one of Slicer's defaults are read as TotalSegmentator v1 label maps: names,
colours and SNOMED CT terminology of the bones come from ``Resources/ColorTables/TotalSegmentatorV1Bones.csv``
(a Slicer colour table file); other values are ignored. A label map with its own colour table keeps it.

Rendering::

    sim = XraySimScene(scene)
    sim.set_geometry(views.from_preset("chest-pa", volume_from_node(ct_node).center_ras, size=512))
    result = sim.render(ct_node, seg_node)            # DrrResult; creates or updates the drr/labels nodes
    result = sim.render(ct_node, seg_node, size=128)  # preview while dragging (same detector, fewer pixels)
"""

from __future__ import annotations

from .scene_export import (SceneExportJob, _unique_names, _write_volume_nrrd, export_training_set, physics_preset_for,
                           physics_preset_names, prepare_scene_export)
from .scene_inputs import (ANATOMIC_CONTEXT, ISOCENTER_MODES, RESOURCES, TERMINOLOGY_CONTEXT, TERMINOLOGY_TAG,
                           TOTALSEGMENTATOR_TABLE, Code, LabelTableEntry, classes_for_labelmap,
                           classes_from_color_node, classes_from_segmentation, is_default_color_node,
                           isocenter_ras, labels_from_node, labels_from_segmentation, markup_point_ras,
                           read_label_table, SegmentNameCache, segment_center_ras, segment_ids, segment_names, terminology_entry,
                           terminology_for_classes, volume_from_node)
from .scene_nodes import _image_array, _image_data, _nodes, array_from_vtk_matrix, node_transaction, \
    vtk_matrix_from_array, world_matrix
from .scene_outputs import LABELS_3D_OFFSET_MM, LABELS_3D_OPACITY, RENDER_LOCK, RenderBusy, XraySimScene, \
    labels_3d_polydata, radiograph_window
from .scene_rig import (BASE_GEOMETRY_ATTRIBUTE, BEAM_COLOR, NODE_CLASSES, NODE_NAMES, QUANTITY_ATTRIBUTE,
                        RIG_ATTRIBUTE, ROLE_ATTRIBUTE, ROLES, XrayRig, frustum_polydata, slice_to_ras_for_detector)

__all__ = [
    "ANATOMIC_CONTEXT", "BASE_GEOMETRY_ATTRIBUTE", "BEAM_COLOR", "Code", "ISOCENTER_MODES", "LABELS_3D_OFFSET_MM",
    "LABELS_3D_OPACITY", "LabelTableEntry", "NODE_CLASSES", "NODE_NAMES", "QUANTITY_ATTRIBUTE", "RENDER_LOCK",
    "RESOURCES", "RenderBusy", "SceneExportJob", "prepare_scene_export",
    "RIG_ATTRIBUTE", "ROLES", "ROLE_ATTRIBUTE", "SegmentNameCache", "TERMINOLOGY_CONTEXT", "TERMINOLOGY_TAG", "TOTALSEGMENTATOR_TABLE",
    "XrayRig", "XraySimScene", "array_from_vtk_matrix", "classes_for_labelmap", "classes_from_color_node",
    "classes_from_segmentation", "export_training_set", "frustum_polydata", "is_default_color_node",
    "isocenter_ras", "labels_3d_polydata", "labels_from_node", "labels_from_segmentation", "markup_point_ras",
    "node_transaction", "physics_preset_for", "physics_preset_names", "radiograph_window", "read_label_table",
    "segment_center_ras", "segment_ids", "segment_names", "slice_to_ras_for_detector", "terminology_entry",
    "terminology_for_classes", "volume_from_node", "vtk_matrix_from_array", "world_matrix",
    "_image_array", "_image_data", "_nodes", "_unique_names", "_write_volume_nrrd",
]
