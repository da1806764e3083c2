"""Ensembles of 3D CT models (``xrayseg ct-ensemble PKG PKG ... --out DIR``): one package, the mean probability.

Runs of the same recipe with other seeds disagree most where the data say least (the bundled femur recipe: held-out
Dice 0.846 and 0.864 over two seeds on one fold, 0.748 and 0.836 on the other); the mean of their foreground
probabilities removes much of that spread. The members must agree on everything that shapes their input and output
(architecture, spacing, patch size, structure, metal suppression, trained side). The package is an ordinary 3D
package whose card says ``ensemble``: ``CtModel.probability`` runs each member over the whole volume (sliding
window) and averages their probabilities, so ct-segment, ct-evaluate and "Label bones in CT" use it unchanged. (The
network's own forward, log of the mean softmax per patch, is for callers that run patches themselves.) The network
and the checks of the members are those of the 2D ensembles (:mod:`.ensemble`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Card fields that every member must share (they decide what the network sees and what its output means).
SHARED_FIELDS = ("architecture", "spacing_mm", "patch_size", "structure", "metal_suppression", "trained_side",
                 "hu_window")


def ensemble_network(members: list):
    """A torch module whose output is log(mean over ``members`` of softmax(member(x))), shape (B, 2, ...)."""
    from .ensemble import MeanProbability

    return MeanProbability(members, "multiclass")


def build_ensemble(architecture: dict[str, Any], count: int):
    """The untrained ensemble of ``count`` networks of ``architecture`` (what ``load_ct_package`` fills)."""
    from .ct_networks import build_ct_network

    return ensemble_network([build_ct_network(architecture, 2) for _ in range(count)])


def combine_ct_packages(packages: list[str | Path], out: str | Path, name: str | None = None) -> Path:
    """Write one package averaging the 3D ``packages`` (each checked as ``load_ct_package`` does) into ``out``."""
    from .ct_package import load_ct_package, save_ct_package
    from .ensemble import check_members, new_ensemble_folder

    target = new_ensemble_folder(packages, out, "ct-ensemble")
    models = [load_ct_package(p) for p in packages]
    first = models[0].card
    check_members(packages, [m.card for m in models], SHARED_FIELDS, lambda card: bool(card.get("ensemble")))
    card = {field: first[field] for field in SHARED_FIELDS if field in first}
    card.update(name=name or f"{first.get('name')} (ensemble of {len(models)})", metrics={},
                ensemble={"members": len(models), "combination": "mean of the members' foreground probabilities",
                          "sources": [{"package": Path(p).name, "weights_sha256": m.card["weights"]["sha256"],
                                       "training": m.card.get("training"), "metrics": m.card.get("metrics")}
                                      for p, m in zip(packages, models)]})
    network = ensemble_network([m.network for m in models])
    return save_ct_package(target, network.eval(), card)
