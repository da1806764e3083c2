"""HU -> mass density and material fractions, for polyenergetic physics.

The projector integrates, in the same single pass as the DRR and the labels, the *partial densities* of each
material along every ray, giving material line integrals in g/cm^2. The physics module then applies
energy-dependent mass attenuation (xraydb, NIST) per pixel, so nothing is traced per energy.

Model (documented conversion, after Schneider, Bortfeld & Schlegel 2000, Phys. Med. Biol. 45:459, which fits
density and elemental composition as piecewise-linear functions of HU):

* density, g/cm^3: ``max(0, 1.0 + HU/1000)`` up to ``SOFT_BONE_KNEE_HU`` (air, lung, fat, soft tissue; air at
  -1000 HU is empty, as in the DRR's attenuation: 30 cm of real air would absorb < 1%), then ``1.017 + 0.592e-3 * HU`` (Schneider's fit for bone-like tissue);
* composition: soft tissue (ICRU-44 soft tissue) below ``SOFT_BONE_KNEE_HU`` = 100 HU, cortical bone (ICRU-44)
  above ``BONE_PURE_HU`` = 1500 HU, a linear soft-tissue/bone mixture (by mass) in between;
* optional metal (titanium, implants) above ``METAL_HU`` = 3000 HU, which ordinary CT clips before.

Air is soft tissue at zero density: the projector then obtains the soft-tissue channel of most voxels from the
attenuation sum it computes anyway, which keeps the material channels cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SOFT_BONE_KNEE_HU = 100.0
BONE_PURE_HU = 1500.0
METAL_HU = 3000.0
AIR_DENSITY = 0.0  # air (-1000 HU) is taken as empty, like the DRR's mu = mu_water * max(0, 1 + HU/1000)
MAX_MATERIALS = 4  # the projector keeps this many accumulators per ray


@dataclass(frozen=True)
class MaterialModel:
    """Which materials are separated, by name (as xraydb knows them), in projector channel order."""

    names: tuple[str, ...] = ("soft_tissue", "bone", "metal")
    include_metal: bool = True

    @property
    def channels(self) -> tuple[str, ...]:
        return self.names if self.include_metal else self.names[:2]

    def density(self, hu: np.ndarray) -> np.ndarray:
        """Mass density (g/cm^3) for HU values."""
        hu = np.asarray(hu, dtype=np.float64)
        soft = np.maximum(1.0 + hu / 1000.0, AIR_DENSITY)
        bone = 1.017 + 0.592e-3 * hu
        return np.where(hu <= SOFT_BONE_KNEE_HU, soft, np.maximum(bone, soft.clip(max=1.1)))

    def fractions(self, hu: np.ndarray) -> np.ndarray:
        """Mass fractions (..., 3) of soft tissue, bone, metal for HU values (they sum to 1)."""
        hu = np.asarray(hu, dtype=np.float64)
        bone = np.clip((hu - SOFT_BONE_KNEE_HU) / (BONE_PURE_HU - SOFT_BONE_KNEE_HU), 0.0, 1.0)
        metal = (hu >= METAL_HU).astype(np.float64) if self.include_metal else np.zeros_like(hu)
        bone = bone * (1 - metal)
        return np.stack([1.0 - bone - metal, bone, metal], axis=-1)

    def lookup_table(self) -> np.ndarray:
        """(65536, 4) float32 partial densities (g/cm^3) indexed by the uint16 bit pattern of an int16 HU,
        the form in which the projector stores HU; unused channels are zero."""
        codes = np.arange(65536, dtype=np.uint16)
        hu = codes.view(np.int16).astype(np.float64)
        table = np.zeros((65536, MAX_MATERIALS), np.float32)
        partial = self.density(hu)[:, None] * self.fractions(hu)
        table[:, : len(self.channels)] = partial[:, : len(self.channels)]
        return table
