"""Models for the Slicer module: the bundled package, the catalog, user-imported models, the cache folder.

Everything works offline: nothing here downloads.

* **Bundled**: the first package under ``Resources/Models/*/`` (a folder with ``model.json`` and
  ``model.safetensors``). It is searched next to the module, in this order: ``$XRAYSEG_MODELS``;
  ``<module dir>/Resources/Models`` (the installed extension: ``qt-scripted-modules/Resources/Models``);
  ``<repository>/Resources/Models`` (a source checkout, where the inference CLI finds it too).
* **Catalog** (``XraySegInfer/Resources/models.json``): each entry has an ``id``, a ``version``, the expected
  classes and the SHA-256 of the weights file (``null`` until the release fills it in). A bundled package that does
  not match its catalog entry (hash or classes) is refused with a message, like a corrupt download.
* **Imported** (``import_model``): a package folder, its ``model.json``, a ``.zip`` of a package, or an nnU-Net v2
  results folder. Packages are checked completely (card, SHA-256, weights vs card) in a temporary folder of the
  cache and only then renamed into ``<cache>/models/<name>-<version>``, so a failed import leaves nothing half-made.
  nnU-Net folders are large and are registered where they lie (``<cache>/imported.json``).
* **Cache folder**: ``default_cache_dir()`` (``$XRAYSEG_INFER_CACHE``, else ``~/.cache/xrayseg/infer``; the Slicer
  module passes ``<Slicer cache>/XraySegInfer``). ``clear_cache`` removes the imported models and the registry.

Usage::

    entries = available_models(cache_dir)          # [ModelEntry]: bundled first, then imported
    entry = import_model("my_model.zip", cache_dir)
    clear_cache(cache_dir)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelPackageError

LIB_DIR = Path(__file__).resolve().parent
MODULE_DIR = LIB_DIR.parent
CATALOG_PATH = MODULE_DIR / "Resources" / "models.json"
REGISTRY_FILE = "imported.json"


@dataclass
class ModelEntry:
    """One model the module can run: ``kind`` is "bundled", "imported" or "nnunet"."""

    id: str
    label: str
    path: Path
    kind: str
    version: str = ""
    class_names: list[str] = field(default_factory=list)
    sha256: str | None = None
    catalog: dict | None = None  # the catalog entry it was matched to (bundled models)

    def to_dict(self) -> dict:
        return {"id": self.id, "label": self.label, "path": str(self.path), "kind": self.kind,
                "version": self.version, "classes": self.class_names, "sha256": self.sha256}


def default_cache_dir() -> Path:
    env = os.environ.get("XRAYSEG_INFER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "xrayseg" / "infer"


def model_search_dirs() -> list[Path]:
    """Folders holding bundled packages (``<dir>/<name>/model.json``), installed layout first."""
    dirs = []
    if os.environ.get("XRAYSEG_MODELS"):
        dirs.append(Path(os.environ["XRAYSEG_MODELS"]))
    dirs += [MODULE_DIR / "Resources" / "Models", MODULE_DIR.parent / "Resources" / "Models"]
    return dirs


def read_catalog(path: str | Path = CATALOG_PATH) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelPackageError(f"{path}: cannot read the model catalog ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ModelPackageError(f"{path}: the model catalog needs a 'models' list")
    return data["models"]


def _card(folder: Path) -> dict:
    from .package import read_card

    card, _ = read_card(folder)
    return card


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def _entry_for_package(folder: Path, kind: str, catalog: dict | None = None) -> ModelEntry:
    card = _card(folder)
    name, version = str(card.get("name") or folder.name), str(card.get("version", ""))
    label = f"{name} {version}".strip() + (" (bundled)" if kind == "bundled" else " (imported)")
    return ModelEntry(id=(catalog or {}).get("id") or f"{kind}:{_slug(name)}-{_slug(version)}", label=label,
                      path=folder, kind=kind, version=version, class_names=[c["name"] for c in card["classes"]],
                      sha256=card.get("weights", {}).get("sha256"), catalog=catalog)


def bundled_models(catalog: list[dict] | None = None) -> list[ModelEntry]:
    """Packages found in :func:`model_search_dirs` (the first folder that has any wins), matched to the catalog
    by card name."""
    try:
        catalog = read_catalog() if catalog is None else catalog
    except ModelPackageError:
        catalog = []
    for base in model_search_dirs():
        folders = sorted(p for p in base.glob("*") if (p / "model.json").is_file()) if base.is_dir() else []
        entries = []
        for folder in folders:
            try:
                card = _card(folder)
            except ModelPackageError:
                continue  # shown as unusable by the loader when chosen by path; skipped in the list
            match = next((c for c in catalog if c.get("card_name") == card.get("name")
                          or c.get("folder") == folder.name), None)
            entries.append(_entry_for_package(folder, "bundled", match))
        if entries:
            return entries
    return []


def _registry(cache_dir: Path) -> list[dict]:
    path = Path(cache_dir) / REGISTRY_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return data if isinstance(data, list) else []


def _write_registry(cache_dir: Path, entries: list[dict]) -> None:
    from XraySegSimLib.io import write_json

    write_json(Path(cache_dir) / REGISTRY_FILE, entries)


def imported_models(cache_dir: str | Path) -> list[ModelEntry]:
    cache_dir = Path(cache_dir)
    out = []
    models = cache_dir / "models"
    for folder in sorted(models.glob("*")) if models.is_dir() else []:
        if folder.name.startswith(".") or not (folder / "model.json").is_file():
            continue
        try:
            out.append(_entry_for_package(folder, "imported"))
        except ModelPackageError:
            continue
    for item in _registry(cache_dir):
        path = Path(item.get("path", ""))
        if item.get("kind") == "nnunet" and path.is_dir():
            out.append(ModelEntry(id=f"nnunet:{path}", label=f"{item.get('name', path.name)} (nnU-Net)", path=path,
                                  kind="nnunet", class_names=list(item.get("classes", []))))
    return out


def available_models(cache_dir: str | Path | None = None) -> list[ModelEntry]:
    """Bundled models first, then the imported ones."""
    return bundled_models() + imported_models(cache_dir or default_cache_dir())


def check_against_catalog(entry: ModelEntry) -> None:
    """A bundled package must match its catalog entry: same classes (names, in order), and the weights' SHA-256
    when the catalog gives one."""
    cat = entry.catalog
    if not cat:
        return
    expected_hash = cat.get("sha256")
    if expected_hash and entry.sha256 != expected_hash:
        raise ModelPackageError(
            f"{entry.path}: the weights' SHA-256 in the card ({(entry.sha256 or '?')[:12]}...) is not the catalog's "
            f"({expected_hash[:12]}...) for {cat.get('id')} {cat.get('version')}; reinstall the extension")
    classes = cat.get("classes")
    if classes and list(classes) != list(entry.class_names):
        raise ModelPackageError(
            f"{entry.path}: the model's classes {entry.class_names} are not the catalog's {list(classes)} for "
            f"{cat.get('id')}; the package belongs to another model")


def _verify_package(folder: Path) -> None:
    """Full check (card, hash, weights vs card) without keeping the network."""
    from .package import load_package

    load_package(folder, "cpu", verify=True)


def import_model(source: str | Path, cache_dir: str | Path | None = None) -> ModelEntry:
    """Import a model package (folder, ``model.json`` or ``.zip``) into the cache, or register an nnU-Net v2
    results folder. Raises :class:`ModelPackageError` (and leaves the cache as it was) when it is not usable."""
    from .nnunet import is_nnunet_results_folder

    source = Path(source)
    cache_dir = Path(cache_dir or default_cache_dir())
    if not source.exists():
        raise ModelPackageError(f"model not found: {source}")
    if source.is_dir() and is_nnunet_results_folder(source):
        dataset = json.loads((source / "dataset.json").read_text())
        classes = [k for k in dataset.get("labels", {}) if k != "background"]
        entries = [e for e in _registry(cache_dir) if Path(e.get("path", "")) != source.resolve()]
        entries.append({"kind": "nnunet", "path": str(source.resolve()), "name": source.parent.name or source.name,
                        "classes": classes})
        cache_dir.mkdir(parents=True, exist_ok=True)
        _write_registry(cache_dir, entries)
        return next(e for e in imported_models(cache_dir) if e.kind == "nnunet" and e.path == source.resolve())
    models = cache_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=models))
    try:
        if source.is_file() and source.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(source) as archive:
                    for member in archive.namelist():
                        target = (staging / member).resolve()
                        if not str(target).startswith(str(staging.resolve())):
                            raise ModelPackageError(f"{source}: unsafe path in the zip: {member}")
                    archive.extractall(staging / "unzipped")
            except zipfile.BadZipFile as error:
                raise ModelPackageError(f"{source}: not a readable zip file ({error})") from error
            cards = sorted((staging / "unzipped").rglob("model.json"))
            if not cards:
                raise ModelPackageError(f"{source}: the zip holds no model package (no model.json)")
            package = cards[0].parent
        elif source.is_file() and source.name == "model.json":
            package = source.parent
        elif source.is_dir() and (source / "model.json").is_file():
            package = source
        else:
            raise ModelPackageError(
                f"{source} is not a model: give a model package folder (model.json + model.safetensors), its "
                "model.json, a .zip of a package, or an nnU-Net v2 results folder (plans.json, dataset.json, "
                "fold_*)")
        _verify_package(package)
        card = _card(package)
        name = f"{_slug(str(card.get('name') or 'model'))}-{_slug(str(card.get('version', '0')))}"
        copy = staging / "package"
        if package != copy:
            shutil.copytree(package, copy)
        _verify_package(copy)  # what was copied is what was checked
        final = models / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(copy, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _entry_for_package(final, "imported")


def clear_cache(cache_dir: str | Path | None = None) -> int:
    """Remove the imported models and the registry (bundled models stay); returns how many entries went."""
    cache_dir = Path(cache_dir or default_cache_dir())
    removed = 0
    models = cache_dir / "models"
    if models.is_dir():
        for folder in models.iterdir():
            shutil.rmtree(folder, ignore_errors=True) if folder.is_dir() else folder.unlink()
            removed += 1
    registry = cache_dir / REGISTRY_FILE
    if registry.is_file():
        removed += len(_registry(cache_dir))
        registry.unlink()
    return removed


def catalog_entry_for_package(folder: str | Path, id_: str | None = None) -> dict:
    """The catalog entry for a package (for the release: paste it into ``Resources/models.json``)."""
    folder = Path(folder)
    card = _card(folder)
    return {"id": id_ or _slug(str(card.get("name"))), "card_name": card.get("name"), "folder": folder.name,
            "version": card.get("version"), "sha256": card["weights"].get("sha256"),
            "classes": [c["name"] for c in card["classes"]], "url": None}


def load_entry(entry: ModelEntry, device: str = "cpu", **kwargs):
    """A predictor for ``entry`` (``inference.Predictor`` or the nnU-Net adapter), checked against the catalog."""
    if entry.kind == "nnunet":
        from .nnunet import NnUNetPredictorAdapter

        return NnUNetPredictorAdapter(entry.path, device=device)
    check_against_catalog(entry)
    from .inference import Predictor

    return Predictor.from_package(entry.path, device, **kwargs)


__all__ = ["CATALOG_PATH", "ModelEntry", "available_models", "bundled_models", "catalog_entry_for_package",
           "check_against_catalog", "clear_cache", "default_cache_dir", "import_model", "imported_models",
           "load_entry", "model_search_dirs", "read_catalog"]
