"""Shoulder pose of virtual patients (issue 10): a girdle turned about its sternoclavicular joint, measured on a
phantom whose clavicles slope up by 30 degrees; the trunk far from it stays; off by default, reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import grid_volume, voxel_centers_ras
from XraySegSimLib.shoulder_pose import shoulder_field
from XraySegSimLib.virtual_patient import VirtualPatientRanges, draw_patient, patient_rng, warp_packed

CLASSES = ["clavicles", "scapulae", "ribs"]
SLOPE_DEG = 30.0
PIVOT_X = 12.0


def girdle_phantom(slices: int = 70):
    """Packed words (HU, class) of a trunk with two clavicle rods rising laterally by SLOPE_DEG from
    (+-PIVOT_X, 0, 0), a scapula block at each lateral end and a rib block low in the middle (2 mm voxels);
    with fewer ``slices`` the CT's top face cuts the clavicles (46: at 45 mm, their lateral ends)."""
    volume = grid_volume(np.full((slices, 24, 150), -1000.0, np.float32), 2.0)
    c = voxel_centers_ras(volume)
    hu = np.where(np.abs(c[..., 0]) < 140, 30.0, -1000.0)
    classes = np.zeros(hu.shape, np.uint32)
    for sign in (1.0, -1.0):
        direction = np.array([sign * np.cos(np.radians(SLOPE_DEG)), 0.0, np.sin(np.radians(SLOPE_DEG))])
        rel = c - np.array([sign * PIVOT_X, 0.0, 0.0])
        t = rel @ direction
        rod = (t >= 0) & (t <= 90) & (np.linalg.norm(rel - t[..., None] * direction, axis=-1) <= 6)
        end = np.array([sign * PIVOT_X, 0, 0]) + 90 * direction + np.array([sign * 10.0, 0, -25.0])
        block = np.all(np.abs(c - end) <= (20, 8, 25), axis=-1)
        hu[rod | block], classes[rod], classes[block] = 800.0, 1, 2
    ribs = (np.abs(c[..., 0]) < 30) & (np.abs(c[..., 2] + 62) < 4)
    hu[ribs], classes[ribs] = 600.0, 3
    packed = (classes << 16) | hu.astype(np.int16).view(np.uint16).astype(np.uint32)
    return volume, c, packed


def values(shoulder_deg=None) -> dict:
    v = {"index": 0, "scale_ras": [1.0, 1.0, 1.0], "soft_tissue": 1.0, "bone_density": 1.0, "deform_mm": 0.0,
         "deform_spacing_mm": 80.0, "taper_mm": 40.0, "field_seed": 0, "blur_fwhm_mm": 0.0}
    if shoulder_deg is not None:
        v["shoulder_deg"] = list(shoulder_deg)
    return v


def slope_deg(c: np.ndarray, mask: np.ndarray, sign: float) -> float:
    """Slope (lateral end up, degrees) of the principal axis of a side's labelled voxels."""
    points = c[mask & (c[..., 0] * sign > 0)][:, [0, 2]]
    points = points - points.mean(0)
    axis = np.linalg.eigh(points.T @ points)[1][:, 1]
    return float(np.degrees(np.arctan2(abs(axis[1]), abs(axis[0]))) * np.sign(axis[0] * axis[1] * sign))


@pytest.mark.parametrize("angles", [(-20.0, -12.0), (10.0, 0.0)])
def test_each_girdle_turns_about_its_clavicle_and_the_trunk_stays(angles):
    volume, c, packed = girdle_phantom()
    v = values(angles)
    warped = warp_packed(packed, volume.ijk_to_ras, v, class_names=CLASSES)
    before, after = packed >> 16, warped >> 16
    for sign, angle in zip((1.0, -1.0), angles):
        turned = slope_deg(c, after == 1, sign) - slope_deg(c, before == 1, sign)
        # the rotation times a weight <= 1 (thin rods fade): most of the angle, never more, the right way
        assert 0.6 * abs(angle) - 0.5 <= turned * np.sign(angle or 1) <= abs(angle) + 1.0, (sign, angle, turned)
    medial = lambda labels, sign: c[(labels == 1) & (c[..., 0] * sign > 0)][:, 0].min() * sign  # noqa: E731
    assert abs(medial(after, 1.0) - medial(before, 1.0)) <= 2.0  # the pivot end stays (one voxel)
    ribs_before, ribs_after = c[before == 3].mean(0), c[after == 3].mean(0)
    assert np.linalg.norm(ribs_after - ribs_before) < 2.0  # 60 mm below the pivot, far from the girdle
    assert v["shoulder_deg_applied"] == {"right": angles[0], "left": angles[1]}
    assert v["shoulder_jacobian_min"] > 0  # one-to-one: no tissue folded
    np.testing.assert_allclose(v["shoulder_pivots_ras"]["right"][0], PIVOT_X, atol=6.0)  # one cell


def test_a_girdle_cut_by_a_face_is_flagged_and_one_inside_only_stretches():
    """Inside the CT the blend stretches a lowered clavicle a little (the weight fades along it); a girdle that
    the top face cuts is smeared from its section there, so the sidecar says so."""
    volume, _, packed = girdle_phantom()
    v = values((-20.0, -20.0))
    warped = warp_packed(packed, volume.ijk_to_ras, v, class_names=CLASSES)
    before, after = (np.count_nonzero((words >> 16) == 1) for words in (packed, warped))
    assert before <= after <= 1.15 * before, (before, after)
    assert v["shoulder_girdle_at_face"] == {"right": False, "left": False}
    volume, _, packed = girdle_phantom(slices=46)
    v = values((-20.0, -20.0))
    warp_packed(packed, volume.ijk_to_ras, v, class_names=CLASSES)
    assert v["shoulder_girdle_at_face"] == {"right": True, "left": True}


def test_off_by_default_and_without_a_clavicle_nothing_moves():
    volume, _, packed = girdle_phantom()
    assert "shoulder_deg" not in draw_patient(VirtualPatientRanges(), patient_rng(0, "ct", 0))
    plain = warp_packed(packed, volume.ijk_to_ras, values())
    np.testing.assert_array_equal(plain, packed)  # no deformation at all: the identity
    np.testing.assert_array_equal(warp_packed(packed, volume.ijk_to_ras, values((-20, -20)),
                                              class_names=["bone_a", "scapulae", "ribs"]), packed)
    assert shoulder_field(packed, volume.ijk_to_ras, ["bone_a", "scapulae", "ribs"], (-20.0, -20.0)) is None


def test_shoulder_angles_are_drawn_per_side_from_the_seed_after_the_other_values():
    ranges = VirtualPatientRanges(shoulder_deg=(-15.0, 5.0))
    first, again = (draw_patient(ranges, patient_rng(3, "ct", 2), 2) for _ in range(2))
    assert first == again and first["shoulder_deg"][0] != first["shoulder_deg"][1]
    assert all(-15.0 <= a <= 5.0 for a in first["shoulder_deg"])
    plain = draw_patient(VirtualPatientRanges(), patient_rng(3, "ct", 2), 2)
    assert {k: first[k] for k in plain} == plain  # the other values of a seed do not change with it
    with pytest.raises(Exception, match="--shoulder-range"):
        VirtualPatientRanges(shoulder_deg=(-40.0, 0.0))
