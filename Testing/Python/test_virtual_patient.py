"""Virtual patients (issue 10, item 3): the warp against an independent SciPy reference, exact scaling and density
factors, a one-to-one deformation, cut faces kept, and exports reproducible by seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import grid_volume, voxel_centers_ras, write_image
from XraySegSimLib import DrrProjector, LabelClasses
from XraySegSimLib.errors import InputError
from XraySegSimLib.export import ExportConfig, run_export
from XraySegSimLib.export_inputs import CaseInput, load_mapping
from XraySegSimLib.truncation import CutFaces
from XraySegSimLib.virtual_patient import (VirtualPatientRanges, _taper, density_lut, displacement_lattice,
                                           blur_packed_hu, draw_patient, jacobian_range, patient_rng,
                                           virtual_projector, warp_packed)


def phantom(shape=(30, 40, 44), spacing=2.5):
    """Body ellipsoid cut by the axial faces (a cylinder-like trunk), a labelled 'bone' block inside."""
    volume = grid_volume(np.full(shape, -1000.0, np.float32), spacing)
    c = voxel_centers_ras(volume)
    body = np.linalg.norm(c[..., :2] / (45, 38), axis=-1) < 1
    bone = (np.abs(c[..., 0] - 8) < 12) & (np.abs(c[..., 1] + 5) < 9) & (np.abs(c[..., 2]) < 20)
    volume.array[body] = 30.0
    volume.array[bone] = 700.0
    volume.array += np.linspace(-20, 20, shape[2])[None, None, :]  # a gradient, so interpolation shows
    labels = np.zeros(shape, np.uint8)
    labels[bone] = 38
    return volume, labels


def unpack(packed):
    return (packed & 0xFFFF).astype(np.uint16).view(np.int16).astype(np.int64), packed >> 16


def test_warp_equals_an_independent_scipy_resampling():
    from scipy.ndimage import map_coordinates

    volume, labels = phantom()
    projector = DrrProjector(volume, grid_volume(labels, 2.5), LabelClasses.from_values([38]))
    values = dict(draw_patient(VirtualPatientRanges(deform_mm=6.0, deform_spacing_mm=40.0, taper_mm=15.0),
                               patient_rng(1, "x", 0)), soft_tissue=1.0, bone_density=1.0)
    warped_hu, warped_class = unpack(warp_packed(projector.packed, volume.ijk_to_ras, values))
    # Reference: the field evaluated densely with numpy, the warp by SciPy (order 1 HU, order 0 labels).
    spacing = volume.spacing
    controls, bk, bj, bi = displacement_lattice(volume.array.shape, spacing, values)
    u = np.einsum("ka,jb,ic,xabc->xkji", bk, bj, bi, controls)
    nk, nj, ni = volume.array.shape
    taper = [_taper(n, s, values["taper_mm"]) for n, s in zip((ni, nj, nk), spacing)]
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    coords = np.stack([np.clip(k + u[2] / spacing[2] * taper[2][:, None, None], 0, nk - 1),
                       np.clip(j + u[1] / spacing[1] * taper[1][None, :, None], 0, nj - 1),
                       np.clip(i + u[0] / spacing[0] * taper[0][None, None, :], 0, ni - 1)])
    hu_in, class_in = unpack(projector.packed)
    reference_hu = np.round(map_coordinates(hu_in.astype(float), coords, order=1, mode="nearest"))
    reference_class = map_coordinates(class_in.astype(float), coords, order=0, mode="nearest")
    assert np.abs(warped_hu - reference_hu).max() <= 1  # float32 vs float64 rounding
    assert (warped_class != reference_class).mean() < 1e-3  # ties at exactly half a voxel only
    assert np.abs(u).max() > 3.0 and (warped_class != class_in).sum() > 100  # the body did move


def test_density_factors_scale_soft_tissue_and_bone_and_leave_air_and_lung():
    lut = density_lut(1.1, 0.9)
    at = {hu: int(lut[np.uint16(np.int16(hu))]) for hu in (-1000, -800, 40, 1000)}
    assert at[-1000] == -1000 and at[-800] == -800
    assert at[40] == round(1.04 * 1.1 * 1000 - 1000)  # density x 1.1: 144 HU
    assert at[1000] == round(2.0 * 0.9 * 1000 - 1000)  # density x 0.9: 800 HU


def test_denser_bone_stays_bone_and_metal_stays_metal():
    """Bone density x 2.5 (the rib-contrast recipe): 300 HU -> 2250 HU, but 1500 HU cortex stops below the
    materials' metal threshold instead of becoming titanium (5250 HU); an implant's HU is left as it is."""
    from XraySegSimLib.materials import METAL_HU, MaterialModel

    lut = density_lut(1.0, 2.5)
    at = {hu: int(lut[np.uint16(np.int16(hu))]) for hu in (300, 1500, 3500)}
    assert at[300] == 2250 and at[1500] == METAL_HU - 1 and at[3500] == 3500
    fractions = MaterialModel().fractions(np.array([at[1500], at[3500]], float))
    assert fractions[0, 2] == 0.0 and fractions[1, 2] == 1.0  # no metal from bone; the implant still metal


def test_scanner_blur_has_its_fwhm_conserves_mass_and_keeps_labels():
    spacing = np.array([1.0, 1.5, 2.0])  # i, j, k: anisotropic, so the axes must not be swapped
    hu = np.full((40, 50, 60), -1000, np.int16)
    hu[20, 25, 30] = 30000  # a point: its blurred profile along each axis is the Gaussian itself
    packed = (hu.view(np.uint16).astype(np.uint32)) | (np.uint32(7) << 16)
    packed[:, :, :10] &= 0xFFFF  # a class boundary, which the blur must leave where it is
    blurred = blur_packed_hu(packed, spacing, 6.0)
    out_hu, out_class = unpack(blurred)
    assert np.array_equal(out_class, packed >> 16)
    excess = out_hu + 1000.0
    assert abs(excess.sum() - 31000.0) < 0.02 * 31000.0  # mass kept, up to rounding
    for axis, step in zip((2, 1, 0), spacing):  # array axes k, j, i
        profile = excess.sum(axis=tuple(a for a in range(3) if a != axis))
        x = (np.arange(profile.size) - profile.argmax()) * step
        fwhm = 2.0 * np.sqrt(2.0 * np.log(2.0)) * np.sqrt((profile * x ** 2).sum() / profile.sum())
        assert abs(fwhm - 6.0) < 0.15, (axis, fwhm)
    assert blur_packed_hu(packed, spacing, 0.0) is packed
    ranges = VirtualPatientRanges(blur_fwhm_mm=(1.0, 4.0))
    values = [draw_patient(ranges, patient_rng(3, "x", i))["blur_fwhm_mm"] for i in range(20)]
    assert 1.0 <= min(values) < max(values) <= 4.0
    off = draw_patient(VirtualPatientRanges(), patient_rng(3, "x", 0))
    assert off["blur_fwhm_mm"] == 0.0 and {k: v for k, v in off.items() if k != "blur_fwhm_mm"} == {
        k: v for k, v in draw_patient(ranges, patient_rng(3, "x", 0)).items() if k != "blur_fwhm_mm"}
    with pytest.raises(InputError, match="ct-blur-range"):
        VirtualPatientRanges(blur_fwhm_mm=(3.0, 1.0))


def test_scaling_is_exact_and_identity_changes_nothing():
    volume, labels = phantom()
    projector = DrrProjector(volume, grid_volume(labels, 2.5), LabelClasses.from_values([38]))
    identity = dict(draw_patient(VirtualPatientRanges(), patient_rng(0, "x", 0)), deform_mm=0.0, soft_tissue=1.0,
                    bone_density=1.0, scale_ras=[1.0, 1.0, 1.0])
    assert np.array_equal(virtual_projector(projector, identity).packed, projector.packed)
    scaled = virtual_projector(projector, dict(identity, scale_ras=[1.1, 0.9, 1.05]))
    assert np.array_equal(scaled.packed, projector.packed)  # scaling is the grid's, no resampling

    def extent(proj):
        k, j, i = np.nonzero(proj.packed >> 16)
        ras = proj.ct.ijk_to_ras[:3, :3] @ np.stack([i, j, k]) + proj.ct.ijk_to_ras[:3, 3:4]
        return np.ptp(ras, axis=1), ras.mean(axis=1) - proj.ct.center_ras

    (size0, offset0), (size1, offset1) = extent(projector), extent(scaled)
    np.testing.assert_allclose(size1 / size0, [1.1, 0.9, 1.05], rtol=1e-9)
    np.testing.assert_allclose(offset1, offset0 * [1.1, 0.9, 1.05], atol=1e-9)  # about the grid centre
    assert scaled.render is not None and np.allclose(projector.ct.ijk_to_ras, volume.ijk_to_ras)  # base untouched


def test_virtual_projector_renders_as_a_projector_built_on_the_warped_ct():
    from XraySegSimLib import Volume, views

    volume, labels = phantom()
    classes = LabelClasses.from_values([38])
    projector = DrrProjector(volume, grid_volume(labels, 2.5), classes)
    values = dict(draw_patient(VirtualPatientRanges(deform_mm=12.0, deform_spacing_mm=40.0), patient_rng(3, "x", 1)))
    clone = virtual_projector(projector, values)
    hu, index = unpack(clone.packed)
    reference = DrrProjector(Volume(hu.astype(np.float32), clone.ct.ijk_to_ras),
                             Volume(np.where(index > 0, 38, 0).astype(np.uint8), clone.ct.ijk_to_ras), classes)
    np.testing.assert_array_equal(clone.packed, reference.packed)
    # the clone renders from the 2-byte palette made from its warped words: the same as one made from the CT
    assert clone.palette is not None and projector.palette is not None
    for part in ("voxels", "hu", "class_index"):
        np.testing.assert_array_equal(getattr(clone.palette, part), getattr(reference.palette, part))
    for lao in (0.0, 35.0, 90.0):
        geometry = views.from_preset("chest-ap", clone.ct.center_ras, 48, lao_deg=lao)
        mine, theirs = clone.render(geometry), reference.render(geometry)
        np.testing.assert_allclose(mine.line_integral, theirs.line_integral, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(mine.thickness_mm, theirs.thickness_mm, rtol=1e-6, atol=1e-5)


def test_default_deformations_are_one_to_one_and_keep_the_cut_faces():
    shape, spacing = (133, 512, 512), np.array([0.703125, 0.703125, 2.5])  # the sample CT's grid
    for index in range(6):
        low, high, largest = jacobian_range(shape, spacing, draw_patient(VirtualPatientRanges(),
                                                                         patient_rng(0, "ct", index)))
        assert 0.3 < low < 1.0 < high < 2.5 and 2.0 < largest < 25.0
    volume, labels = phantom()
    projector = DrrProjector(volume)
    before = CutFaces(projector.packed, volume.ras_to_ijk).cut_voxels
    values = dict(draw_patient(VirtualPatientRanges(deform_mm=8.0), patient_rng(2, "x", 0)), scale_ras=[1, 1, 1])
    after = CutFaces(virtual_projector(projector, values).packed, volume.ras_to_ijk).cut_voxels
    assert before["k_low"] > 500 and before["k_high"] > 500
    # The normal displacement vanishes on the faces: the sections only slide in their plane.
    assert abs(after["k_low"] - before["k_low"]) < 0.25 * before["k_low"] and after["i_low"] == before["i_low"] == 0


def test_bad_ranges_are_input_errors():
    with pytest.raises(InputError, match="scale-range"):
        VirtualPatientRanges(scale=(1.2, 1.1))
    with pytest.raises(InputError, match="unknown virtual-patient"):
        VirtualPatientRanges.from_dict({"wobble": 1})


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> CaseInput:
    folder = tmp_path_factory.mktemp("vp")
    volume, labels = phantom()
    ct = write_image(volume.array, volume.ijk_to_ras, folder / "trunk_ct.nii.gz")
    lb = write_image(labels, volume.ijk_to_ras, folder / "trunk_labels.nrrd")
    return CaseInput("trunk", str(ct), str(lb))


def export(case: CaseInput, out: Path, seed: int) -> Path:
    config = ExportConfig(out=str(out), view="chest-ap", views_per_ct=3, size=40, physics="none", seed=seed,
                          test_fraction=0.0, virtual_patients=2, previews=False)
    assert run_export([case], config, load_mapping("spine = vertebrae_T6")).n_ok == 3
    return out / "Dataset501_XraySeg"


@pytest.mark.slow
def test_same_seed_same_virtual_patients_other_seed_other_bodies(case, tmp_path):
    a, b, c = export(case, tmp_path / "a", 5), export(case, tmp_path / "b", 5), export(case, tmp_path / "c", 6)
    labels_a = sorted((a / "labelsTr").glob("*.nrrd"))
    assert len(labels_a) == 3
    for path in labels_a:
        assert path.read_bytes() == (b / "labelsTr" / path.name).read_bytes()
    assert any(p.read_bytes() != (c / "labelsTr" / p.name).read_bytes() for p in labels_a)
    sidecars = [json.loads((a / "sidecars" / f"trunk_v{v:04d}.json").read_text()) for v in range(3)]
    patients = [s["virtual_patient"] for s in sidecars]
    assert [p["index"] for p in patients] == [0, 1, 0] and patients[0] == patients[2] != patients[1]
    assert {"scale_ras", "soft_tissue", "bone_density", "deform_mm", "field_seed", "jacobian_min"} <= set(patients[0])
    assert patients[0]["jacobian_min"] > 0


@pytest.mark.slow
def test_exports_made_before_the_scanner_blur_still_resume(case, tmp_path):
    import dataclasses

    root = export(case, tmp_path / "old", 5)
    record = json.loads((root / "export.json").read_text())
    del record["config"]["virtual_patient_ranges"]["blur_fwhm_mm"]  # as written before the option existed
    (root / "export.json").write_text(json.dumps(record))
    (root / "sidecars" / "trunk_v0002.json").unlink()  # one sample to finish
    config = ExportConfig(out=str(tmp_path / "old"), view="chest-ap", views_per_ct=3, size=40, physics="none",
                          seed=5, test_fraction=0.0, virtual_patients=2, previews=False)
    assert run_export([case], config, load_mapping("spine = vertebrae_T6"), resume=True).n_ok == 3
    blurred = dataclasses.replace(config, virtual_patient_ranges=VirtualPatientRanges(blur_fwhm_mm=(1.0, 2.0)).to_dict())
    with pytest.raises(InputError, match="differ"):
        run_export([case], blurred, load_mapping("spine = vertebrae_T6"), resume=True)


def test_cli_options_reach_the_sidecar(case, tmp_path, capsys):
    from XraySegInferLib.entry import main

    status = main(["export", "--ct", case.ct, "--labels", case.labels, "--classes", "spine = vertebrae_T6",
                   "--view", "chest-ap", "--views-per-ct", "1", "--size", "32", "--physics", "none", "--quiet",
                   "--virtual-patients", "3", "--deform-mm", "4", "--scale-range", "1.05,1.05",
                   "--soft-tissue-range", "0.9,0.9", "--bone-density-range", "1.2,1.2", "--ct-blur-range", "2.5,2.5",
                   "--out", str(tmp_path)])
    assert status == 0 and "exported 1 of 1" in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "Dataset501_XraySeg/sidecars/trunk_ct_v0000.json").read_text())
    patient = sidecar["virtual_patient"]
    assert patient["scale_ras"] == [1.05] * 3 and patient["soft_tissue"] == 0.9 and patient["bone_density"] == 1.2
    assert patient["deform_mm"] == 4.0 and patient["blur_fwhm_mm"] == 2.5
    assert main(["export", "--ct", case.ct, "--out", str(tmp_path / "x"), "--scale-range", "1.1"]) == 2
    assert "--scale-range expects LOW,HIGH" in capsys.readouterr().err
