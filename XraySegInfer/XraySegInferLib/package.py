"""Model packages: a folder with ``model.safetensors`` (the weights), ``model.json`` (the model card) and
``manifest.json`` (the SHA-256 and size of both, written last).

The card holds everything needed to run the model and to judge it: the architecture and its parameters, the
label mode, the classes (names, colours, SNOMED CT codes where known), the input pixel spacing, the shared
normalisation's parameters, the training data summary, the metrics, a version, and the SHA-256 of the
weights file. :func:`load_package` checks the manifest (so an edited card, e.g. permuted class names or another
pixel spacing, is refused as surely as edited weights), that the network can be built from the card, and that the
weights fit it (class count vs network output, layer shapes); every failure is a :class:`ModelPackageError`
that says what is wrong. A deliberate edit of the card is sealed again with :func:`seal_package`
(``xrayseg seal-model DIR``); :func:`update_card` writes a card and its manifest together.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from typing import TYPE_CHECKING

from .errors import ModelPackageError

if TYPE_CHECKING:  # torch is imported where a network is built or saved: reading a card must not need it
    import torch

CARD_FORMAT = "xrayseg-model"
CARD_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "xrayseg-model-manifest"

SCT = "SCT"
LEFT = {"CodeValue": "7771000", "CodingSchemeDesignator": SCT, "CodeMeaning": "Left"}
RIGHT = {"CodeValue": "24028007", "CodingSchemeDesignator": SCT, "CodeMeaning": "Right"}
# Bone structures (SNOMED CT body structure concepts, as in the TG-263 -> SNOMED CT mapping), by name pattern.
SNOMED_BONES: list[tuple[str, str, str]] = [
    (r"rib", "113197003", "Bone structure of rib"),
    (r"clavic", "51299004", "Bone structure of clavicle"),
    (r"scapul", "79601000", "Bone structure of scapula"),
    (r"humer", "85050009", "Bone structure of humerus"),
    (r"stern", "56873002", "Bone structure of sternum"),
    (r"femur", "71341001", "Bone structure of femur"),
    (r"acetabul", "37783008", "Bone structure of acetabulum"),
    (r"ilium|iliac", "22356005", "Bone structure of ilium"),
    (r"(vertebra|vertebrae)[_ ]?T\d+|thoracic[_ ]?(spine|vertebra)", "35769007", "Bone structure of thoracic vertebra"),
    (r"(vertebra|vertebrae)[_ ]?L\d+|lumbar[_ ]?(spine|vertebra)", "73903008", "Bone structure of lumbar vertebra"),
    (r"spine|vertebra", "421060004", "Structure of vertebral column"),
    # Wrist (issue 13): code and meaning as in DICOM PS3.16 (pydicom 3.0.2 sr/_concepts_dict.py: RadiusBone and
    # Ulna in CID 7304, Scaphoid in CIDs 1000/1001/1006). The other carpals have no code verified here: they
    # get the generic "Bone" type.
    (r"radius", "62413002", "Radius"),
    (r"ulna", "23416004", "Ulna"),
    (r"scaphoid", "30518006", "Scaphoid"),
]


def snomed_for(name: str) -> dict | None:
    """{"category", "type", "modifier"} codes (DICOM code-sequence style) for a bone class name, or None."""
    lower = name.lower()
    for pattern, code, meaning in SNOMED_BONES:
        if re.search(pattern, name, re.IGNORECASE):
            entry = {"category": {"CodeValue": "91723000", "CodingSchemeDesignator": SCT,
                                  "CodeMeaning": "Anatomical structure"},
                     "type": {"CodeValue": code, "CodingSchemeDesignator": SCT, "CodeMeaning": meaning}}
            if re.search(r"(^|[_\s-])(left|l)($|[_\s-])", lower) or "left" in lower:
                entry["modifier"] = LEFT
            elif re.search(r"(^|[_\s-])(right|r)($|[_\s-])", lower) or "right" in lower:
                entry["modifier"] = RIGHT
            return entry
    return None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_card(*, name: str, architecture: dict, mode: str, classes: list[dict], spacing_mm: tuple[float, float],
              patch_size: tuple[int, int], normalization: dict, training: dict | None = None,
              metrics: dict | None = None, version: str = "0.1.0", flip_tta: bool = False,
              field_of_view_mm: tuple[float, float] | None = None, description: str = "") -> dict:
    """A model card (without the weights' hash, which :func:`save_package` adds)."""
    from . import __version__

    card_classes = []
    for index, cls in enumerate(classes, start=1):
        entry = {"index": index, "name": cls["name"], "color": [float(c) for c in cls["color"]]}
        code = cls.get("snomed", snomed_for(cls["name"]))
        if code:
            entry["snomed"] = code
        card_classes.append(entry)
    return {
        "format": CARD_FORMAT, "format_version": CARD_VERSION, "name": name, "version": version,
        "description": description, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": {"xrayseg_infer": __version__, "torch": _torch_version(), "monai": _monai_version()},
        "architecture": dict(architecture), "mode": mode,
        "out_channels": out_channels_for(mode, len(card_classes)),
        "classes": card_classes,
        "input": {"channels": 1, "photometric": "MONOCHROME2", "pixel_spacing_mm": [float(s) for s in spacing_mm],
                  "spacing_order": "row_mm, column_mm", "patch_size": [int(p) for p in patch_size],
                  "field_of_view_mm": [float(f) for f in field_of_view_mm] if field_of_view_mm else None},
        "normalization": {"function": "XraySegSimLib.physics.normalize_radiograph", **normalization},
        "inference": {"sliding_window_overlap": 0.25, "flip_tta": bool(flip_tta),
                      "threshold": 0.5 if mode == "multilabel" else None},
        "training": training or {}, "metrics": metrics or {},
    }


def _torch_version() -> str:
    import torch

    return torch.__version__


def out_channels_for(mode: str, n_classes: int) -> int:
    """Network outputs for ``n_classes`` in ``mode`` (``networks.out_channels_for``; imported here on use)."""
    from .networks import out_channels_for as rule

    return rule(mode, n_classes)


def build_network(architecture: dict, n_classes: int, mode: str):
    """``networks.build_network`` (torch and MONAI are imported on use)."""
    from .networks import build_network as build

    return build(architecture, n_classes, mode)


def _monai_version() -> str:
    try:
        import monai

        return monai.__version__
    except ImportError:  # pragma: no cover
        return "?"


def save_package(folder: str | Path, network: torch.nn.Module, card: dict) -> Path:
    """Write ``model.safetensors`` then ``model.json`` (with the weights' SHA-256 and size); returns the folder."""
    from safetensors.torch import save_file
    from XraySegSimLib.io import atomic_path, write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in network.state_dict().items()}
    weights = folder / WEIGHTS_FILE
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": CARD_FORMAT})
    card = dict(card)
    card["weights"] = {"file": WEIGHTS_FILE, "sha256": sha256_file(weights), "bytes": weights.stat().st_size,
                       "parameters": int(sum(v.numel() for v in state.values()))}
    write_json(folder / CARD_FILE, card)
    write_manifest(folder)
    return folder


