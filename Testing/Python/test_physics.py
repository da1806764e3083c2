"""Physics checks that can fail: Beer-Lambert through the whole chain, beam hardening against an independent
spectral integration, look-up table accuracy, noise scaling and variance, scatter-to-primary ratio against the
published range, edge spread against the configured PSF, heel/inverse-square, processing, presets, errors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import spekpy
import xraydb

from XraySegSimLib import DrrProjector, XraySegError, XrayGeometry
from XraySegSimLib import physics as ph
from XraySegSimLib.materials import MaterialModel
from conftest import grid_volume

NAMES = ("soft_tissue", "bone", "metal")
BARE = dict(anode_side=None, focal_spot_mm=0.0, noise=False,
            detector=ph.DetectorParams(psf_sigma_mm=0.0, electronic_noise_quanta=0.0),
            scatter=ph.ScatterParams(enabled=False))


def flat_geometry(cols: int, rows: int, spacing: float, sdd: float = 1000.0, sid: float | None = None) -> XrayGeometry:
    """Source on -y, detector in the x-z plane at +y, principal ray through the detector centre."""
    sid = sdd if sid is None else sid
    return XrayGeometry(source=[0.0, -sid, 0.0], detector_center=[0.0, sdd - sid, 0.0], column_axis=[1.0, 0.0, 0.0],
                        row_axis=[0.0, 0.0, -1.0], size=(cols, rows), spacing=(spacing, spacing),
                        isocenter=[0.0, 0.0, 0.0])


def fake_result(material_g_cm2: np.ndarray, geometry: XrayGeometry) -> SimpleNamespace:
    """What simulate_radiograph reads from a DrrResult: material line integrals, their names, the geometry."""
    return SimpleNamespace(material_g_cm2=np.asarray(material_g_cm2, np.float32), material_names=NAMES,
                           geometry=geometry)


def uniform_materials(geometry: XrayGeometry, soft: float = 0.0, bone: float = 0.0) -> np.ndarray:
    cols, rows = geometry.size
    a = np.zeros((3, rows, cols), np.float32)
    a[0], a[1] = soft, bone
    return a


def independent_detected_transmission(kvp: float, water_cm: np.ndarray, al_mm: float = 2.5) -> np.ndarray:
    """Direct numerical integration over the spekpy spectrum, written independently of physics.py:
    T = sum N(E) eta(E) E exp(-mu_water(E) t) / sum N(E) eta(E) E, CsI 0.6 mm at packing 0.8."""
    model = spekpy.Spek(kvp=kvp, th=12.0, dk=1.0)
    model.filter("Al", al_mm)
    energies, fluence = model.get_spectrum()
    keep = energies >= 5.0
    energies, fluence = energies[keep], fluence[keep]
    mu_water = xraydb.material_mu("H2O", energies * 1000.0, density=1.0)
    eta = 1.0 - np.exp(-xraydb.material_mu("CsI", energies * 1000.0, density=4.51 * 0.8) * 0.06)
    weight = fluence * eta * energies
    return np.array([(weight * np.exp(-mu_water * t)).sum() / weight.sum() for t in water_cm])


# ---------------------------------------------------------------------------------------------------------------
# Attenuation: monoenergetic Beer-Lambert through projector + physics, polyenergetic beam hardening, LUT


def test_monoenergetic_water_slab_through_projector_is_beer_lambert():
    """A 100 mm water slab (HU 0) rendered by DrrProjector with materials, then the physics chain with a 60 keV
    line and soft tissue set to water: primary / flat = exp(-mu_water rho t / cos) within 0.5 %."""
    slab = grid_volume(np.zeros((12, 20, 12), np.int16), 5.0)  # 60 x 100 x 60 mm (i, j, k) of HU 0
    geometry = flat_geometry(9, 9, 1.0, sdd=1500.0, sid=1000.0)
    result = DrrProjector(slab, materials=MaterialModel(), threads=1).render(geometry)
    params = ph.PhysicsParams(spectrum=ph.SpectrumParams(monoenergetic_kev=60.0),
                              material_formulas=(("soft_tissue", "H2O"),), **BARE)
    sim = ph.simulate_radiograph(result, params, rng=0)
    jj, ii = np.mgrid[:9, :9]
    rays = geometry.pixel_to_ras(ii, jj) - geometry.source
    chord_cm = 10.0 * np.linalg.norm(rays, axis=-1) / rays[..., 1]
    mu = float(xraydb.material_mu("H2O", 60000.0, density=1.0))  # 1/cm
    expected = np.exp(-mu * chord_cm)
    np.testing.assert_allclose(sim.primary / sim.flat, expected, rtol=5e-3)
    assert abs(sim.log_image[4, 4] - mu * chord_cm[4, 4]) < 5e-3 * mu * chord_cm[4, 4]


def test_a_ray_through_bone_alone_has_no_negative_soft_tissue():
    """Cortical bone everywhere (1500-3000 HU: bone fraction 1, soft tissue 0): the soft-tissue channel, an
    attenuation sum minus the bone voxels' share, must come out >= 0 (rounding gave -1e-14, which the physics
    refused: a virtual patient with denser bone lost a sample), and the physics must accept it."""
    rng = np.random.default_rng(0)
    volume = (np.full((12, 20, 12), 2999) - rng.integers(0, 1400, (12, 20, 12))).astype(np.int16)
    geometry = flat_geometry(9, 9, 1.0, sdd=1500.0, sid=1000.0)
    result = DrrProjector(grid_volume(volume, 5.0), materials=MaterialModel(), threads=1).render(geometry)
    assert result.material_g_cm2[0].min() >= 0.0 and result.material_g_cm2[0].max() < 1e-6
    assert result.material_g_cm2[1].min() > 10.0  # 100 mm of bone of about 1.9 g/cm^3
    sim = ph.simulate_radiograph(result, ph.PhysicsParams(**BARE), rng=0)
    assert np.isfinite(sim.log_image).all()


def test_polyenergetic_beam_hardening_matches_direct_integration():
    """Effective mu = -ln(T)/t falls with thickness, and T matches an independent spectral integration (1 %)."""
    thickness = np.array([1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0])
    geometry = flat_geometry(thickness.size, 1, 1.0)
    a = np.zeros((3, 1, thickness.size), np.float32)
    a[0, 0] = thickness
    params = ph.PhysicsParams(spectrum=ph.SpectrumParams(kvp=80.0), material_formulas=(("soft_tissue", "H2O"),),
                              inverse_square=False, obliquity=False, **BARE)
    sim = ph.simulate_radiograph(fake_result(a, geometry), params, rng=0)
    transmission = (sim.primary / sim.flat)[0].astype(float)
    np.testing.assert_allclose(transmission, independent_detected_transmission(80.0, thickness), rtol=0.01)
    mu_eff = -np.log(transmission) / thickness
    assert np.all(np.diff(mu_eff) < 0), f"no beam hardening: {mu_eff}"
    assert mu_eff[0] > 1.15 * mu_eff[-1]


@pytest.mark.parametrize("kvp", [55.0, 90.0, 120.0])
def test_lookup_table_matches_direct_spectral_sum(kvp):
    """Bilinear log-domain table vs the exact spectral sum over random (soft, bone): < 0.1 % everywhere."""
    rng = np.random.default_rng(1)
    a = np.zeros((3, 64, 64), np.float32)
    a[0] = rng.uniform(0.0, 40.0, (64, 64))
    a[1] = rng.uniform(0.0, 8.0, (64, 64)) * (rng.random((64, 64)) < 0.7)
    key = (ph.SpectrumParams(kvp=kvp), ph.DetectorParams(), NAMES, ())
    table = ph.relative_moments(a, key)
    exact = ph.beam_model(*key).moments(a)
    np.testing.assert_allclose(table, exact, rtol=1e-3)


def test_metal_pixels_use_exact_sum():
    a = np.zeros((3, 4, 4), np.float32)
    a[0], a[1], a[2, 1:3, 1:3] = 15.0, 1.0, 2.5
    key = (ph.SpectrumParams(kvp=90.0), ph.DetectorParams(), NAMES, ())
    np.testing.assert_allclose(ph.relative_moments(a, key), ph.beam_model(*key).moments(a), rtol=1e-5)
    assert ph.relative_moments(a, key)[0, 1, 1] < 0.5 * ph.relative_moments(a, key)[0, 0, 0]


def test_attenuation_data_are_nist_like():
    """xraydb values for ICRU-44 soft tissue and cortical bone at 60 keV near the NIST XCOM tables
    (0.2007 and 0.3148 cm^2/g, 'Tissue, Soft (ICRU-44)' and 'Bone, Cortical (ICRU-44)'); bone > soft."""
    soft = ph.mass_attenuation("soft_tissue", np.array([60.0]))[0]
    bone = ph.mass_attenuation("bone", np.array([60.0]))[0]
    assert abs(soft - 0.2007) < 0.03 * 0.2007 and abs(bone - 0.3148) < 0.03 * 0.3148
    eta = ph.detector_response(ph.DetectorParams(), np.array([30.0, 40.0, 60.0, 100.0]))
    assert eta[1] > 0.95 and eta[0] < eta[1]  # above the I/Cs K edges (33-36 keV) 0.6 mm CsI stops nearly all
    assert eta[3] < eta[2] < eta[1]  # and fewer of the harder photons


# ---------------------------------------------------------------------------------------------------------------
# Noise


def flat_field(photons_per_pixel: float, electronic: float = 0.0, seed: int = 0) -> ph.SimulatedRadiograph:
    geometry = flat_geometry(128, 128, 0.5)
    params = ph.PhysicsParams(
        spectrum=ph.SpectrumParams(kvp=70.0), photons_per_pixel=photons_per_pixel, anode_side=None,
        focal_spot_mm=0.0, scatter=ph.ScatterParams(enabled=False),
        detector=ph.DetectorParams(psf_sigma_mm=0.0, electronic_noise_quanta=electronic))
    return ph.simulate_radiograph(fake_result(uniform_materials(geometry), geometry), params, rng=seed)


def relative_variance(sim: ph.SimulatedRadiograph) -> float:
    return float(np.var(sim.noisy / sim.noiseless - 1.0))


def test_noise_variance_scales_inversely_with_dose():
    doses = [500.0, 2000.0, 8000.0]  # 16x range; the lowest dose uses exact Poisson draws, the highest normal
    products = [relative_variance(flat_field(d)) * d for d in doses]
    assert max(products) / min(products) < 1.10, products


def test_noise_variance_is_compound_poisson_of_detected_quanta():
    """Relative variance = sum N eta E^2 * sum N / (P (sum N eta E)^2) for P incident photons (within 5 %)."""
    photons = 4000.0
    beam = ph.beam_model(ph.SpectrumParams(kvp=70.0), ph.DetectorParams(), NAMES, ())
    fluence = ph.tube_spectrum(ph.SpectrumParams(kvp=70.0)).fluence
    expected = beam.w2.sum() * fluence.sum() / (photons * beam.w1.sum() ** 2)
    measured = relative_variance(flat_field(photons))
    assert abs(measured / expected - 1.0) < 0.05, (measured, expected)


def test_electronic_noise_adds_variance_and_seed_reproduces():
    """Electronic noise of 60 mean-quanta std adds (60 / detected quanta)^2 of relative variance (15 %)."""
    quiet, loud = flat_field(4000.0), flat_field(4000.0, electronic=60.0)
    added = relative_variance(loud) - relative_variance(quiet)
    expected = (60.0 / quiet.mean_quanta_per_pixel) ** 2
    assert abs(added / expected - 1.0) < 0.15, (added, expected)
    np.testing.assert_array_equal(flat_field(4000.0, seed=3).noisy, flat_field(4000.0, seed=3).noisy)
    assert not np.array_equal(flat_field(4000.0, seed=3).noisy, flat_field(4000.0, seed=4).noisy)


# ---------------------------------------------------------------------------------------------------------------
# Scatter


def slab_spr(water_cm: float, grid: ph.GridParams | None = None, kvp: float = 100.0) -> float:
    """SPR at the centre of a water slab covering a 30 x 30 cm field (detector 300 mm)."""
    geometry = flat_geometry(100, 100, 3.0, sdd=1800.0, sid=1650.0)
    params = ph.PhysicsParams(spectrum=ph.SpectrumParams(kvp=kvp), anode_side=None, noise=False,
                              scatter=ph.ScatterParams(grid=grid), material_formulas=(("soft_tissue", "H2O"),))
    sim = ph.simulate_radiograph(fake_result(uniform_materials(geometry, soft=water_cm), geometry), params, rng=0)
    return float(sim.spr[50, 50])


def test_scatter_to_primary_ratio_for_20cm_water_is_in_published_range():
    low, high = ph.PUBLISHED_SPR_20CM_WATER
    spr = slab_spr(20.0)
    assert low <= spr <= high, spr
    assert slab_spr(5.0) < slab_spr(10.0) < spr < slab_spr(30.0)


def test_grid_reduces_scatter_by_transmission_ratio():
    grid = ph.GridParams(ratio=10.0)
    ratio = slab_spr(20.0, grid) / slab_spr(20.0)
    expected = grid.scatter_fraction_transmitted / grid.primary_transmission
    assert abs(ratio / expected - 1.0) < 0.02 and ratio < 0.25


# ---------------------------------------------------------------------------------------------------------------
# Blur, heel, inverse square


def edge_sigma_mm(focal_spot_mm: float, psf_sigma_mm: float, sid: float) -> float:
    """Gaussian sigma from the 10-90 % rise of the edge spread function of a sharp bone edge."""
    spacing = 0.05
    geometry = flat_geometry(240, 8, spacing, sdd=1000.0, sid=sid)
    a = uniform_materials(geometry, soft=5.0)
    a[1, :, 120:] = 2.0
    params = ph.PhysicsParams(spectrum=ph.SpectrumParams(kvp=60.0), anode_side=None, noise=False,
                              inverse_square=False, obliquity=False, focal_spot_mm=focal_spot_mm,
                              scatter=ph.ScatterParams(enabled=False),
                              detector=ph.DetectorParams(psf_sigma_mm=psf_sigma_mm))
    sim = ph.simulate_radiograph(fake_result(a, geometry), params, rng=0)
    esf = sim.noisy.mean(axis=0).astype(float)
    esf = (esf - esf[-1]) / (esf[0] - esf[-1])  # 1 -> 0 across the edge
    x = np.arange(esf.size) * spacing
    x90, x10 = np.interp(0.9, esf[::-1], x[::-1]), np.interp(0.1, esf[::-1], x[::-1])
    return (x10 - x90) / (2.0 * math.sqrt(2.0) * 0.9061938)  # 10-90 % width = 2.563 sigma


def test_edge_spread_matches_detector_psf():
    assert abs(edge_sigma_mm(0.0, 0.3, 1000.0) / 0.3 - 1.0) < 0.10


def test_edge_spread_adds_focal_spot_penumbra():
    """Focal spot 1.2 mm at magnification 2: FWHM f (M - 1) = 1.2 mm, combined in quadrature with the PSF."""
    expected = math.hypot(0.2, 1.2 / ph.FWHM_PER_SIGMA)
    assert abs(edge_sigma_mm(1.2, 0.2, 500.0) / expected - 1.0) < 0.10


def test_heel_effect_darkens_anode_side_and_inverse_square_falls_off():
    geometry = flat_geometry(64, 64, 6.0, sdd=1000.0)
    a = uniform_materials(geometry)
    heel = ph.PhysicsParams(noise=False, scatter=ph.ScatterParams(enabled=False), inverse_square=False,
                            obliquity=False, anode_side="top")
    sim = ph.simulate_radiograph(fake_result(a, geometry), heel, rng=0)
    top, bottom = sim.flat[:8].mean(), sim.flat[-8:].mean()
    assert top < 0.95 * bottom  # anode side is darker
    assert np.allclose(sim.flat[:, 0], sim.flat[:, -1])  # no gradient across the anode-cathode axis
    left = ph.simulate_radiograph(fake_result(a, geometry), heel.replace(anode_side="left"), rng=0)
    assert left.flat[:, :8].mean() < 0.95 * left.flat[:, -8:].mean()
    plain = heel.replace(anode_side=None, inverse_square=True, obliquity=True)
    sim = ph.simulate_radiograph(fake_result(a, geometry), plain, rng=0)
    r_corner = math.sqrt(1000.0 ** 2 + 2 * (31.5 * 6.0) ** 2)
    assert abs(sim.flat[0, 0] / sim.flat[31, 31] - (1000.0 / r_corner) ** 3) < 0.01


# ---------------------------------------------------------------------------------------------------------------
# Processing, presets, the full chain


def test_normalize_radiograph_photometric_and_window():
    rng = np.random.default_rng(0)
    image = rng.normal(2.0, 0.5, (64, 64)).astype(np.float32)
    m2 = ph.normalize_radiograph(image)
    assert m2.dtype == np.float32 and m2.min() == 0.0 and m2.max() == 1.0
    np.testing.assert_allclose(ph.normalize_radiograph(-image, photometric="MONOCHROME1"), m2, atol=1e-6)
    np.testing.assert_allclose(ph.normalize_radiograph(image, output_photometric="MONOCHROME1"), 1 - m2, atol=1e-6)
    windowed = ph.normalize_radiograph(image, window_center_width=(2.0, 1.0))
    assert abs(float(windowed[np.abs(image - 2.0) < 0.01].mean()) - 0.5) < 0.02


@pytest.mark.parametrize("name", sorted(ph.PRESETS))
def test_presets_and_randomisation_ranges(name):
    base = ph.preset(name)
    ranges = {**ph.COMMON_RANGES, **ph.RANDOMIZATION_RANGES[name]}
    assert ranges["spectrum.kvp"][0] <= base.spectrum.kvp <= ranges["spectrum.kvp"][1]
    drawn = ph.randomized(name, rng=7)
    assert drawn == ph.randomized(name, rng=7)
    for key, (low, high, _) in ranges.items():
        value = drawn
        for part in key.split("."):
            value = getattr(value, part)
        assert low - 1e-9 <= value <= high + 1e-9 or key == "spectrum.kvp" and abs(value - low) <= 1, key


def test_kvp_ranges_of_presets_follow_the_issue():
    kvp = {name: ph.preset(name).spectrum.kvp for name in ph.PRESETS}
    assert 55 <= kvp["wrist-pa"] <= 60 and 55 <= kvp["wrist-lateral"] <= 60
    assert 85 <= kvp["lumbar-lateral"] <= 95 and 110 <= kvp["chest-pa"] <= 125 and 70 <= kvp["pelvis-ap"] <= 80
    assert ph.preset("chest-pa").scatter.grid is not None


def test_full_chain_on_a_phantom_bone_is_bright_in_monochrome2():
    geometry = flat_geometry(96, 96, 2.0, sdd=1150.0, sid=1000.0)
    a = uniform_materials(geometry, soft=18.0)
    a[1, 30:60, 40:56] = 3.0
    result = fake_result(a, geometry)
    sim = ph.simulate_radiograph(result, "lumbar-lateral", rng=0)
    assert sim.image.dtype == np.float32 and 0.0 <= sim.image.min() and sim.image.max() <= 1.0
    assert sim.image[40:50, 44:52].mean() > sim.image[40:50, 10:20].mean() + 0.2
    assert sim.noisy.std() > 0 and sim.scatter.mean() > 0 and sim.mean_quanta_per_pixel > 100
    m1 = ph.simulate_radiograph(result, ph.preset("lumbar-lateral").replace(**{"processing.photometric":
                                                                                 "MONOCHROME1"}), rng=0)
    np.testing.assert_allclose(m1.image, 1.0 - sim.image, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("make, words", [
    (lambda: ph.SpectrumParams(kvp=10.0), "[20, 150]"),
    (lambda: ph.SpectrumParams(kvp=200.0), "kVp"),
    (lambda: ph.SpectrumParams(filtration_mm_al=-1.0), "Al filtration"),
    (lambda: ph.PhysicsParams(mas=-2.0), "mAs"),
    (lambda: ph.PhysicsParams(photons_per_pixel=-5.0), "photons per pixel"),
    (lambda: ph.PhysicsParams(anode_side="up"), "anode_side"),
    (lambda: ph.DetectorParams(scintillator="NaI"), "scintillator"),
    (lambda: ph.ProcessingParams(photometric="RGB"), "MONOCHROME1"),
    (lambda: ph.preset("knee"), "chest-pa"),
    (lambda: ph.PhysicsParams().replace(**{"spectrum.kvp": 300.0}), "kVp"),
    (lambda: ph.PhysicsParams().replace(voltage=80), "unknown physics parameter"),
])
def test_bad_parameters_give_clear_errors(make, words):
    with pytest.raises(ph.PhysicsError, match=None) as error:
        make()
    assert words in str(error.value) and isinstance(error.value, XraySegError)


def test_drr_without_materials_is_refused():
    geometry = flat_geometry(4, 4, 1.0)
    no_materials = SimpleNamespace(material_g_cm2=None, material_names=(), geometry=geometry)
    with pytest.raises(ph.PhysicsError, match="materials=MaterialModel"):
        ph.simulate_radiograph(no_materials)
    negative = fake_result(-np.ones((3, 4, 4)), geometry)
    with pytest.raises(ph.PhysicsError, match=">= 0"):
        ph.simulate_radiograph(negative)
