"""The CT couch is not the patient: its pad, shell and rails, cut by the grid's posterior face, add no ignored pixel
(issue 10, item 4). On the full chest CT of the TotalSegmentator sdist they had put 70-100 % of every PA view under
the ignore label."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import grid_volume, voxel_centers_ras
from XraySegSimLib import views
from XraySegSimLib.truncation import CutFaces, patient_parts


def patient_on_couch(body_length_mm: float, couch: bool):
    """An elliptic body along S (2 mm voxels; posterior = low j) lying on a foam pad (-400 HU) that reaches the
    posterior face, on a couch shell and two rails (carbon fibre, 100-300 HU) along that face, apart from the body."""
    volume = grid_volume(np.full((40, 50, 60), -1000.0, np.float32), 2.0)
    c = voxel_centers_ras(volume)
    x, y, z = c[..., 0], c[..., 1], c[..., 2]
    body = ((x / 40) ** 2 + ((y - 5) / 30) ** 2 < 1) & (np.abs(z) < body_length_mm / 2)
    volume.array[body] = 40.0
    volume.array[body & (np.abs(x) < 6) & (np.abs(y + 15) < 6)] = 700.0  # a spine
    if couch:
        pad = (np.abs(x) < 30) & (y < -15) & (y > -46) & ~body
        volume.array[pad] = -400.0
        volume.array[(np.abs(x) < 55) & (y < -46)] = 100.0  # the shell: the two lowest rows of voxels
        volume.array[(np.abs(np.abs(x) - 52) < 3) & (y < -40)] = 300.0  # the rails
    return volume


def pa_view(volume):
    return views.from_preset("chest-pa", volume.center_ras, size=(64, 64), detector_mm=(300, 300))


def test_a_whole_patient_on_a_couch_has_no_cut_face():
    volume = patient_on_couch(60.0, couch=True)
    faces = CutFaces(volume.array, volume.ras_to_ijk, packed=False)
    assert faces.cut_voxels == dict.fromkeys(faces.cut_voxels, 0)
    assert not faces.mask(pa_view(volume)).any()
    # The couch is there and reaches the face: counted as body (foam at -500 HU, as before) it is the patient's.
    before = CutFaces(volume.array, volume.ras_to_ijk, body_hu=-500, packed=False)
    assert before.cut_voxels["j_low"] > 500 and before.mask(pa_view(volume)).mean() > 0.3


def test_the_couch_adds_nothing_to_a_patient_cut_by_the_scan():
    """The body runs through both axial end faces: the ignored pixels are those of the same CT without a couch."""
    on_couch, alone = patient_on_couch(200.0, couch=True), patient_on_couch(200.0, couch=False)
    view = pa_view(alone)
    expected = CutFaces(alone.array, alone.ras_to_ijk, packed=False).mask(view)
    assert 0.2 < expected.mean() < 0.9
    np.testing.assert_array_equal(CutFaces(on_couch.array, on_couch.ras_to_ijk, packed=False).mask(view), expected)


@pytest.mark.parametrize("fraction, kept", [(0.2, 2), (0.7, 1)])
def test_patient_parts_keeps_the_largest_part_and_parts_of_a_similar_size(fraction, kept):
    mask = np.zeros((10, 20, 20), bool)
    mask[2:8, 2:8, 2:8] = True  # 216 voxels: the trunk
    mask[2:8, 2:8, 12:16] = True  # 144: an arm apart from it
    mask[2:4, 15:18, 2:4] = True  # 12: a rail
    parts = patient_parts(mask, fraction=fraction)
    assert parts.sum() == (216, 360)[kept - 1] and not parts[2:4, 15:18, 2:4].any()
    labelled = np.zeros_like(mask)
    labelled[3, 16, 3] = True  # a label in the small part: it is anatomy, whatever its size
    assert patient_parts(mask, labelled, fraction=fraction)[2:4, 15:18, 2:4].all()


def test_a_labelled_arm_apart_from_the_trunk_stays_body():
    """An arm beside the trunk, both cut by the axial faces, the arm smaller than a fifth of the trunk: its section
    counts when it holds a label (the humerus), as the trunk's does."""
    volume = patient_on_couch(200.0, couch=True)
    c = voxel_centers_ras(volume)
    arm = (np.hypot(c[..., 0] - 52, c[..., 1] - 5) < 6)
    volume.array[arm] = 40.0
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[arm & (np.hypot(c[..., 0] - 52, c[..., 1] - 5) < 3)] = 7
    trunk_only = CutFaces(volume.array, volume.ras_to_ijk, packed=False).cut_voxels["k_low"]
    with_arm = CutFaces(volume.array, volume.ras_to_ijk, labels=labels, packed=False).cut_voxels["k_low"]
    assert with_arm - trunk_only == int(arm[0].sum()) > 0
