"""``xrayseg plausibility | lobo``: evaluation that measures transfer (issue 10, item 7).

* ``xrayseg plausibility RADIOGRAPH [--model M] --out DIR``: the PA chest anatomy rules of
  :mod:`.plausibility` on a model's segmentation of a radiograph without reference masks (default: the real
  chest CR RG1 of the ``real-cr`` sample); writes plausibility.json, plausibility.md and an overlay with the
  lung fields, heart region and midline the rules use.
* ``xrayseg lobo DATASET [DATASET...] [--test PLAIN...] --out DIR``: leave-one-body-out (:mod:`.transfer_eval`):
  train without each CT, test on its views; writes lobo.json and lobo.md (Dice per class and held-out body).
* ``xrayseg merge-datasets A B --out DIR``: one dataset of links to several exports (training on several CTs
  exported one by one).
* ``xrayseg ensemble PKG PKG [...] --out DIR``: one package averaging models of one recipe trained with other
  seeds (:mod:`.ensemble`).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    plaus = sub.add_parser(
        "plausibility", help="anatomical plausibility rules of a PA chest segmentation (no reference needed)",
        description="Segment a PA chest radiograph and check the anatomy rules (spine on the midline, clavicles "
                    "high and on both sides, humeri lateral, ribs over the lung fields, nothing but axial bone and "
                    "ribs over the heart, no scattered fragments). Each rule reports its value, threshold and "
                    "reason. Exit status 0, or 1 with --require-pass when a rule fails.")
    plaus.add_argument("radiograph", type=Path, nargs="?",
                       help="PA chest radiograph (default: the real chest CR RG1_UNCR.dcm, fetched with SHA-256)")
    plaus.add_argument("--model", type=Path, help="model package folder (default: the bundled model)")
    plaus.add_argument("--out", type=Path, required=True, help="output folder")
    plaus.add_argument("--spacing", type=float, nargs=2, metavar=("ROW_MM", "COL_MM"),
                       help="pixel spacing when the file lacks it")
    plaus.add_argument("--require-pass", action="store_true", help="exit status 1 when any rule fails")
    plaus.add_argument("--device", default="auto")
    plaus.add_argument("--threads", type=int)
    plaus.set_defaults(handler=run_plausibility)

    lobo = sub.add_parser(
        "lobo", help="leave-one-body-out: train without each CT, test on its views (Dice per class and body)",
        description="For each CT (body) B of an exported dataset: train on the views of the other CTs, test on "
                    "every view of B. Writes OUT/<B>/train (the fold's model), OUT/<B>/eval, OUT/lobo.json and "
                    "OUT/lobo.md.")
    lobo.add_argument("datasets", type=Path, nargs="+",
                      help="dataset folder with views of two or more CTs, or several exports (one per CT)")
    lobo.add_argument("--out", type=Path, required=True, help="output folder")
    lobo.add_argument("--test", type=Path, nargs="+", dest="test_datasets",
                      help="take each held-out body's test views from these datasets (e.g. plain exports without "
                           "virtual patients or image-domain randomisation); default: its views in DATASETS")
    lobo.add_argument("--recipe", help="training recipe (as xrayseg train --recipe)")
    lobo.add_argument("--config", type=Path, help="JSON with TrainConfig fields (over the recipe)")
    lobo.add_argument("--steps", type=int, help="training steps per fold")
    lobo.add_argument("--bodies", nargs="+", help="CT ids to hold out (default: every CT); folds of other bodies "
                                                  "already in OUT/lobo.json are kept (runs per body make one table)")
    lobo.add_argument("--device", help="auto (default), cpu, cuda")
    lobo.add_argument("--threads", type=int)
    lobo.add_argument("--quiet", action="store_true")
    lobo.set_defaults(handler=run_lobo)

    merge = sub.add_parser(
        "merge-datasets", help="one dataset of links to the views of several exports (e.g. one export per CT)",
        description="Write OUT/<name of the first dataset> holding every view of the given exports (links, all in "
                    "imagesTr), for training on several separately exported CTs. The classes must match.")
    merge.add_argument("datasets", type=Path, nargs="+", help="dataset folders")
    merge.add_argument("--out", type=Path, required=True, help="output folder")
    merge.add_argument("--name", help="folder name of the merged dataset (Dataset<ID>_<Name>)")
    merge.set_defaults(handler=run_merge)

    ensemble = sub.add_parser(
        "ensemble", help="combine 2D model packages of the same recipe (other seeds) into one package",
        description="Write one model package whose output is the mean of the members' probabilities. The members "
                    "must share the architecture, label mode, classes, input and normalisation.")
    ensemble.add_argument("packages", type=Path, nargs="+", help="model package folders (two or more)")
    ensemble.add_argument("--out", type=Path, required=True, help="new, empty output folder")
    ensemble.add_argument("--name", help="the ensemble's name on its card (default: the first member's + ensemble)")
    ensemble.set_defaults(handler=run_ensemble)


def _rg1() -> Path:
    from .sample_radiograph import fetch_sample_radiograph

    return fetch_sample_radiograph("RG1_UNCR.dcm")


def run_plausibility(args) -> int:
    import warnings

    from XraySegSimLib.io import atomic_path, write_json, write_png

    from .cli import load_predictor, set_torch_threads
    from .plausibility import check_prediction, landmarks_overlay, rib_classes, rib_shadow_contrast
    from .reader import SpacingWarning, read_radiograph

    set_torch_threads(args)
    path = args.radiograph or _rg1()
    predictor = load_predictor(args.model, args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpacingWarning)  # the spacing's source is recorded below
        radiograph = read_radiograph(path)
        prediction = predictor.predict(radiograph, tuple(args.spacing) if args.spacing else None)
    report = check_prediction(prediction)
    args.out.mkdir(parents=True, exist_ok=True)
    card = getattr(getattr(predictor, "model", None), "card", {})
    result = {"radiograph": str(path), "model": card.get("name", str(args.model)),
              "model_version": card.get("version"), "spacing_mm": list(prediction.spacing_mm),
              "spacing_source": prediction.spacing_source, **report.to_dict()}
    ribs = rib_classes(list(prediction.class_names))
    if report.landmarks is not None and ribs:
        contrast = [v if math.isfinite(v) else None for v in  # JSON has no NaN: None where nothing to measure
                    rib_shadow_contrast(prediction.normalized, prediction.masks[ribs].any(0), report.landmarks)]
        result["rib_shadow_contrast"] = {"image_left_lung": contrast[0], "image_right_lung": contrast[1],
                                         "note": "a measurement, not a rule (plausibility.rib_shadow_contrast)"}
        print("rib-shadow contrast (not a rule): " + ", ".join(
            f"{side} lung {'n/a' if v is None else f'{v:.3f}'}" for side, v in zip(("image-left", "image-right"),
                                                                                   contrast)))
    write_png(args.out / "plausibility.png", landmarks_overlay(prediction, report))
    with atomic_path(args.out / "plausibility.md") as tmp:
        Path(tmp).write_text(f"Plausibility of {result['model']} {result['model_version']} on {path.name}\n\n"
                             + report.markdown() + "\n")
    write_json(args.out / "plausibility.json", result)
    print(report.markdown())
    print(f"wrote {args.out}/plausibility.json, plausibility.md, plausibility.png")
    return 1 if args.require_pass and not report.passed else 0


def run_lobo(args) -> int:
    from .errors import InputError
    from .training import RECIPES, TrainConfig
    from .transfer_eval import leave_one_body_out

    if args.recipe and args.recipe not in RECIPES:
        raise InputError(f"unknown recipe {args.recipe!r}; choose one of: {', '.join(RECIPES)}")
    data = json.loads(json.dumps(RECIPES[args.recipe])) if args.recipe else {}
    if args.config:
        if not args.config.is_file():
            raise InputError(f"training config not found: {args.config}; give an existing JSON file")
        data.update(json.loads(args.config.read_text()))
    for key in ("steps", "device", "threads"):
        if getattr(args, key, None) is not None:
            data[key] = getattr(args, key)
    try:
        config = TrainConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        raise InputError(f"training options: {error}; see xrayseg train --help") from error
    report = leave_one_body_out(list(args.datasets), args.out, config, args.bodies, progress=not args.quiet,
                                test_dataset_dir=list(args.test_datasets) if args.test_datasets else None)
    print(report.markdown())
    print(f"wrote {args.out}/lobo.json, lobo.md")
    return 0


def run_merge(args) -> int:
    from .dataset import read_dataset
    from .transfer_eval import merge_datasets

    root = merge_datasets(list(args.datasets), args.out, args.name)
    dataset = read_dataset(root)
    cts = sorted({c.ct_id for c in dataset.cases})
    print(f"{root}: {len(dataset.cases)} views of {len(cts)} CTs ({', '.join(cts)})")
    return 0


def run_ensemble(args) -> int:
    from .ensemble import combine_packages

    out = combine_packages(list(args.packages), args.out, args.name)
    print(f"ensemble of {len(args.packages)} -> {out}")
    return 0
