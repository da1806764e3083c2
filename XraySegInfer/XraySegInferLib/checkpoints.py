"""Training checkpoints that load without unpickling anything: one safetensors file per checkpoint.

The tensors (network weights, optimiser moments, the torch random state) are safetensors; everything else (step,
best Dice, history, the numpy random state, the optimiser's hyper-parameters, the AMP scaler, the training
configuration) is JSON in the file's own header (metadata key ``xrayseg_state``). One file is written atomically,
so a checkpoint is never half new and half old. A truncated or foreign file is refused with one line.

Checkpoints of older XraySeg versions (``checkpoint_*.pt``, pickles) are read only with
``torch.load(weights_only=True)``, which runs no code; ``trust_pickle=True`` loads them fully, with a warning.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

FORMAT = "xrayseg-checkpoint"
FORMAT_VERSION = 1
STATE_KEY = "xrayseg_state"
SUFFIX = ".safetensors"
LEGACY_SUFFIX = ".pt"


def checkpoint_path(out_dir: str | Path, name: str) -> Path:
    """``<out>/checkpoint_<name>.safetensors`` (name: ``last`` or ``best``)."""
    return Path(out_dir) / f"checkpoint_{name}{SUFFIX}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value  # NaN (a validation without foreground) is written as NaN, which Python's json reads back


def save_checkpoint(path: str | Path, model_state: dict, state: dict, optimizer_state: dict | None = None,
                    torch_rng=None) -> Path:
    """Write ``model_state`` (+ optimiser state, torch random state) and the JSON-able ``state`` to ``path``."""
    import torch
    from safetensors.torch import save_file
    from XraySegSimLib.io import atomic_path

    tensors: dict[str, torch.Tensor] = {f"model/{k}": v for k, v in model_state.items()}
    meta: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    if optimizer_state is not None:
        scalars: dict[str, dict] = {}
        for index, entry in optimizer_state["state"].items():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer/{index}/{key}"] = value
                else:
                    scalars.setdefault(str(index), {})[key] = value
        meta["optimizer"] = {"param_groups": optimizer_state["param_groups"], "scalars": scalars}
    if torch_rng is not None:
        tensors["rng/torch"] = torch_rng
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={STATE_KEY: json.dumps(_jsonable(meta))})
    return Path(path)


def load_checkpoint(path: str | Path) -> dict:
    """{"model": state dict, "optimizer": state dict or None, "torch_rng": tensor or None, **the JSON state}.

    Raises :class:`InputError` (one line) when the file is truncated, not a checkpoint, or from a newer format."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    hint = "delete it to start afresh, or give another --out"
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise InputError(f"checkpoint {path} cannot be read (truncated or not a safetensors file: "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__}); {hint}") from None
    try:
        meta = json.loads(header[STATE_KEY])
    except (KeyError, json.JSONDecodeError):
        raise InputError(f"{path} is not an XraySeg training checkpoint (no training state in it); {hint}") from None
    if meta.get("format") != FORMAT or int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format {meta.get('format')!r} version {meta.get('format_version')} "
                         f"is not one this XraySeg reads; {hint}")
    model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    optimizer = None
    if "optimizer" in meta:
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = value
        for index, entry in meta["optimizer"].get("scalars", {}).items():
            state.setdefault(int(index), {}).update(entry)
        groups = [dict(g, **{k: tuple(v) for k, v in g.items() if k == "betas"}) for g in
                  meta["optimizer"]["param_groups"]]  # JSON made the betas tuple a list
        optimizer = {"state": state, "param_groups": groups}
    out = {k: v for k, v in meta.items() if k != "optimizer"}
    out.update(model=model, optimizer=optimizer, torch_rng=tensors.get("rng/torch"))
    return out


def load_legacy_checkpoint(path: str | Path, trust_pickle: bool = False) -> dict:
    """A ``checkpoint_*.pt`` of an older XraySeg: ``torch.load(weights_only=True)`` (no code runs); if that refuses
    it, it is refused here too unless ``trust_pickle`` (then it is unpickled, with a warning)."""
    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - UnpicklingError, truncated zip, EOF...
        if not trust_pickle:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise InputError(
                f"{path} is a pickle that torch.load(weights_only=True) refuses ({first[:160]}); unpickling it "
                "could run code from the file, so it is not loaded. Pass --trust-pickle only if you made this file "
                "yourself, or delete it to start afresh") from None
        warnings.warn(f"--trust-pickle: unpickling {path}; this runs any code the file holds", stacklevel=2)
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001
            raise InputError(f"checkpoint {path} cannot be read ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise InputError(f"{path} is not an XraySeg training checkpoint (no 'model' in it)")
    return {"optimizer": state.get("optimizer"), "torch_rng": state.get("torch_rng"), **{
        k: v for k, v in state.items() if k not in ("optimizer", "torch_rng")}}


def find_checkpoint(out_dir: str | Path, name: str, trust_pickle: bool = False) -> dict | None:
    """The checkpoint ``name`` in ``out_dir`` (the safetensors one, else a legacy ``.pt``), or None."""
    path = checkpoint_path(out_dir, name)
    if path.is_file():
        return dict(load_checkpoint(path), path=str(path))
    legacy = path.with_suffix(LEGACY_SUFFIX)
    if legacy.is_file():
        return dict(load_legacy_checkpoint(legacy, trust_pickle), path=str(legacy))
    return None


__all__ = ["checkpoint_path", "find_checkpoint", "load_checkpoint", "load_legacy_checkpoint", "save_checkpoint"]
