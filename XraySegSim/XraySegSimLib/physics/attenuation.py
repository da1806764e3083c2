"""Mass attenuation of the tissues and materials (xraydb, NIST tables; ICRU-44 compositions)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .base import PhysicsError


# ICRU Report 44 (1989) compositions, mass fractions; densities g/cm^3 (as tabulated by NIST, "Tissue, Soft
# (ICRU-44)" and "Bone, Cortical (ICRU-44)").
ICRU44_SOFT_TISSUE = {"H": 0.102, "C": 0.143, "N": 0.034, "O": 0.708, "Na": 0.002, "P": 0.003, "S": 0.003,
                      "Cl": 0.002, "K": 0.003}


ICRU44_CORTICAL_BONE = {"H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001, "Mg": 0.002, "P": 0.103,
                        "S": 0.003, "Ca": 0.225}


MATERIAL_COMPOSITIONS: dict[str, Mapping[str, float] | str] = {
    "soft_tissue": ICRU44_SOFT_TISSUE,
    "bone": ICRU44_CORTICAL_BONE,
    "metal": "Ti",
    "water": "H2O",
}


def formula_from_mass_fractions(fractions: Mapping[str, float]) -> str:
    """Chemical formula with the atom ratios of a composition given by mass (w_i / A_i), for xraydb."""
    import xraydb

    total = sum(fractions.values())
    return "".join(f"{el}{w / total / xraydb.atomic_mass(el):.6f}" for el, w in fractions.items())


def mass_attenuation(material: str | Mapping[str, float], energies_kev: np.ndarray) -> np.ndarray:
    """Total mass attenuation coefficient (cm^2/g, coherent included, narrow beam) from xraydb.

    ``material``: a name in ``MATERIAL_COMPOSITIONS``, a chemical formula (``"H2O"``, ``"Ti"``) or a mapping of
    element -> mass fraction. ``xraydb.material_mu(formula, E_eV, density=1)`` returns mu/rho in these units."""
    import xraydb

    spec = MATERIAL_COMPOSITIONS.get(material, material) if isinstance(material, str) else material
    formula = spec if isinstance(spec, str) else formula_from_mass_fractions(spec)
    try:
        mu = xraydb.material_mu(formula, np.asarray(energies_kev, float) * 1000.0, density=1.0, kind="total")
    except Exception as error:  # xraydb raises plain errors for unknown elements
        raise PhysicsError(f"material {material!r}: xraydb cannot compute its attenuation ({error})") from None
    return np.atleast_1d(np.asarray(mu, np.float64))


def channel_attenuation(names: tuple[str, ...], energies_kev: np.ndarray,
                        overrides: tuple[tuple[str, str], ...] = ()) -> np.ndarray:
    """(n_materials, n_energies) mu/rho for the projector's material channels."""
    table = dict(overrides)
    for name in names:
        if name not in table and name not in MATERIAL_COMPOSITIONS:
            raise PhysicsError(f"material channel {name!r} has no composition; known: {sorted(MATERIAL_COMPOSITIONS)}")
    return np.stack([mass_attenuation(table.get(n, n), energies_kev) for n in names])
