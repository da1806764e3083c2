"""Realistic radiograph physics on top of a single-pass DRR: spectrum, materials, detector, noise, scatter, blur,
heel effect and clinical image processing. Qt-free; numpy + numba + spekpy + xraydb.

Chain (``simulate_radiograph``), per detector pixel, from the material line integrals ``A_m`` (g/cm^2) that the
projector integrates in the same ray pass as the DRR and the labels (see ``materials``):

1. **Spectrum** ``N(E)``: tube output from spekpy (Poludniowski et al. 2021, Med. Phys. 48:3630), photons per
   keV per cm^2 per mAs at 100 cm, for kVp, anode angle and added Al/Cu filtration.
2. **Attenuation**: ``(mu/rho)_m(E)`` from xraydb (Elam, Ravel & Sieber tables, via ``xraydb.material_mu``) for
   ICRU-44 soft tissue and cortical bone (ICRU Report 44, 1989, compositions by mass) and titanium.
3. **Detector**: energy-integrating scintillator (CsI:Tl or Gd2O2S:Tb) whose signal per photon is the interacting
   fraction ``eta(E) = 1 - exp(-mu(E) t)`` times ``E`` (energy-integrating response; K-escape neglected).
4. **Primary** ``S = K(pixel) * sum_E N(E) eta(E) E exp(-sum_m (mu/rho)_m(E) A_m)``: no per-energy ray tracing. A
   log-domain look-up table over (soft tissue, bone) with bilinear interpolation (numba) gives the sum; pixels with
   metal are summed directly. ``K`` holds mAs, inverse square, obliquity, pixel area and the heel effect (spekpy's
   own off-axis model). Beam hardening follows from the spectrum sum.
5. **Scatter**: ``S_s = G * (SPR(t) * S_p)`` with a normalised broad Gaussian kernel ``G`` (FFT at reduced
   resolution) and a scatter-to-primary ratio growing with the water-equivalent mass thickness ``t``; optional
   anti-scatter grid.
6. **Focal-spot blur** (Gaussian, FWHM ``f (M - 1)`` at the detector) on the primary; **quantum noise**: compound
   Poisson of the energy-integrating signal (mean and variance exact: Poisson in the equivalent number of quanta
   ``S^2 / M2`` scaled by ``M2 / S``, ``M2 = sum N eta E^2 T``; Swank factor optional), then the **detector PSF**
   (blurs signal and noise, as light spread does) and additive **electronic noise**.
7. **Processing**: log transform against the unattenuated signal, optional unsharp masking (CR/DX-like), VOI window
   through ``normalize_radiograph`` (the single normalisation shared by training and real radiographs), output
   MONOCHROME2 (dense = bright, default) or MONOCHROME1.

The package is split by stage: ``spectrum`` (tube, fluence, heel), ``attenuation`` (materials),
``detector`` (scintillator, grid), ``beam`` (their combination and the look-up table), ``scatter``, ``noise``,
``filters``, ``processing`` (windowing, the shared normalisation), ``chain`` (``simulate_radiograph``) and
``presets``. Every name is re-exported here: ``from XraySegSimLib import physics; physics.simulate_radiograph``.
"""

from __future__ import annotations

from .base import (PhysicsError, KVP_RANGE, ANODE_ANGLE_RANGE, REFERENCE_DISTANCE_CM, FWHM_PER_SIGMA, _check_range,
                   _check_non_negative, _check_photometric)
from .attenuation import (ICRU44_SOFT_TISSUE, ICRU44_CORTICAL_BONE, MATERIAL_COMPOSITIONS,
                          formula_from_mass_fractions, mass_attenuation, channel_attenuation)
from .detector import (SCINTILLATORS, GRID_SCATTER_TRANSMISSION, DetectorParams, GridParams, detector_response)
from .spectrum import (SpectrumParams, Spectrum, _spek_model, tube_spectrum, _ray_terms, _ray_lengths,
                       fluence_factor, _anode_offsets_mm, _heel_profile, heel_factor)
from .beam import (BeamModel, beam_model, LUT_STEPS_G_CM2, LUT_EXTENT_QUANTUM, MomentTable, moment_table,
                   _lookup_moments, relative_moments, _direct_moments)
from .filters import (gaussian_kernel, _convolve_rows, _convolve_cols, gaussian_blur, _is_identity,
                      _resize_bilinear, _bilinear_taps, block_mean, resize, fft_gaussian_blur,
                      smooth_at_low_resolution)
from .scatter import (PUBLISHED_SPR_20CM_WATER, ScatterParams, scatter_to_primary_ratio, scatter_image)
from .noise import (GAUSSIAN_QUANTA, _add_quantum_noise)
from .processing import (ProcessingParams, normalize_radiograph, percentile_window, unsharp_mask, ANATOMY_MIN_G_CM2,
                         _process)
from .chain import (PhysicsParams, _replace_dotted, SimulatedRadiograph, _material_line_integrals, _pixel_area_cm2,
                    _principal_pixel, _exposure, _focal_spot_sigma_mm, simulate_radiograph)
from .presets import (_grid, PRESETS, COMMON_RANGES, RANDOMIZATION_RANGES, preset, randomized)

__all__ = ["PhysicsError", "KVP_RANGE", "ANODE_ANGLE_RANGE", "REFERENCE_DISTANCE_CM", "FWHM_PER_SIGMA",
           "ICRU44_SOFT_TISSUE", "ICRU44_CORTICAL_BONE", "MATERIAL_COMPOSITIONS", "formula_from_mass_fractions",
           "mass_attenuation", "channel_attenuation", "SCINTILLATORS", "GRID_SCATTER_TRANSMISSION", "DetectorParams",
           "GridParams", "detector_response", "SpectrumParams", "Spectrum", "tube_spectrum", "fluence_factor",
           "heel_factor", "BeamModel", "beam_model", "LUT_STEPS_G_CM2", "LUT_EXTENT_QUANTUM", "MomentTable",
           "moment_table", "relative_moments", "gaussian_kernel", "gaussian_blur", "block_mean", "resize",
           "fft_gaussian_blur", "smooth_at_low_resolution", "PUBLISHED_SPR_20CM_WATER", "ScatterParams",
           "scatter_to_primary_ratio", "scatter_image", "GAUSSIAN_QUANTA", "ProcessingParams", "normalize_radiograph",
           "percentile_window", "unsharp_mask", "ANATOMY_MIN_G_CM2", "PhysicsParams", "SimulatedRadiograph",
           "simulate_radiograph", "PRESETS", "COMMON_RANGES", "RANDOMIZATION_RANGES", "preset", "randomized"]
