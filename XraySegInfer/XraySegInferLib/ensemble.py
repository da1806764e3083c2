"""Ensembles of 2D radiograph models (``xrayseg ensemble PKG PKG ... --out DIR``): one package, the mean probability.

Runs of one recipe with other training seeds differ most where the data say least (the chest recipe's
leave-one-body-out mean moves by about +-0.008 from seed to seed); the mean of their probabilities keeps what the
members agree on. The members must agree on everything that shapes their input and the meaning of their output
(see :data:`SHARED_FIELDS`). The result is an ordinary package: its card's architecture is
``{"name": "Ensemble", "members": N, "member": <the members' architecture>}`` and ``networks.build_network``
builds it, so ``xrayseg infer | evaluate | plausibility``, XraySegInfer in Slicer and the Python API use it unchanged.
Its network returns, per pixel, the logit of the mean sigmoid (multilabel) or the log of the mean softmax
(multiclass), so the usual sigmoid or softmax of the output is the members' mean probability. (Where tiles of a
sliding window overlap, the window blends these logits, as it blends a single network's: there the result differs
from the mean of the members' blended probabilities by about 1e-3.)
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import InputError

ENSEMBLE = "Ensemble"
# Card fields every member must share: the network's input (spacing, patch, normalisation, architecture) and the
# meaning of its output (label mode and classes).
SHARED_FIELDS = ("architecture", "mode", "classes", "input", "normalization")
_EPSILON = 1e-6


class MeanProbability(torch.nn.Module):
    """The members' mean probability, returned as logits of the label mode (see module docstring)."""

    def __init__(self, members: list[torch.nn.Module], mode: str):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.mode = mode

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        outputs = [member(image).float() for member in self.members]
        if self.mode == "multiclass":
            mean = torch.stack([torch.softmax(o, 1) for o in outputs]).mean(0)
            return torch.log(mean.clamp_min(_EPSILON))
        mean = torch.stack([torch.sigmoid(o) for o in outputs]).mean(0).clamp(_EPSILON, 1 - _EPSILON)
        return torch.log(mean) - torch.log1p(-mean)


def ensemble_architecture(member: dict, count: int) -> dict:
    return {"name": ENSEMBLE, "members": int(count), "member": dict(member)}


def build_ensemble(architecture: dict, n_classes: int, mode: str) -> MeanProbability:
    """The untrained ensemble an ``Ensemble`` architecture describes (``load_package`` fills its weights)."""
    from .networks import build_network

    count = int(architecture.get("members", 0))
    member = architecture.get("member")
    if count < 2 or not isinstance(member, dict) or member.get("name") == ENSEMBLE:
        from .errors import ModelPackageError

        raise ModelPackageError(f"an Ensemble architecture needs 'members' >= 2 and one plain 'member' "
                                f"architecture, got {architecture}")
    return MeanProbability([build_network(member, n_classes, mode) for _ in range(count)], mode)


def new_ensemble_folder(packages: list, out: str | Path, command: str) -> Path:
    """``out`` as a Path, once the request makes sense: two or more packages, and no earlier files in ``out``."""
    if len(packages) < 2:
        raise InputError(f"{command} needs at least two model packages")
    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise InputError(f"{target} already holds files; give a new --out folder")
    return target


def check_members(packages: list, cards: list[dict], shared_fields: tuple[str, ...], is_ensemble) -> None:
    """Refuse members that cannot be averaged: one that is an ensemble already (``is_ensemble(card)``), or one
    whose card differs from the first member's in any of ``shared_fields`` (2D and 3D cards name theirs)."""
    first = cards[0]
    for path, card in zip(packages, cards):
        if is_ensemble(card):
            raise InputError(f"{path} is an ensemble already; give its member packages instead")
        for field in shared_fields:
            if card.get(field) != first.get(field):
                raise InputError(f"{path} differs from {packages[0]} in '{field}' ({str(card.get(field))[:80]} vs "
                                 f"{str(first.get(field))[:80]}); an ensemble needs members trained with the same "
                                 "settings")


def combine_packages(packages: list[str | Path], out: str | Path, name: str | None = None) -> Path:
    """Write one package whose network averages the 2D ``packages`` (each loaded and checked) into ``out``."""
    from .package import load_package, save_package

    target = new_ensemble_folder(packages, out, "ensemble")
    models = [load_package(p) for p in packages]
    first = models[0].card
    if len({m.card["weights"]["sha256"] for m in models}) < len(models):
        raise InputError("the same weights are given twice; an ensemble needs different runs (other seeds)")
    check_members(packages, [m.card for m in models], SHARED_FIELDS,
                  lambda card: card["architecture"].get("name") == ENSEMBLE)
    card = {key: value for key, value in first.items() if key not in ("weights", "metrics", "training")}
    card.update(name=name or f"{first['name']} (ensemble of {len(models)})", metrics={},
                architecture=ensemble_architecture(first["architecture"], len(models)),
                # the first member's overlap and threshold; flip TTA only where every member was trained for it
                inference={**first.get("inference", {}),
                           "flip_tta": all(m.card.get("inference", {}).get("flip_tta") for m in models)},
                # the first member's training summary (data, recipe) and every member's own
                training={**first.get("training", {}),
                          "ensemble_of": [{"package": Path(p).name, "weights_sha256": m.card["weights"]["sha256"],
                                           "training": m.card.get("training"), "metrics": m.card.get("metrics")}
                                          for p, m in zip(packages, models)]})
    network = MeanProbability([m.network for m in models], first["mode"])
    return save_package(target, network.eval(), card)
