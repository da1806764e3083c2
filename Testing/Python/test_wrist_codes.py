"""SNOMED CT codes of the bundled wrist model's bones (issue 13), checked against DICOM PS3.16 as pydicom ships it.

Only the codes that could be verified are on the card (radius, ulna, scaphoid); the other seven carpals must stay
uncoded (no invented code), so their DICOM SEG segments and Slicer terminology fall back to the generic "Bone".
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "Resources" / "Models" / "wrist"
# Class name -> keyword of the concept in pydicom's DICOM PS3.16 dictionary (codes.SCT.<keyword>).
VERIFIED = {"radius": "RadiusBone", "ulna": "Ulna", "scaphoid": "Scaphoid"}


@pytest.fixture(scope="module")
def card() -> dict:
    from XraySegInferLib.package import load_package

    if not (BUNDLED / "model.json").is_file():
        pytest.skip("no bundled model in Resources/Models/wrist (run 'make train-wrist')")
    return load_package(BUNDLED).card  # manifest and weights hash checked


def test_wrist_card_codes_are_dicom_ps316_concepts(card):
    from pydicom.sr.codedict import codes

    coded = {c["name"]: c["snomed"] for c in card["classes"] if "snomed" in c}
    assert set(coded) == set(VERIFIED)
    for name, keyword in VERIFIED.items():
        reference = getattr(codes.SCT, keyword)
        kind = coded[name]["type"]
        assert (kind["CodingSchemeDesignator"], kind["CodeValue"], kind["CodeMeaning"]) == (
            reference.scheme_designator, reference.value, reference.meaning)
        assert coded[name]["category"]["CodeValue"] == "91723000"  # Anatomical structure
        assert "modifier" not in coded[name]  # the card's bones carry no laterality


def test_wrist_segments_carry_the_codes(card):
    from XraySegInferLib.dicom_seg import DEFAULT_TYPE, segment_descriptions
    from XraySegInferLib.package import snomed_for
    from XraySegInferLib.runner import terminology_tag

    names = [c["name"] for c in card["classes"]]
    descriptions = segment_descriptions(names, [c["color"] for c in card["classes"]], card)
    assert [d.SegmentLabel for d in descriptions] == names
    for cls, description in zip(card["classes"], descriptions):
        kind = description.SegmentedPropertyTypeCodeSequence[0]
        expected = cls.get("snomed", {}).get("type", DEFAULT_TYPE)
        assert (kind.CodeValue, kind.CodeMeaning) == (expected["CodeValue"], expected["CodeMeaning"])
        tag = terminology_tag(cls.get("snomed"))
        assert (tag is not None and f"SCT^{expected['CodeValue']}^" in tag) == (cls["name"] in VERIFIED)
        # What 'xrayseg train' writes for the name is what the card holds: a retrain keeps the codes.
        assert snomed_for(cls["name"]) == cls.get("snomed")
