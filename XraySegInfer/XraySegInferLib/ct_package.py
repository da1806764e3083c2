"""3D CT model packages (``model.safetensors`` + ``model.json`` card) and whole-volume sliding-window prediction.

The card names the architecture, the structure, the voxel spacing the network works at, the patch size and the
SHA-256 of the weights. ``manifest.json`` seals the card and the weights as for the 2D packages
(``package.write_manifest`` / ``verify_manifest``), so neither an edited card nor swapped weights load silently.
Weights are safetensors (no pickle); float16 on disk, float32 in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ModelPackageError
from .package import CARD_FILE, WEIGHTS_FILE

if TYPE_CHECKING:
    from .ct_data import MetalSuppression

CT_CARD_FORMAT = "xrayseg-ct-model/1"


def save_ct_package(folder: str | Path, network, card: dict[str, Any]) -> Path:
    """Write the weights (float16), the card, then the manifest that seals both; returns the folder."""
    from safetensors.torch import save_file
    from XraySegSimLib.io import atomic_path, write_json

    from .package import sha256_file, write_manifest

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in network.state_dict().items()}
    weights = folder / WEIGHTS_FILE
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": CT_CARD_FORMAT})
    card = dict(card, format=CT_CARD_FORMAT)
    card["weights"] = {"file": WEIGHTS_FILE, "sha256": sha256_file(weights), "bytes": weights.stat().st_size,
                       "parameters": int(sum(v.numel() for v in state.values()))}
    write_json(folder / CARD_FILE, card)
    write_manifest(folder)
    return folder


@dataclass
class CtModel:
    """A loaded 3D model: the network in eval mode and its card."""

    network: Any
    card: dict[str, Any]
    device: Any

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.card["spacing_mm"])

    @property
    def metal_suppression(self) -> "MetalSuppression | None":
        """The card's ``MetalSuppression`` (None: metal is only clipped to the HU window)."""
        from .ct_data import MetalSuppression

        return MetalSuppression.from_card(self.card.get("metal_suppression"))

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.card["patch_size"])

    def probability(self, volume: np.ndarray, overlap: float = 0.5) -> np.ndarray:
        """Foreground probability of a normalised volume ``[k, j, i]`` at the card's spacing (sliding window).

        A volume smaller than the patch is padded with air (-1), as training pads patches beyond a crop's edge:
        with edge replication instead, a crop of a few dozen slices looked unlike anything seen in training."""
        import torch
        from monai.inferers import sliding_window_inference

        # An ensemble (ct_ensemble): each member over the whole volume, then the mean of their probabilities.
        members = getattr(self.network, "members", None) or [self.network]
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(volume, np.float32))[None, None].to(self.device)
            probabilities = []
            for member in members:
                logits = sliding_window_inference(x, self.patch_size, 2, member, overlap=overlap,
                                                  mode="gaussian", padding_mode="constant", cval=-1.0)
                probabilities.append(torch.softmax(logits, 1)[0, 1].float())
            return torch.stack(probabilities).mean(0).cpu().numpy()


def load_ct_package(path: str | Path, device: str = "cpu") -> CtModel:
    """Load and check a 3D model package; ``ModelPackageError`` says what is wrong."""
    import torch
    from safetensors.torch import load_file

    from .ct_networks import build_ct_network
    from .package import sha256_file, verify_manifest

    folder = Path(path)
    card_path = folder / CARD_FILE if folder.is_dir() else folder
    folder = card_path.parent
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as error:
        raise ModelPackageError(f"{card_path} is not a readable model card ({error})") from None
    if card.get("format") != CT_CARD_FORMAT:
        raise ModelPackageError(f"{card_path} is not a 3D CT model card (format {card.get('format')!r}); 2D "
                                "radiograph models are used by 'xrayseg infer'")
    verify_manifest(folder, card)
    weights = folder / card["weights"]["file"]
    if not weights.exists() or sha256_file(weights) != card["weights"]["sha256"]:
        raise ModelPackageError(f"{weights} is missing or is not the file the card describes (SHA-256 mismatch)")
    if card.get("ensemble"):  # several networks averaged (ct_ensemble)
        from .ct_ensemble import build_ensemble

        network = build_ensemble(card["architecture"], int(card["ensemble"]["members"]))
    else:
        network = build_ct_network(card["architecture"], 2)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ModelPackageError(f"{weights} does not fit the card's architecture: {str(error)[:200]}") from None
    torch_device = torch.device(device)
    return CtModel(network.to(torch_device).eval(), card, torch_device)


def update_card(folder: str | Path, **fields: Any) -> dict[str, Any]:
    """Store ``fields`` (e.g. metrics=...) in a package's card and re-sign it; the weights are checked first."""
    from XraySegSimLib.io import write_json

    from .package import write_manifest

    model = load_ct_package(folder)
    card = dict(model.card, **fields)
    write_json(Path(folder) / CARD_FILE, card)
    write_manifest(folder)
    return card
