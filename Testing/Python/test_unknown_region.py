"""What a shoulder pose brings in from beyond a cut face is unknown (issue 10): the warp records it, the cell walk
masks exactly the rays through it, and the export's ignore mask holds those pixels."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import grid_volume, voxel_centers_ras
from test_shoulder_pose import CLASSES, girdle_phantom, values
from test_truncation import pa_geometry
from XraySegSimLib import DrrProjector, LabelClasses, XrayGeometry
from XraySegSimLib.shoulder_pose import shoulder_field
from XraySegSimLib.truncation import IGNORE_RULE, CutFaces
from XraySegSimLib.unknown_region import UnknownRegion
from XraySegSimLib.virtual_patient import (VirtualPatientRanges, setup_patient, virtual_projector_and_unknown,
                                           warp_packed_and_unknown)


def sampled_reference(region: UnknownRegion, geometry: XrayGeometry, samples: int = 4000) -> np.ndarray:
    """Rays sampled at ``samples`` points between source and pixel; a pixel is hit when a point lies in a set
    cell (cells of ``steps`` voxels, voxel v centred on v)."""
    cols, rows = geometry.size
    c, r = np.meshgrid(np.arange(cols), np.arange(rows))
    pixel = (geometry.origin + c[..., None] * geometry.spacing[0] * geometry.column_axis
             + r[..., None] * geometry.spacing[1] * geometry.row_axis)
    out = np.zeros((rows, cols), bool)
    linear, shift = region.ras_to_ijk[:3, :3], region.ras_to_ijk[:3, 3] + 0.5
    for t in np.linspace(0.0, 1.0, samples):
        point = geometry.source + t * (pixel - geometry.source)
        cell = np.floor((point @ linear.T + shift) / region.steps_ijk).astype(int)[..., ::-1]  # k, j, i
        inside = np.all((cell >= 0) & (cell < region.cells.shape), -1)
        k, j, i = (np.where(inside, cell[..., a], 0) for a in range(3))
        out |= inside & region.cells[k, j, i]
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_cell_walk_masks_the_rays_through_unknown_cells(seed):
    volume, _, _ = girdle_phantom(slices=46)
    rng = np.random.default_rng(seed)
    cells = rng.random((8, 4, 25)) < 0.04  # scattered single cells: grazing rays are where a walk goes wrong
    region = UnknownRegion(cells, np.array([6, 6, 6]), volume.ras_to_ijk)
    geometry = pa_geometry(size=(150, 60), spacing=2.0, source_shift=(30.0 * seed, 0.0, 20.0))
    walked, sampled = region.mask(geometry), sampled_reference(region, geometry)
    assert sampled.sum() > 500
    assert not (sampled & ~walked).any()  # every sampled hit is walked
    assert (walked & ~sampled).sum() <= 0.01 * sampled.sum()  # what the samples step over: grazing corners


def reference_unknown_cells(packed: np.ndarray, field: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The unknown cells by SciPy, for a turn alone (no B-spline field): each voxel's backward sample, the turn
    cut short at a face; unknown where it falls short by more than half a voxel and body lies at the face."""
    from scipy import ndimage

    shape = packed.shape
    kk, jj, ii = np.indices(shape, dtype=np.float64)
    at = [np.clip((v + 0.5) / s - 0.5, 0.0, n - 1.0)
          for v, s, n in zip((kk, jj, ii), steps[::-1], field.shape[1:])]
    e = [ndimage.map_coordinates(field[a], at, order=1, mode="nearest") for a in range(3)]  # along i, j, k
    p = [ii, jj, kk]
    cut = np.ones(shape)
    for a, n in enumerate(shape[::-1]):
        with np.errstate(divide="ignore", invalid="ignore"):
            cut = np.where(p[a] + e[a] > n - 1, np.minimum(cut, (n - 1 - p[a]) / e[a]), cut)
            cut = np.where(p[a] + e[a] < 0, np.minimum(cut, -p[a] / e[a]), cut)
    short = (1 - cut) * np.sqrt(sum(x * x for x in e)) > 0.5
    at_face = [np.clip(np.round(p[a] + cut * e[a]), 0, n - 1).astype(int) for a, n in enumerate(shape[::-1])]
    word = packed[at_face[2], at_face[1], at_face[0]].astype(np.int64)
    body = ((word & 0xFFFF).astype(np.uint16).view(np.int16) > -200) | (word >> 16 != 0)
    cells = np.zeros(field.shape[1:], bool)
    k, j, i = np.nonzero(short & body)
    sk, sj, si = steps[::-1].astype(int)
    cells[k // sk, j // sj, i // si] = True
    return cells


@pytest.mark.parametrize("slices", [46, 70])
def test_the_warp_records_the_cells_whose_turn_reaches_beyond_a_face(slices):
    """Against SciPy, to a cell (the voxels on a cell's edge round either way); with no turn, no region."""
    from scipy import ndimage

    volume, _, packed = girdle_phantom(slices=slices)
    v = values((-20.0, -20.0))
    _, cells, steps = warp_packed_and_unknown(packed, volume.ijk_to_ras, v, class_names=CLASSES)
    field, field_steps, _ = shoulder_field(packed, volume.ijk_to_ras, CLASSES, (-20.0, -20.0))
    np.testing.assert_array_equal(steps, field_steps)
    reference = reference_unknown_cells(packed, field, steps)
    assert reference.sum() > 300 and cells.sum() > 300
    assert not (cells & ~ndimage.binary_dilation(reference)).any()
    assert not (reference & ~ndimage.binary_dilation(cells)).any()
    assert (cells ^ reference).sum() <= 0.05 * reference.sum()
    k = np.nonzero(cells)[0]
    assert np.median(k) >= cells.shape[0] - 4  # near the top face, which the turned trunk reaches
    _, none, _ = warp_packed_and_unknown(packed, volume.ijk_to_ras, values())
    assert none is None


def test_the_virtual_patients_ignore_mask_holds_the_unknown_pixels():
    volume, _, packed = girdle_phantom(slices=46)
    packed[:, [0, -1], :] = np.int16(-1000).view(np.uint16)  # air at the front and back: a trunk cut at its top
    volume.array[...] = (packed & 0xFFFF).astype(np.uint16).view(np.int16)
    labels = grid_volume((packed >> 16).astype(np.uint8), 2.0)
    projector = DrrProjector(volume, labels, LabelClasses.from_values(dict(zip((1, 2, 3), CLASSES))))
    ranges = VirtualPatientRanges(deform_mm=0.0, scale=(1.0, 1.0), soft_tissue=(1.0, 1.0), bone_density=(1.0, 1.0),
                                  shoulder_deg=(-20.0, -19.0))
    patient = setup_patient(projector, ranges, 0, "phantom", 0)
    faces, region = patient.cut_faces, patient.cut_faces.unknown
    assert region is not None and region.n_cells > 0 and patient.values["shoulder_unknown_ml"] > 0
    assert faces.rule.startswith(IGNORE_RULE) and "shoulder pose" in faces.rule
    geometry = pa_geometry(size=(160, 60), spacing=2.0, source_shift=(0.0, 0.0, 0.0))
    warped, _ = virtual_projector_and_unknown(projector, dict(patient.values))
    plain = CutFaces(warped.packed, warped.ct.ras_to_ijk).mask(geometry)  # the top face's continuation alone
    unknown, mask = region.mask(geometry), faces.mask(geometry)
    assert not (unknown & ~mask).any() and np.array_equal(mask, plain | unknown)
    assert (unknown & ~plain).sum() > 50  # below the top face's continuation: pixels only the turn makes unknown
