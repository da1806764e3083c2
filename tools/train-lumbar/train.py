"""Reproduce the lumbar study (the CT against the phantoms): `make train-lumbar`.

Two bodies, never mixed between training and test:

* "ct": the abdomen-pelvis CT of the TotalSegmentator sdist (`xrayseg fetch-sample abdomen-pelvis-ct`; its labels are
  TotalSegmentator outputs), 12 virtual patients, 120 lateral views;
* "phantom": 6 lumbar phantoms (`xrayseg phantom lumbar --seed 0..5`, OpenSim meshes), 2 virtual patients each,
  120 lateral views.

For each body, a per-level export (classes L1 ... L5, S1) and its one-class copy (vertebra) give the same images to
both model families. Each family is trained on one body and scored on the other (`xrayseg lumbar-compare`), both
ways. The study goes to OUT/study.json, and onto the card of the bundled model (tools/train-lumbar/mixed.py,
`make lumbar-mixed`, trained on this CT export and the many-phantom export). ``--bundle DIR`` bundles this
script's CT-trained instance model instead (the bundle before version 0.2.0 of the lumbar model).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXPORT = ["--view", "lumbar-lateral", "--size", "256", "--test-fraction", "0", "--domain-randomisation", "strong",
          "--quiet"]
# "--multilabel-ce softmax": the loss that trained the bundled lumbar models (the default became "bce" in session 16)
TRAIN = ["--recipe", "chest-sample", "--mode", "multilabel", "--patch-size", "192", "--val-every", "500", "--quiet",
         "--multilabel-ce", "softmax"]


def train_options(val_every: str) -> list[str]:
    """The study's training options with a validation every ``val_every`` steps."""
    options = [*TRAIN]
    options[options.index("--val-every") + 1] = val_every
    return options


def trained_with(model: Path, local_contrast: str | None, steps: str | None = None) -> bool:
    """A complete model package whose input filter is the one asked for (``local_contrast``: sigma in pixels, or
    None for no filter) and, when ``steps`` is given, trained for that many steps: a run is reused only then."""
    card = model / "model.json"
    if not card.is_file():
        return False
    card = json.loads(card.read_text())
    sigma = float(local_contrast) if local_contrast else None
    return card["architecture"].get("local_contrast_px") == sigma and (
        steps is None or card["training"]["steps"] == int(steps))


STEPS = {"ct": "2000", "phantom": "1500"}
# SNOMED CT codes of the levels (as TotalSegmentator's Slicer terminology uses them); S1 has no code of its own
# there, so it carries the sacrum's (S1 is the sacrum's first segment).
LEVEL_SNOMED = {"L1": ("66794005", "L1 vertebra"), "L2": ("14293000", "L2 vertebra"), "L3": ("36470004", "L3 vertebra"),
                "L4": ("11994002", "L4 vertebra"), "L5": ("49668003", "L5 vertebra"), "S1": ("54735007", "Sacrum")}


def xrayseg(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "XraySegInferLib.entry", *map(str, args)], check=True)


