"""XraySegSim's output segments in a real MRML scene keep the inputs' names, colours and SNOMED CT terminology
(segmentations, TotalSegmentator label maps, label maps with their own colour table); the shipped bone colour
table is a Slicer colour table matching the bone classes."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from XraySegSimLib import LabelClasses  # noqa: E402
from test_mrml_adapter import inputs, sim  # noqa: E402,F401 (inputs, sim: fixtures)
from test_mrml_isocentre import totalsegmentator_labelmap  # noqa: E402


# ---- terminology ---------------------------------------------------------------------------------------------


CLAVICLE_LEFT = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
                 "~SCT^51299004^Clavicle~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^")


def output_segments(sim):
    out = sim.node("labels").GetSegmentation()
    return [out.GetNthSegment(i) for i in range(out.GetNumberOfSegments())]


def test_output_segments_copy_the_input_segments_terminology(inputs, sim):
    ct, segmentation = inputs
    humerus = CLAVICLE_LEFT.replace("51299004^Clavicle", "85050009^Humerus").replace("7771000^Left", "24028007^Right")
    for index, tag in enumerate((CLAVICLE_LEFT, humerus)):
        segmentation.GetSegmentation().GetNthSegment(index).SetTerminology(tag)
    sim.render(ct, segmentation)
    inputs_ = [segmentation.GetSegmentation().GetNthSegment(i) for i in range(2)]
    for source, out in zip(inputs_, output_segments(sim)):
        assert out.GetName() == source.GetName()
        np.testing.assert_allclose(out.GetColor(), source.GetColor(), atol=1e-9)
        assert out.GetTerminology() == source.GetTerminology()
    assert [s.GetTerminology() for s in output_segments(sim)] == [CLAVICLE_LEFT, humerus]


def test_totalsegmentator_label_map_gets_names_colours_and_terminology_from_the_table(app, inputs, sim):
    from XraySegSimLib.mrml_adapter import read_label_table
    ct, _ = inputs
    labels, _ = totalsegmentator_labelmap(app)
    assert labels.GetDisplayNode().GetColorNode().GetSingletonTag()  # Slicer's default table, not the user's
    result = sim.render(ct, labels)
    table = read_label_table()
    assert result.classes.names == ["clavicula_left", "clavicula_right"]
    segments = output_segments(sim)
    for value, segment in zip((73, 74), segments):
        assert segment.GetName() == table[value].name
        np.testing.assert_allclose(segment.GetColor(), table[value].color, atol=1e-9)
        assert segment.GetTerminology() == table[value].terminology
    assert segments[0].GetTerminology() == CLAVICLE_LEFT
    assert segments[1].GetTerminology() == CLAVICLE_LEFT.replace("SCT^7771000^Left", "SCT^24028007^Right")


def test_label_map_with_its_own_colour_table_keeps_its_names_colours_and_terminology(app, inputs, sim):
    ct, _ = inputs
    labels, _ = totalsegmentator_labelmap(app)
    colors = app.scene.AddNewNodeByClass("vtkMRMLColorTableNode", "MyBones")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(75)
    colors.SetColor(73, "left collarbone", 0.5, 0.25, 0.75, 1)
    colors.SetColor(74, "right collarbone", 0.25, 0.75, 0.5, 1)
    colors.SetTerminology(73, "SCT", "123037004", "Anatomical Structure", "SCT", "51299004", "Clavicle",
                          "SCT", "7771000", "Left")
    labels.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    sim.render(ct, labels)
    segments = output_segments(sim)
    assert [s.GetName() for s in segments] == ["left collarbone", "right collarbone"]
    np.testing.assert_allclose(segments[0].GetColor(), (0.5, 0.25, 0.75), atol=1 / 255)
    assert segments[0].GetTerminology() == CLAVICLE_LEFT
    assert segments[1].GetTerminology() == slicer.vtkSegment().GetTerminology()  # none given: Slicer's default


def test_shipped_bone_table_is_a_slicer_colour_table_matching_the_bone_classes(app):
    """The table covers every TotalSegmentator v1 bone with the CLI's names and colours, Slicer reads it as a
    colour table with the same terminology, and every coded entry is an Anatomical Structure in SNOMED CT."""
    from XraySegSimLib.mrml_adapter import TOTALSEGMENTATOR_TABLE, read_label_table
    table = read_label_table()
    bones = LabelClasses.totalsegmentator_bones()
    assert [(e.value, e.name) for e in table.values()] == [(c.values[0], c.name) for c in bones.classes]
    for cls in bones.classes:
        np.testing.assert_allclose(table[cls.values[0]].color, cls.color, atol=0.5 / 255 + 1e-4)
    coded = {v: e.terminology for v, e in table.items() if e.terminology}
    assert len(coded) >= 58 and {26, 77, 78}.isdisjoint(coded)  # S1 and the hip bones are left uncoded
    assert all("~SCT^123037004^Anatomical Structure~SCT^" in t for t in coded.values())
    assert "~SCT^113197003^" not in "".join(coded.values())  # ribs carry their own number's code
    assert "SCT^48535007^First rib~SCT^24028007^Right" in coded[104]  # rib_right_1
    assert "SCT^56873002^Sternum~^^" in coded[116]
    colors = app.scene.AddNewNodeByClass("vtkMRMLColorTableNode", "Shipped")
    storage = slicer.vtkMRMLColorTableStorageNode()
    storage.SetFileName(str(TOTALSEGMENTATOR_TABLE))
    assert storage.ReadData(colors)
    for value, entry in table.items():
        assert colors.GetColorName(value) == entry.name
        if entry.terminology:
            assert entry.terminology.split("~")[1:4] == colors.GetTerminologyAsString(value).split("~")[1:4]
