"""Label transfer: refinement and quality figures on small exact cases, and registration on a labelled analytic
phantom warped by a known smooth field (the transfer must recover the warped labels)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write_image
from XraySegInferLib.entry import main
from XraySegSimLib.label_refine import bone_coverage, bone_mask, dice, refine_labels
from XraySegSimLib.label_transfer import TransferSettings, transfer_labels

SPACING = 3.0
SHAPE = (60, 56, 64)  # k, j, i: 180 x 168 x 192 mm
# keep_hu halfway between the phantom's soft tissue (40) and bone (700): where its warped label edges are
FAST = TransferSettings(z_search_mm=24.0, affine_iterations=60, bspline_mesh_mm=45.0, bspline_iterations=15,
                        sampling_fraction=0.25, bspline_sampling_fraction=0.05, keep_hu=370.0, bone_hu=370.0)


def test_bone_coverage_counts_labelled_bone_voxels_exactly():
    ct = np.full((4, 5, 6), 40.0)
    ct[1, 1, 1:6] = 700.0  # five bone voxels
    ct[2, 2, 1:6] = 250.0  # five more, just above 200 HU
    ct[3, 3, 3] = 190.0  # below the threshold: not bone
    labels = np.zeros(ct.shape, np.uint8)
    labels[1, 1, 1:4] = 3  # three labelled bone voxels
    labels[2, 2, 5] = 7  # one more
    labels[0, 0, 0] = 5  # a label on soft tissue does not count
    labels[3, 3, 3] = 5
    assert bone_coverage(labels, ct) == pytest.approx(4 / 10)
    within = np.zeros(ct.shape, bool)
    within[1] = True  # only the first row of bone
    assert bone_coverage(labels, ct, within=within) == pytest.approx(3 / 5)
    assert bone_coverage(labels, ct, bone_hu=500.0) == pytest.approx(3 / 5)
    assert dice(labels == 3, ct > 600) == pytest.approx(2 * 3 / (3 + 5))


def test_refinement_keeps_bone_fills_marrow_and_grows_nearest_label():
    ct = np.full((20, 20, 20), 30.0)
    ct[4:12, 4:12, 4:12] = 800.0  # a cortical box ...
    ct[6:10, 6:10, 6:10] = 60.0  # ... with marrow inside, below the keep threshold
    ct[4:12, 4:12, 13:16] = 800.0  # a second bone, 1 voxel apart
    labels = np.zeros(ct.shape, np.uint8)
    labels[3:12, 4:12, 4:11] = 1  # first bone, missing its last column, one slice too far (on soft tissue)
    labels[4:12, 4:12, 14:16] = 2  # second bone, missing its first column
    spacing = (1.0, 1.0, 1.0)
    bone = bone_mask(ct, spacing, keep_hu=150.0)
    assert bone[6:10, 6:10, 6:10].all(), "enclosed marrow counts as bone"
    assert not bone[0].any()
    refined = refine_labels(labels, ct, spacing, keep_hu=150.0, grow_mm=2.0)
    assert not refined[3].any(), "labels on soft tissue are removed"
    assert (refined[4:12, 4:12, 4:12] == 1).all(), "the missing column and the marrow get the first label"
    assert (refined[4:12, 4:12, 13:16] == 2).all(), "the second bone's missing column gets its own label"
    far = refine_labels(labels, ct, spacing, keep_hu=150.0, grow_mm=0.0)
    assert not far[4:12, 4:12, 11].any() and not far[4:12, 4:12, 13].any(), "no growth without grow_mm"


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    """A chest-like phantom: body, two lungs, five vertebrae of growing size, a sternum, two ribs-like bars,
    two humeri; labels 1-5 vertebrae, 6 sternum, 7/8 bars, 9/10 humeri. Array [k, j, i] with z = k."""
    k, j, i = np.meshgrid(*[np.arange(n) * SPACING for n in SHAPE], indexing="ij")
    z, y, x = k - 90.0, j - 84.0, i - 96.0  # mm from the centre; y grows posterior
    ct = np.full(SHAPE, -1000.0)
    ct[(x / 80) ** 2 + (y / 60) ** 2 < 1] = 40.0
    for side in (-1, 1):
        ct[((x - side * 38) / 26) ** 2 + ((y + 5) / 34) ** 2 + (z / 75) ** 2 < 1] = -800.0
    labels = np.zeros(SHAPE, np.uint8)
    for level in range(5):
        centre, radius = -64.0 + level * 30.0, 12.0 + 1.5 * (4 - level)
        body = ((x ** 2 + (y - 38) ** 2) < radius ** 2) & (abs(z - centre) < 11)
        labels[body] = level + 1
    labels[(abs(x) < 9) & (abs(y + 48) < 6) & (abs(z - 10) < 45)] = 6
    for value, side in ((7, -1), (8, 1)):
        labels[(abs(x - side * 45) < 20) & (abs(y - 40) < 8) & (abs(z - 40 + side * 8) < 8)] = value
    for value, side in ((9, -1), (10, 1)):
        labels[((x - side * 70) ** 2 + (y - 5) ** 2 < 9 ** 2) & (z > 20)] = value
    ct[labels > 0] = 700.0
    return ct.astype(np.float32), labels


def _warp(array: np.ndarray, order: int) -> np.ndarray:
    """A known smooth deformation: 4% scaling, 3 degree rotation, 6 mm shift, and a 4 mm sine field."""
    from scipy import ndimage

    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij"))
    centre = (np.array(SHAPE, float) - 1)[:, None, None, None] / 2
    angle = np.deg2rad(3.0)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    source = np.einsum("ab,b...->a...", rotation / 1.04, grid - centre) + centre
    source[0] += 2.0 + (4.0 / SPACING) * np.sin(2 * np.pi * grid[2] / SHAPE[2])
    source[2] += (4.0 / SPACING) * np.sin(2 * np.pi * grid[0] / SHAPE[0])
    return ndimage.map_coordinates(array, source, order=order, mode="nearest" if order == 0 else "constant",
                                   cval=float(array.min()))


def _ijk_to_ras() -> np.ndarray:
    m = np.diag([SPACING, SPACING, SPACING, 1.0])
    m[:3, 3] = [-96.0, -84.0, 30.0]
    return m


@pytest.mark.slow
def test_transfer_recovers_labels_of_a_warped_phantom(tmp_path):
    ct, labels = _phantom()
    # a "heart" (label 11) in soft tissue, carried along unrefined (for export --suppress-contrast); it is in the
    # label map only, so the registration is the same as without it
    k, j, i = np.meshgrid(*[np.arange(n) * SPACING for n in SHAPE], indexing="ij")
    heart = ((i - 110.0) ** 2 + (j - 70.0) ** 2 + (k - 100.0) ** 2 < 22.0 ** 2) & (labels == 0)
    labels[heart] = 11
    target_ct, target_labels = _warp(ct, 1), _warp(labels, 0)
    assert dice(labels > 0, target_labels > 0) < 0.7, "the warp is large enough to matter"
    paths = [write_image(a, _ijk_to_ras(), tmp_path / f"{n}.nii.gz")
             for a, n in ((ct, "atlas"), (labels, "atlas_labels"), (target_ct, "target"))]
    steps = []
    result = transfer_labels(*paths, label_values=range(1, 11), settings=FAST, carry_values=[11],
                             progress=lambda fraction, message: steps.append(fraction))
    import SimpleITK as sitk

    moved = sitk.GetArrayFromImage(result.labels)
    scores = {v: dice(moved == v, target_labels == v) for v in range(1, 11)}
    assert min(scores.values()) >= 0.85, (scores, result.report["seconds"])
    assert dice(moved == 11, target_labels == 11) >= 0.8 and result.report["carried_values"] == [11]
    assert not (moved == 11)[target_ct > 370].any(), "a carried label never takes a bone voxel's place"
    assert steps[-1] == 1.0 and steps == sorted(steps)
    assert result.report["bone_coverage"] >= 0.95
    assert result.report["moved_labels_on_bone"] > 0.8 and result.report["warnings"] == []


@pytest.mark.slow
def test_transfer_with_a_truncated_atlas_labels_only_its_field_of_view(tmp_path):
    """The atlas ends above the lowest two vertebrae (its lower part is scanner padding, -2048 HU, as in
    a truncated scan); the target shows the whole phantom."""
    ct, labels = _phantom()
    target_ct, target_labels = _warp(ct, 1), _warp(labels, 0)
    atlas_ct, atlas_labels = ct.copy(), labels.copy()
    atlas_ct[:23], atlas_labels[:23] = -2048.0, 0  # the lowest 69 mm of 180: vertebrae 1 and 2 are outside
    paths = [write_image(a, _ijk_to_ras(), tmp_path / f"{n}.nii.gz")
             for a, n in ((atlas_ct, "atlas"), (atlas_labels, "atlas_labels"), (target_ct, "target"))]
    out = tmp_path / "out"
    status = main(["label-transfer", "--atlas-ct", str(paths[0]), "--atlas-labels", str(paths[1]), "--ct",
                   str(paths[2]), "--out", str(out), "--labels", ",".join(map(str, range(1, 11))),
                   "--bspline-iterations", "15", "--keep-hu", "370", "--bone-hu", "370"])
    assert status == 0
    assert {p.name for p in out.iterdir()} == {"labels.nii.gz", "transfer.json"}  # no temporary leftovers
    import SimpleITK as sitk

    moved = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))
    report = json.loads((out / "transfer.json").read_text())
    assert not (moved == 1).any() and not (moved == 2).any(), "nothing outside the atlas's field of view"
    scores = {v: dice(moved == v, target_labels == v) for v in (4, 5, 7, 8, 9, 10)}  # wholly in the atlas
    assert min(scores.values()) >= 0.85, scores
    assert 0.5 < report["target_fraction_in_atlas_view"] < 0.95
    assert report["bone_coverage_in_atlas_view"] > report["bone_coverage"]


def test_label_transfer_cli_rejects_a_label_map_on_another_grid(tmp_path, capsys):
    ct, labels = _phantom()
    atlas = write_image(ct, _ijk_to_ras(), tmp_path / "atlas.nii.gz")
    wrong = write_image(labels[:-2], _ijk_to_ras(), tmp_path / "labels.nii.gz")
    status = main(["label-transfer", "--atlas-ct", str(atlas), "--atlas-labels", str(wrong), "--ct", str(atlas),
                   "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert status == 2
    assert "not on the atlas CT grid" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