def write_manifest(folder: str | Path) -> Path:
    """``manifest.json``: SHA-256 and size of the card and of the weights file it names (written last)."""
    from XraySegSimLib.io import write_json

    folder = Path(folder)
    card = json.loads((folder / CARD_FILE).read_text())
    files = {}
    for name in (CARD_FILE, (card.get("weights") or {}).get("file", WEIGHTS_FILE)):
        files[name] = {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
    write_json(folder / MANIFEST_FILE, {"format": MANIFEST_FORMAT, "format_version": 1, "files": files})
    return folder / MANIFEST_FILE


def update_card(folder: str | Path, card: dict) -> None:
    """Replace a package's card (e.g. new metrics) and seal it in the manifest."""
    from XraySegSimLib.io import write_json

    write_json(Path(folder) / CARD_FILE, card)
    write_manifest(folder)


def seal_package(folder: str | Path) -> Path:
    """Accept the package's current card and weights (after a deliberate edit): check that the card is a card
    (a 2D radiograph model's or a 3D CT model's) and its weights hash holds, then rewrite ``manifest.json``."""
    card, folder = _read_any_card(folder)
    weights = folder / card["weights"].get("file", WEIGHTS_FILE)
    if not weights.is_file():
        raise ModelPackageError(f"{folder}: the weights file {weights.name} is missing")
    if card["weights"].get("sha256") != sha256_file(weights):
        raise ModelPackageError(f"{weights}: its SHA-256 does not match the card's; a seal covers the card only, "
                                "the weights must be the ones the card names")
    return write_manifest(folder)


def _read_any_card(path: str | Path) -> tuple[dict, Path]:
    """(card, folder) of a 2D package (checked by :func:`read_card`) or of a 3D CT package (``ct_package``)."""
    from .ct_package import CT_CARD_FORMAT

    path = Path(path)
    card_path = path / CARD_FILE if path.is_dir() else path
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError):
        card = None
    if not isinstance(card, dict) or card.get("format") != CT_CARD_FORMAT:
        return read_card(path)  # a 2D card, or one read_card says what is wrong with
    if not isinstance(card.get("weights"), dict) or "architecture" not in card:
        raise ModelPackageError(f"{card_path}: the 3D model card lacks its weights or architecture")
    return card, card_path.parent