def export_bodies(out: Path, threads: str) -> dict[str, Path]:
    from XraySegInferLib.lumbar_study import LEVEL_CLASSES
    from XraySegSimLib.sample_data import fetch_sample

    levels = out / "levels.txt"
    levels.write_text(LEVEL_CLASSES)
    ct = fetch_sample("abdomen-pelvis-ct")
    xrayseg("export", "--ct", ct["ct"], "--labels", ct["labels"], "--names", ct["names"], "--classes", levels,
            "--virtual-patients", "12", "--views-per-ct", "120", "--seed", "0", "--threads", threads,
            "--dataset-id", "721", "--dataset-name", "LumbarCT", "--out", out / "ct", *EXPORT)
    rows = ["ct,labels,id,names"]
    for seed in range(6):
        folder = out / "phantoms" / f"p{seed}"
        xrayseg("phantom", "lumbar", "--out", folder, "--seed", str(seed))
        rows.append(f"phantoms/p{seed}/ct.nii.gz,phantoms/p{seed}/labels.nii.gz,phantom{seed},"
                    f"phantoms/p{seed}/names.csv")
    (out / "phantoms.csv").write_text("\n".join(rows) + "\n")
    xrayseg("export", "--pairs", out / "phantoms.csv", "--classes", levels, "--virtual-patients", "2",
            "--views-per-ct", "20", "--seed", "1", "--threads", threads, "--dataset-id", "722",
            "--dataset-name", "LumbarPhantom", "--out", out / "phantom", *EXPORT)
    return {"ct": out / "ct" / "Dataset721_LumbarCT", "phantom": out / "phantom" / "Dataset722_LumbarPhantom"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "lumbar")
    parser.add_argument("--bundle", type=Path,
                        help="bundle the CT-trained instance model here (the bundle is now mixed.py's model)")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--reuse", action="store_true", help="keep exports and runs that are already complete")
    args = parser.parse_args()

    from XraySegInferLib.lumbar_study import semantic_dataset

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.reuse and all((out / b).is_dir() for b in ("ct", "phantom")):
        datasets = {"ct": out / "ct" / "Dataset721_LumbarCT", "phantom": out / "phantom" / "Dataset722_LumbarPhantom"}
    else:
        datasets = export_bodies(out, args.threads)
    semantic = {body: semantic_dataset(path, out / f"{body}-semantic") for body, path in datasets.items()}
    runs = {}
    for body in ("ct", "phantom"):
        short = "ct" if body == "ct" else "ph"
        for family, data in (("instance", datasets[body]), ("semantic", semantic[body])):
            run = out / f"run-{short}-{family}"
            if not (args.reuse and (run / "model" / "model.json").exists()):
                shutil.rmtree(run, ignore_errors=True)
                xrayseg("train", data, "--steps", STEPS[body], "--threads", args.threads, "--out", run, *TRAIN,
                        "--name", f"Lumbar {'L1-L5+S1 (instance-aware' if family == 'instance' else 'vertebra (semantic'}"
                                  f", trained on {body})")
            runs[(body, family)] = run / "model"
    from XraySegSimLib.phantom.lumbar import PHANTOM_VERSION

    study = {"phantom_version": PHANTOM_VERSION}  # the study's figures depend on it (version 2: T11-T12, ribs, femurs)
    for train_body, test_body in (("ct", "phantom"), ("phantom", "ct")):
        report = out / f"compare-{train_body}-to-{test_body}"
        xrayseg("lumbar-compare", datasets[test_body], "--semantic", runs[(train_body, "semantic")],
                "--instance", runs[(train_body, "instance")], "--split", "train", "--out", report)
        study[f"trained_on_{train_body}_tested_on_{test_body}"] = json.loads((report / "lumbar.json").read_text())
    (out / "study.json").write_text(json.dumps(study, indent=2))
    if args.bundle:
        bundle_model(runs[("ct", "instance")], args.bundle, study)
        print(f"bundled -> {args.bundle}")
    return 0


CT_DESCRIPTION = ("Lateral lumbar radiographs: L1-L5 and S1, each its own class (instance-aware, multi-label so "
                  "overlaps survive); trained on DRRs of one abdomen-pelvis CT's virtual patients")
CT_VALIDATED = ("lateral DRRs of a body never seen in training (lumbar phantoms for the CT-trained model); no real "
                "radiograph with masks was available, so real-image accuracy is NOT validated")


def bundle_model(model: Path, bundle: Path, study: dict, description: str = CT_DESCRIPTION,
                 validated: str = CT_VALIDATED, version: str | None = None) -> None:
    """Copy an instance-aware model, name its segments L1 ... S1 with SNOMED codes, store the study, seal it."""
    from XraySegInferLib.package import CARD_FILE, seal_package

    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(model, bundle)
    card = json.loads((bundle / CARD_FILE).read_text())
    for entry in card.get("classes", []):
        code, meaning = LEVEL_SNOMED[entry["name"]]
        entry["snomed"] = {"category": {"CodeValue": "91723000", "CodingSchemeDesignator": "SCT",
                                        "CodeMeaning": "Anatomical structure"},
                           "type": {"CodeValue": code, "CodingSchemeDesignator": "SCT", "CodeMeaning": meaning}}
    card["name"] = "xrayseg-lumbar-vertebrae"
    card["version"] = version or card.get("version", "0.1.0")
    card["description"] = description
    card["metrics"] = dict(card.get("metrics", {}), lumbar_study=study)
    card["validated"] = validated
    (bundle / CARD_FILE).write_text(json.dumps(card, indent=2))
    seal_package(bundle)
    add_to_catalog(bundle, card)


def add_to_catalog(bundle: Path, card: dict) -> None:
    """Put the package in the Infer module's offline model catalog (Resources/models.json)."""
    from XraySegInferLib.models import CATALOG_PATH

    catalog = json.loads(CATALOG_PATH.read_text())
    entry = {"id": "lumbar-vertebrae", "card_name": card["name"], "folder": bundle.name,
             "version": card.get("version", "0.1.0"), "title": "Lumbar vertebrae L1-L5, S1 (lateral radiographs)",
             "description": card["description"], "sha256": card["weights"]["sha256"],
             "classes": [c["name"] for c in card["classes"]], "url": None}
    catalog["models"] = [m for m in catalog["models"] if m.get("id") != entry["id"]] + [entry]
    CATALOG_PATH.write_text(json.dumps(catalog, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
