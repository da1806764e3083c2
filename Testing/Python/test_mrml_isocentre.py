"""XraySegSim's isocentre in a real MRML scene: on a markup point, on the centre of a segment of a segmentation or
of a label of a label map; each lies on the principal ray."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402

from XraySegSimLib import InputError, views  # noqa: E402
from XraySegSimLib.mrml_adapter import volume_from_node, vtk_matrix_from_array  # noqa: E402
from test_mrml_adapter import (  # noqa: E402,F401 (inputs, sim: fixtures)
    add_volume, ct_ijk_to_ras, inputs, phantom_arrays, sim)


# ---- isocentre on a markup point or a segment -------------------------------------------------------------------


def principal_point(geometry) -> np.ndarray:
    """(i0, j0) where the principal ray meets the detector, read off P: P[:, :3] = K R and R's third row
    is the unit principal direction, so K R n = K e3 = (i0, j0, 1)."""
    p = geometry.projection_matrix()
    n = p[2, :3]
    assert np.linalg.norm(n) == pytest.approx(1.0)
    return np.array([p[0, :3] @ n, p[1, :3] @ n])


def aim_and_check(sim, ct, point, lao=25.0, cra=-10.0):
    """Place a C-arm view on ``point`` and check the principal ray passes through it (< 0.01 px)."""
    sim.set_geometry(views.from_preset("carm-ap", point, size=(64, 48), source_to_detector_mm=500.0,
                                       source_to_isocenter_mm=320.0, detector_mm=(192.0, 144.0),
                                       lao_deg=lao, cranial_deg=cra))
    geometry = sim.geometry()
    error = np.abs(geometry.project(point) - principal_point(geometry)).max()
    assert error < 0.01, f"the chosen point projects {error:.4f} px off the principal point"
    return geometry


def test_isocentre_on_a_markup_point_lies_on_the_principal_ray(app, inputs, sim):
    from XraySegSimLib.mrml_adapter import isocenter_ras
    ct, _ = inputs
    markup = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Aim")
    markup.AddControlPoint(vtk.vtkVector3d(12.0, -7.0, 9.0), "aim")
    shift = np.eye(4)
    shift[:3, 3] = [3.0, 4.0, -5.0]  # a parent transform on the markup is honoured
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(vtk_matrix_from_array(shift))
    markup.SetAndObserveTransformNodeID(transform.GetID())
    point = isocenter_ras("Markup point", ct, markup=markup)
    np.testing.assert_allclose(point, [15.0, -3.0, 4.0], atol=1e-9)
    geometry = aim_and_check(sim, ct, point)
    np.testing.assert_allclose(geometry.isocenter, point, atol=1e-9)
    np.testing.assert_allclose(isocenter_ras("CT centre", ct), volume_from_node(ct).center_ras)
    empty = app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "NoPoints")
    with pytest.raises(InputError, match="NoPoints: has no control point 1; place a point first"):
        isocenter_ras("Markup point", ct, markup=empty)
    with pytest.raises(InputError, match="choose a markup point list"):
        isocenter_ras("Markup point", ct, markup=None)


def test_isocentre_on_a_segment_centre_lies_on_the_principal_ray(app, inputs, sim):
    from XraySegSimLib.mrml_adapter import isocenter_ras, segment_names
    ct, segmentation = inputs
    _, masks = phantom_arrays()
    k, j, i = np.nonzero(masks[1])
    expected = ct_ijk_to_ras()[:3, :3] @ [i.mean(), j.mean(), k.mean()] + ct_ijk_to_ras()[:3, 3]
    assert segment_names(segmentation) == ["bone_a", "bone_b"]
    centre = isocenter_ras("Segment centre", ct, labels_node=segmentation, segment="bone_b")
    np.testing.assert_allclose(centre, expected, atol=1e-6)
    aim_and_check(sim, ct, centre)
    # By segment ID too; a parent transform on the segmentation moves its centre.
    move = np.eye(4)
    move[:3, :3] = views.carm_rotation(10, 0)
    move[:3, 3] = [4.0, 0.0, -2.0]
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(vtk_matrix_from_array(move))
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(1)
    moved = isocenter_ras("Segment centre", ct, labels_node=segmentation, segment=segment_id)
    np.testing.assert_allclose(moved, move[:3, :3] @ expected + move[:3, 3], atol=1e-6)
    aim_and_check(sim, ct, moved, lao=-40.0, cra=20.0)
    with pytest.raises(InputError, match="Bones: has no segment 'tibia'; choose one of: bone_a, bone_b"):
        isocenter_ras("Segment centre", ct, labels_node=segmentation, segment="tibia")
    segmentation.GetSegmentation().AddEmptySegment("hollow", "hollow")
    with pytest.raises(InputError, match="the segment 'hollow' is empty"):
        isocenter_ras("Segment centre", ct, labels_node=segmentation, segment="hollow")
    with pytest.raises(InputError, match="choose the segment"):
        isocenter_ras("Segment centre", ct, labels_node=segmentation, segment="")


def totalsegmentator_labelmap(app):
    """The phantom's bones as a TotalSegmentator v1 label map (73 clavicula_left, 74 clavicula_right), with
    the colour table Slicer gives a new label map."""
    _, masks = phantom_arrays()
    values = (73 * masks[0] + 74 * masks[1] * (1 - masks[0])).astype(np.int16)
    return add_volume(app.scene, values, ct_ijk_to_ras(), "TSLabels", "vtkMRMLLabelMapVolumeNode"), masks


def test_isocentre_on_a_label_of_a_label_map(app, inputs, sim):
    from XraySegSimLib.mrml_adapter import isocenter_ras, segment_names
    ct, _ = inputs
    labels, masks = totalsegmentator_labelmap(app)
    assert segment_names(labels) == ["clavicula_left", "clavicula_right"]
    k, j, i = np.nonzero(masks[0])
    expected = ct_ijk_to_ras()[:3, :3] @ [i.mean(), j.mean(), k.mean()] + ct_ijk_to_ras()[:3, 3]
    for key in ("clavicula_left", 73, "73"):
        np.testing.assert_allclose(isocenter_ras("Segment centre", ct, labels_node=labels, segment=key), expected,
                                   atol=1e-6)
    aim_and_check(sim, ct, expected)
    with pytest.raises(InputError, match="TSLabels: has no label 'femur_left'"):
        isocenter_ras("Segment centre", ct, labels_node=labels, segment="femur_left")
