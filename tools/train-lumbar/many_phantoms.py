"""The lumbar study with many bodies (issue 14 A): `make lumbar-many-phantoms`.

The wrist model showed that bodies, not steps, limit transfer to unseen bodies. Here the phantom side of the
lumbar study gets 72 bodies instead of 6:

* training: lumbar phantoms seeds 100-171 (`xrayseg phantom lumbar`, CT ids phantom100 ...), 1 virtual patient
  each, 10 lateral views, export seed 1, Dataset723 (720 images; the trainer holds out whole phantoms for
  validation);
* test: 12 phantoms never used for training or validation (seeds 200-211, ids testphantom200 ...), 10 views each,
  export seed 7, Dataset724 (120 images);
* both model families on the same training export (instance-aware L1 ... L5, S1; semantic "vertebra"), scored
  with `xrayseg lumbar-compare` on the unseen phantoms and on the CT body of `make train-lumbar`
  (``--ct-dataset``, default out/lumbar/ct/Dataset721_LumbarCT, made by that target).

Exports use the same settings as `make train-lumbar` (lumbar-lateral, 256 px, strong domain randomisation), and
training its recipe with 20000 steps and a validation every 1000. Nothing is bundled: the figures go to
OUT/study.json and the README. ``--instance-only`` skips the semantic family; ``--ct-blur-range LOW,HIGH`` gives
the training phantoms the export's scanner-resolution blur (the test phantoms stay sharp).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import EXPORT, train_options, trained_with, xrayseg  # noqa: E402

TRAIN_SEEDS, TEST_SEEDS = range(100, 172), range(200, 212)
STEPS = "20000"
PHANTOM_FILES = ("ct.nii.gz", "labels.nii.gz", "names.csv")


def make_phantoms(folder: Path, seeds: range, id_prefix: str) -> tuple[Path, bool]:
    """Phantoms in two processes at once (one numba thread each; the phantom builder is serial), kept where all
    their files were made by this phantom version from the same seed; returns the pairs CSV (CT ids
    ``id_prefix + seed``: an export's draws depend on them) and whether any phantom was made now."""
    def one(seed: int) -> bool:
        target = folder / f"p{seed}"
        if _current_phantom(target, seed):
            return False
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "XraySegInferLib.entry", "phantom", "lumbar", "--out", str(target),
                        "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "NUMBA_NUM_THREADS": "1"})
        return True

    with ThreadPoolExecutor(2) as pool:
        made = any(list(pool.map(one, seeds)))
    rows = ["ct,labels,id,names"] + [f"{folder.name}/p{s}/ct.nii.gz,{folder.name}/p{s}/labels.nii.gz,"
                                     f"{id_prefix}{s},{folder.name}/p{s}/names.csv" for s in seeds]
    pairs = folder.parent / f"{folder.name}.csv"
    pairs.write_text("\n".join(rows) + "\n")
    return pairs, made


def _current_phantom(target: Path, seed: int) -> bool:
    """All files there, made by this phantom version from ``seed`` (an older version's phantom is made again)."""
    from XraySegSimLib.phantom.lumbar import PHANTOM_VERSION

    if not all((target / name).exists() for name in (*PHANTOM_FILES, "phantom.json")):
        return False
    record = json.loads((target / "phantom.json").read_text())
    return record.get("version") == PHANTOM_VERSION and record.get("params", {}).get("seed") == seed


def export(pairs: Path, out: Path, dataset_id: str, name: str, seed: str, threads: str,
           reuse: bool, blur: tuple[float, float] = (0.0, 0.0)) -> tuple[Path, bool]:
    """The export's dataset folder, and whether it was made now (False: kept, with ``reuse``, when it exists and
    was made with the same scanner blur, FWHM LOW and HIGH in mm)."""
    dataset = out / f"Dataset{dataset_id}_{name}"
    if reuse and (dataset / "dataset.json").exists() and _blur_of(dataset) == list(blur):
        return dataset, False
    shutil.rmtree(out, ignore_errors=True)
    xrayseg("export", "--pairs", pairs, "--classes", out.parent / "levels.txt", "--virtual-patients", "1",
            "--views-per-ct", "10", "--seed", seed, "--threads", threads, "--dataset-id", dataset_id,
            "--dataset-name", name, "--out", out, *EXPORT, "--ct-blur-range", ",".join(map(str, blur)))
    return dataset, True


def _blur_of(dataset: Path) -> list[float]:
    config = json.loads((dataset / "export.json").read_text()).get("config", {})
    return [float(v) for v in config.get("virtual_patient_ranges", {}).get("blur_fwhm_mm", [0.0, 0.0])]


def semantic_copy(train: Path, folder: Path, remade: bool) -> Path:
    """The one-class copy of the training export, (re)made with it so both families see the same images."""
    from XraySegInferLib.lumbar_study import semantic_dataset

    kept = None if remade else next(folder.glob("Dataset*/dataset.json"), None)
    if kept is not None:
        return kept.parent
    shutil.rmtree(folder, ignore_errors=True)
    return semantic_dataset(train, folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "lumbar-many")
    parser.add_argument("--ct-dataset", type=Path, default=REPO / "out" / "lumbar" / "ct" / "Dataset721_LumbarCT")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--steps", default=STEPS)
    parser.add_argument("--reuse", action="store_true", help="keep exports and runs that are already complete")
    parser.add_argument("--instance-only", action="store_true", help="train and score the instance-aware family only")
    parser.add_argument("--local-contrast", metavar="SIGMA_PX",
                        help="train with the local-contrast input filter (xrayseg train --local-contrast)")
    parser.add_argument("--ct-blur-range", metavar="LOW,HIGH",
                        help="scanner-resolution blur (FWHM mm) of the training phantoms only (export's option)")
    args = parser.parse_args()
    from XraySegSimLib.errors import InputError
    from XraySegSimLib.virtual_patient import VirtualPatientRanges

    blur = (0.0, 0.0)
    if args.ct_blur_range:
        try:
            blur = tuple(float(v) for v in args.ct_blur_range.split(","))
            VirtualPatientRanges(blur_fwhm_mm=blur)
        except ValueError:
            parser.error(f"--ct-blur-range expects LOW,HIGH (two numbers), got '{args.ct_blur_range}'")
        except InputError as error:
            parser.error(str(error))

    from XraySegInferLib.lumbar_study import LEVEL_CLASSES

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "levels.txt").write_text(LEVEL_CLASSES)
    pairs, new_phantoms = make_phantoms(out / "phantoms", TRAIN_SEEDS, "phantom")
    train, remade = export(pairs, out / "phantom", "723", "LumbarPhantomMany", "1", args.threads,
                           args.reuse and not new_phantoms, blur)
    pairs, new_phantoms = make_phantoms(out / "test-phantoms", TEST_SEEDS, "testphantom")
    test, _ = export(pairs, out / "test", "724", "LumbarPhantomTest", "7", args.threads,
                     args.reuse and not new_phantoms)
    families = {"instance": train}
    if not args.instance_only:
        families["semantic"] = semantic_copy(train, out / "phantom-semantic", remade)
    # the study's recipe with a validation every 1000 steps (the packaged weights are the best validation's)
    options = train_options("1000") + (["--local-contrast", args.local_contrast] if args.local_contrast else [])
    runs = {}
    for family, data in families.items():
        run = out / f"run-{family}"
        runs[family] = run / "model"
        if args.reuse and not remade and trained_with(run / "model", args.local_contrast):
            continue
        shutil.rmtree(run, ignore_errors=True)
        xrayseg("train", data, "--steps", args.steps, "--threads", args.threads, "--out", run, *options,
                "--name",
                f"Lumbar {'L1-L5+S1 (instance-aware' if family == 'instance' else 'vertebra (semantic'}"
                f", {len(TRAIN_SEEDS)} phantoms)")
    from XraySegSimLib.phantom.lumbar import PHANTOM_VERSION

    study = {"phantom_version": PHANTOM_VERSION, "train_phantoms": [TRAIN_SEEDS.start, TRAIN_SEEDS.stop - 1],
             "test_phantoms": [TEST_SEEDS.start, TEST_SEEDS.stop - 1], "steps": int(args.steps),
             "train_ct_blur_fwhm_mm": args.ct_blur_range or "0,0",
             "local_contrast_px": float(args.local_contrast) if args.local_contrast else None}
    targets = {"unseen_phantoms": test}
    if args.ct_dataset.is_dir():
        targets["ct"] = args.ct_dataset
    else:
        print(f"note: no CT dataset at {args.ct_dataset} (make train-lumbar makes it): scored on the phantoms only")
    for key, dataset in targets.items():
        report = out / f"compare-to-{key}"
        semantic = ("--semantic", runs["semantic"]) if "semantic" in runs else ()
        xrayseg("lumbar-compare", dataset, *semantic, "--instance", runs["instance"], "--split", "train",
                "--out", report)
        study[f"tested_on_{key}"] = json.loads((report / "lumbar.json").read_text())
    (out / "study.json").write_text(json.dumps(study, indent=2))
    print(f"study -> {out / 'study.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
