"""Image-domain randomisation (issue 10, item 5): reproducible by seed, and each transform does what it says."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from conftest import grid_volume, voxel_centers_ras, write_image
from XraySegSimLib import DrrProjector, XrayGeometry
from XraySegSimLib.domain_randomisation import (TITANIUM_G_CM3, add_devices, apply, apply_lut, collimation_mask,
                                                device_mass, domain_rng, draw_plan, text_mask, vendor_processing)
from XraySegSimLib.errors import InputError

SHAPE = (128, 160)


def radiograph() -> np.ndarray:
    """A large-scale ramp with a bright disc ("bone") and a faint small detail."""
    rr, cc = np.mgrid[0:SHAPE[0], 0:SHAPE[1]].astype(np.float32)
    image = 0.2 + 0.5 * cc / SHAPE[1]
    image += 0.25 * (np.hypot(rr - 64, cc - 80) < 20)
    image += 0.02 * (np.hypot(rr - 30, cc - 40) < 3)
    return image.astype(np.float32)


def quiet_plan(**changes) -> dict:
    """A strong plan with every transform off, then ``changes``."""
    plan = draw_plan("strong", np.random.default_rng(0), SHAPE)
    plan.update(devices=[], blur_sigma_px=0.0, noise_std=0.0, line_noise_std=0.0, dropout=[], style="plain",
                style_params={}, lut={"kind": "gamma", "gamma": 1.0}, window_percentiles=[0.0, 100.0],
                collimation=None, text=[], inversion=False)
    plan.update(changes)
    return plan


def test_plans_and_images_are_reproducible_by_seed():
    image = radiograph()
    plans = [draw_plan("strong", domain_rng(4, "ct", v), SHAPE) for v in range(8)]
    again = [draw_plan("strong", domain_rng(4, "ct", v), SHAPE) for v in range(8)]
    assert plans == again and json.loads(json.dumps(plans)) == plans  # JSON-able, as the sidecar stores it
    for plan, other in zip(plans, again):
        np.testing.assert_array_equal(apply(image, plan), apply(image, other))
    assert len({json.dumps(p, sort_keys=True) for p in plans}) == 8
    assert not np.array_equal(apply(image, plans[0]), apply(image, plans[1]))
    assert draw_plan("none", domain_rng(4, "ct", 0), SHAPE) is None and apply(image, None) is image
    styles = {draw_plan("strong", domain_rng(1, "ct", v), SHAPE)["style"] for v in range(40)}
    assert styles == {"multiscale", "latitude", "unsharp", "plain"}
    with pytest.raises(InputError, match="domain-randomisation"):
        draw_plan("wild", np.random.default_rng(0), SHAPE)


def test_collimated_area_is_at_the_shutter_value_and_inversion_flips():
    image = radiograph()
    collimation = {"margins": [0.1, 0.15, 0.05, 0.2], "angle_deg": 0.0, "shutter": None, "value": 1.0}
    plan = quiet_plan(collimation=collimation)
    out = apply(image, plan)
    blocked = collimation_mask(plan, SHAPE)
    expected_open = (SHAPE[0] * (1 - 0.1 - 0.15)) * (SHAPE[1] * (1 - 0.05 - 0.2))
    assert abs((~blocked).sum() - expected_open) <= SHAPE[0] + SHAPE[1]  # to a pixel on each edge
    assert (out[blocked] == 1.0).all() and (out[~blocked] < 1.0).mean() > 0.95
    assert blocked[0].all() and not blocked[SHAPE[0] // 2, SHAPE[1] // 2]
    shutter = quiet_plan(collimation=dict(collimation, value=0.0, shutter={"radii": [0.45, 0.45]}))
    assert collimation_mask(shutter, SHAPE).sum() > blocked.sum() and (apply(image, shutter)[
        collimation_mask(shutter, SHAPE)] == 0.0).all()
    inverted = apply(image, dict(plan, inversion=True))
    np.testing.assert_allclose(inverted, 1.0 - out, atol=1e-7)
    # inversion flips monotonicity: along the ramp (a row without the disc) values fall instead of rise
    row = SHAPE[0] - 20
    assert np.all(np.diff(out[row, 20:120]) >= 0) and np.all(np.diff(inverted[row, 20:120]) <= 0)


def test_luts_are_monotone_and_span_the_range():
    ramp = np.linspace(0, 1, 257, dtype=np.float32)
    for lut in ({"kind": "sigmoid", "center": 0.45, "slope": 10.0}, {"kind": "gamma", "gamma": 0.6},
                {"kind": "gamma", "gamma": 1.8}):
        y = apply_lut(ramp, lut)
        assert np.all(np.diff(y) > 0) and abs(y[0]) < 1e-6 and abs(y[-1] - 1) < 1e-6


def detail_contrast(image: np.ndarray) -> float:
    """The faint detail's step over the image's full range."""
    return float((image[30, 40] - image[30, 48]) / np.ptp(image))


def test_processing_styles_do_what_they_say():
    image = radiograph()
    base = detail_contrast(image)
    multiscale = vendor_processing(image, "multiscale", {"power": 0.6, "gains": [1.5] * 5,
                                                         "sigmas_px": [1.5, 3.0, 6.0, 12.0, 24.0]})
    assert detail_contrast(multiscale) > 1.5 * base  # small details gain against the large-scale range
    latitude = vendor_processing(image, "latitude", {"fraction": 0.7, "sigma_px": 40.0, "unsharp": 0.0,
                                                     "unsharp_sigma_px": 2.0})
    ramp = lambda im: float(im[100, 150] - im[100, 10])  # noqa: E731 - the large-scale ramp's rise
    assert ramp(latitude) < 0.6 * ramp(image)  # latitude compression: the broad ramp is flattened
    unsharp = vendor_processing(image, "unsharp", {"amount": 1.0, "sigma_px": 4.0})
    inside, outside = unsharp[64, 80 - 18], unsharp[64, 80 - 23]
    assert inside > image[64, 80 - 18] + 0.02 and outside < image[64, 80 - 23] - 0.02  # overshoot at the edge
    np.testing.assert_array_equal(vendor_processing(image, "plain", {}), image)


def test_detector_defects_noise_blur_and_text():
    image = radiograph()
    drop = quiet_plan(dropout=[{"kind": "line", "axis": 1, "index": 10, "width": 2, "value": 0.0},
                               {"kind": "rect", "box": [90, 100, 10, 20], "value": 1.0}])
    out = apply(image, drop)
    assert (out[:, 10:12] == 0.0).all() and (out[90:100, 100:120] == 1.0).all()
    noisy = apply(image, quiet_plan(noise_std=0.03, noise_seed=5))
    clean = apply(image, quiet_plan())
    residual = (noisy - clean)[10:60, 100:150]
    assert 0.02 < residual.std() < 0.06
    blurred = apply(image, quiet_plan(blur_sigma_px=2.0))
    assert np.abs(np.diff(blurred[64])).max() < 0.5 * np.abs(np.diff(clean[64])).max()
    text = [{"text": "R", "corner": 1, "size_fraction": 0.08, "inset": [0.05, 0.05], "boxed": True},
            {"text": "PORTABLE", "corner": 2, "size_fraction": 0.05, "inset": [0.03, 0.03], "boxed": False}]
    plan = quiet_plan(text=text, text_value=0.0)
    mask = text_mask(plan, SHAPE)
    assert mask[: SHAPE[0] // 3, 2 * SHAPE[1] // 3:].sum() > 20 and mask[2 * SHAPE[0] // 3:, : SHAPE[1] // 2].sum() > 20
    assert not mask[SHAPE[0] // 3: 2 * SHAPE[0] // 3].any()  # nothing in the middle band
    assert (apply(image, plan)[mask] == 0.0).all()


def test_wires_are_metal_with_the_mass_of_their_cross_section():
    diameter = 1.2
    plan = quiet_plan(devices=[{"kind": "wire", "points": [[0.0, 80.0], [127.0, 80.0]], "diameter_mm": diameter,
                                "electrode": False, "electrode_mm": 10.0}])
    spacing = 0.2
    mass = device_mass(plan, SHAPE, (spacing, spacing))
    # across the wire, the mass integrates to its cross-section: pi r^2 (mm^2) x 0.1 cm/mm x density
    expected = np.pi * (diameter / 2) ** 2 * 0.1 * TITANIUM_G_CM3
    assert abs(mass[64].sum() * spacing - expected) < 0.05 * expected
    assert abs(mass[64].max() - diameter * 0.1 * TITANIUM_G_CM3) < 0.05 and mass[:, :70].max() == 0


@pytest.fixture(scope="module")
def water_result():
    from XraySegSimLib.materials import MaterialModel

    volume = grid_volume(np.zeros((20, 40, 40), np.float32), 2.0)
    geometry = XrayGeometry(source=(0, -800, 0), detector_center=(0, 200, 0), column_axis=(1, 0, 0),
                            row_axis=(0, 0, -1), size=(64, 48), spacing=(1.0, 1.0))
    return DrrProjector(volume, materials=MaterialModel()).render(geometry)


def test_devices_attenuate_through_the_physics(water_result):
    from XraySegSimLib import physics

    plan = quiet_plan(devices=[{"kind": "lead", "points": [[0.0, 32.0], [47.0, 32.0]], "diameter_mm": 1.0,
                                "electrode": True, "electrode_mm": 8.0}])
    result = copy.deepcopy(water_result)
    touched = add_devices(result, plan)
    metal = result.material_g_cm2[result.material_names.index("metal")]
    assert touched > 40 and metal.max() > 0.3 and metal[:, :25].max() == 0
    params = physics.preset("chest-pa").replace(noise=False, **{"scatter.enabled": False})
    with_wire = physics.simulate_radiograph(result, params).log_image
    without = physics.simulate_radiograph(water_result, params).log_image
    assert (with_wire[10:38, 32] - without[10:38, 32]).min() > 0.05  # more attenuation on the wire
    np.testing.assert_allclose(with_wire[:, :25], without[:, :25], atol=1e-5)


def test_export_is_reproducible_and_clears_labels_behind_the_collimator(tmp_path):
    import nrrd

    from XraySegSimLib.export import ExportConfig, run_export
    from XraySegSimLib.export_inputs import CaseInput, load_mapping

    volume = grid_volume(np.full((24, 32, 36), -1000.0, np.float32), 2.5)
    c = voxel_centers_ras(volume)
    body = np.linalg.norm(c / (40, 30, 26), axis=-1) < 1
    bone = np.linalg.norm(c[..., :2] - (0, -8), axis=-1) < 8
    volume.array[body] = 30.0
    volume.array[body & bone] = 800.0
    labels = (body & bone).astype(np.uint8) * 38
    case = CaseInput("dr", str(write_image(volume.array, volume.ijk_to_ras, tmp_path / "dr_ct.nii.gz")),
                     str(write_image(labels, volume.ijk_to_ras, tmp_path / "dr_labels.nrrd")))
    roots = []
    for name in ("a", "b"):
        config = ExportConfig(out=str(tmp_path / name), view="chest-ap", views_per_ct=6, size=48, physics="none",
                              seed=11, test_fraction=0.0, domain_randomisation="strong", previews=False)
        assert run_export([case], config, load_mapping("spine = vertebrae_T6")).n_ok == 6
        roots.append(tmp_path / name / "Dataset501_XraySeg")
    collimated_seen = False
    for v in range(6):
        for folder, name in (("imagesTr", f"dr_v{v:04d}_0000.nrrd"), ("labelsTr", f"dr_v{v:04d}.nrrd"),
                             ("masksTr", f"dr_v{v:04d}.nrrd")):
            data = (roots[0] / folder / name).read_bytes()
            assert data == (roots[1] / folder / name).read_bytes() and b"(GMT)" not in data[:256]  # no time stamp
        sidecar = json.loads((roots[0] / "sidecars" / f"dr_v{v:04d}.json").read_text())
        plan = sidecar["domain_randomisation"]
        assert plan["level"] == "strong" and plan == draw_plan("strong", domain_rng(11, "dr", v), (48, 48))
        blocked = collimation_mask(plan, (48, 48))
        masks = nrrd.read(str(roots[0] / "masksTr" / f"dr_v{v:04d}.nrrd"), index_order="C")[0]
        assert not masks[:, blocked].any() and sidecar["collimated_pixels"] == int(blocked.sum())
        collimated_seen |= bool(blocked.any())
    assert collimated_seen