def verify_manifest(folder: Path, card: dict) -> None:
    """Refuse a package whose card or weights differ from what its ``manifest.json`` recorded."""
    manifest_path = folder / MANIFEST_FILE
    fix = f"restore the package, or if you changed it on purpose run 'xrayseg seal-model {folder}'"
    if not manifest_path.is_file():
        raise ModelPackageError(f"{folder}: no {MANIFEST_FILE}, so the model card cannot be checked (its classes, "
                                f"spacing and normalisation must fit the weights); {fix}")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        assert manifest.get("format") == MANIFEST_FORMAT and isinstance(files, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ModelPackageError(f"{manifest_path} is not a readable model manifest; {fix}") from None
    weights_name = (card.get("weights") or {}).get("file", WEIGHTS_FILE)
    for name in (CARD_FILE, weights_name):
        if name not in files:
            raise ModelPackageError(f"{manifest_path} does not cover {name}; {fix}")
        path = folder / name
        actual = sha256_file(path)
        expected = str(files[name].get("sha256"))
        if actual != expected:
            what = ("the model card was edited after the package was made: class names, pixel spacing or "
                    "normalisation may no longer fit the weights" if name == CARD_FILE else
                    "the weights are corrupt or belong to another package")
            raise ModelPackageError(f"{path}: SHA-256 {actual[:12]}... does not match the manifest's "
                                    f"{expected[:12]}...; {what}. {fix[0].upper() + fix[1:]}")


@dataclass
class LoadedModel:
    network: torch.nn.Module
    card: dict
    folder: Path

    @property
    def mode(self) -> str:
        return self.card["mode"]

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.card["classes"]]

    @property
    def spacing_mm(self) -> tuple[float, float]:
        return tuple(self.card["input"]["pixel_spacing_mm"])  # type: ignore[return-value]


def read_card(path: str | Path) -> tuple[dict, Path]:
    """(card, folder) from a package folder or its model.json."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    card_path = folder / CARD_FILE if path.is_dir() else path
    if not path.exists():
        raise ModelPackageError(f"model package not found: {path}")
    if not card_path.is_file():
        raise ModelPackageError(f"{folder} is not a model package: {CARD_FILE} (the model card) is missing")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelPackageError(f"{card_path}: the model card is not valid JSON ({error})") from error
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ModelPackageError(f"{card_path}: not an XraySeg model card (format is {card.get('format')!r}, "
                                f"expected {CARD_FORMAT!r})" if isinstance(card, dict) else
                                f"{card_path}: not an XraySeg model card")
    if int(card.get("format_version", 0)) > CARD_VERSION:
        raise ModelPackageError(f"{card_path}: card format version {card.get('format_version')} is newer than "
                                f"this XraySeg understands ({CARD_VERSION}); update XraySeg")
    missing = [k for k in ("architecture", "mode", "classes", "input", "normalization", "weights") if k not in card]
    if missing:
        raise ModelPackageError(f"{card_path}: the model card lacks {', '.join(missing)}")
    return card, folder


def load_package(path: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> LoadedModel:
    """Load and check a model package (see module docstring); the network is in eval mode on ``device``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    card, folder = read_card(path)
    weights = folder / card["weights"].get("file", WEIGHTS_FILE)
    if not weights.is_file():
        raise ModelPackageError(f"{folder}: the weights file {weights.name} is missing")
    if verify:
        verify_manifest(folder, card)
        expected = card["weights"].get("sha256")
        actual = sha256_file(weights)
        if not expected:
            raise ModelPackageError(f"{folder}: the model card has no SHA-256 of the weights")
        if actual != expected:
            raise ModelPackageError(
                f"{weights}: SHA-256 {actual[:12]}... does not match the model card's {expected[:12]}...; the "
                "weights are corrupt or belong to another card. Download the package again")
    classes = card["classes"]
    n_classes = len(classes)
    if n_classes < 1:
        raise ModelPackageError(f"{folder}: the model card lists no classes")
    expected_out = out_channels_for(card["mode"], n_classes)
    if int(card.get("out_channels", expected_out)) != expected_out:
        raise ModelPackageError(
            f"{folder}: the card lists {n_classes} classes in {card['mode']} mode, so the network needs "
            f"{expected_out} outputs, but the card says out_channels = {card.get('out_channels')}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelPackageError(f"{weights}: not a readable safetensors file ({error})") from error
    network = build_network(card["architecture"], n_classes, card["mode"])
    own = network.state_dict()
    unexpected = sorted(set(state) - set(own))
    absent = sorted(set(own) - set(state))
    if unexpected or absent:
        raise ModelPackageError(
            f"{folder}: the weights do not fit the architecture in the card ({card['architecture'].get('name')}): "
            f"{len(absent)} tensors missing (e.g. {absent[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    last = list(own)[-1]  # the output layer's bias (or weight): its first dimension is the output count
    if state[last].shape[:1] != own[last].shape[:1]:
        raise ModelPackageError(
            f"{folder}: the weights have {state[last].shape[0]} output channels but the card lists {n_classes} "
            f"classes in {card['mode']} mode, which need {expected_out}; the card and the weights do not belong "
            "together")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise ModelPackageError(
                f"{folder}: tensor {key} has shape {tuple(tensor.shape)} in the weights but "
                f"{tuple(own[key].shape)} in the network built from the card's architecture")
    network.load_state_dict(state, strict=True)
    network.to(device).eval()
    return LoadedModel(network, card, folder)
