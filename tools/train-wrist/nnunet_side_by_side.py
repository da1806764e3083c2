"""nnU-Net v2 side by side with the bundled wrist model (issue 13, item 5), on the same exports and the same metric.

Steps (each one resumable; ``all`` runs them in order):

* ``prepare``: the ``make train-wrist`` training export (``<run>/train/Dataset611_WristPhantoms``, an nnU-Net v2 raw
  dataset: region-based labels, ``regions_class_order``, an ignore label) is linked into ``<out>/raw``; nnU-Net
  extracts its fingerprint, plans and preprocesses the ``2d`` configuration only.
* ``train``: the stock ``nnUNetTrainer`` (default 2d U-Net, loss, augmentation, poly learning rate over the run),
  fold ``all`` (every training image; our unseen-wrist exports are the test), on the CPU with one torch thread and
  data augmentation in the main process, for a budget far below nnU-Net's 1000 x 250 iterations: ``--epochs`` x
  ``--iterations`` training iterations (the learning rate decays to zero over that budget) of ``--batch-size``
  images (2 instead of the planned 10: the same images per CPU-minute, five times the updates). The budget is
  written to ``<results>/xrayseg_budget.json``.
* ``evaluate``: ``NnUNetPredictorAdapter`` (region probabilities thresholded at 0.5, as our models) predicts every
  image of the unseen-wrist exports ``<run>/test/<view>/Dataset*`` and ``evaluate_dataset`` scores it, exactly as
  ``bundle.py`` scores our model; the table is written to ``<out>/side_by_side.json`` and ``.md``.
* ``card``: the figures go on our model's card (``metrics.nnunet_2d_side_by_side``) and into its README.

Full nnU-Net training (1000 epochs of 250 iterations) wants a GPU. Outputs stay under ``out/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "XraySegSim"), str(ROOT / "XraySegInfer"), str(Path(__file__).resolve().parent)]

DATASET = "Dataset611_WristPhantoms"


def set_nnunet_paths(out: Path) -> dict[str, Path]:
    """nnU-Net reads its three folders from the environment when it is first imported."""
    paths = {"nnUNet_raw": out / "raw", "nnUNet_preprocessed": out / "preprocessed", "nnUNet_results": out / "results"}
    for key, path in paths.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(path)
    os.environ["nnUNet_compile"] = "f"
    return paths


def results_folder(out: Path) -> Path:
    return out / "results" / DATASET / "nnUNetTrainer__nnUNetPlans__2d"


def prepare(run: Path, out: Path) -> None:
    """Link the export into nnUNet_raw, then fingerprint, plan and preprocess the 2d configuration."""
    paths = set_nnunet_paths(out)
    link = paths["nnUNet_raw"] / DATASET
    if not link.exists():
        link.symlink_to((run / "train" / DATASET).resolve(), target_is_directory=True)
    os.environ["nnUNet_n_proc_DA"] = "1"  # the planner sets torch threads to this
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)

    dataset_id = int(DATASET[7:10])
    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True)
    plan_experiments([dataset_id])
    preprocess([dataset_id], configurations=("2d",), num_processes=(1,))
    plans = json.loads((paths["nnUNet_preprocessed"] / DATASET / "nnUNetPlans.json").read_text())
    print("2d plan:", json.dumps({k: plans["configurations"]["2d"][k] for k in ("batch_size", "patch_size",
                                                                                 "spacing")}), flush=True)


def train(out: Path, epochs: int, iterations: int, val_iterations: int, batch_size: int | None = None,
          resume: bool = False) -> None:
    """The stock nnUNetTrainer on fold 'all', on the CPU, for ``epochs`` x ``iterations`` iterations (of
    ``batch_size`` images instead of the plan's, if given: the plans copied into the results say so).
    ``resume``: continue the last run up to ``epochs`` (nnU-Net's own checkpoint, loaded weights-only; the poly
    learning rate follows the new ``epochs``), as ``nnUNetv2_train --c`` does."""
    paths = set_nnunet_paths(out)
    os.environ["nnUNet_n_proc_DA"] = "0"  # augmentation in this process: one core
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    torch.set_num_threads(1)
    base = paths["nnUNet_preprocessed"] / DATASET
    plans = json.loads((base / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # as nnUNetv2_train without --c sets it
    planned_batch = plans["configurations"]["2d"]["batch_size"]
    if batch_size:  # the same images per CPU-minute, five times the updates
        plans["configurations"]["2d"]["batch_size"] = batch_size
    trainer = nnUNetTrainer(plans=plans, configuration="2d",
                            fold="all", dataset_json=json.loads((base / "dataset.json").read_text()),
                            device=torch.device("cpu"))
    # Set before initialize(): the poly learning-rate schedule is built over num_epochs.
    trainer.num_epochs, trainer.num_iterations_per_epoch = epochs, iterations
    trainer.num_val_iterations_per_epoch = val_iterations
    started, before = time.time(), {}
    if resume:
        from XraySegInferLib.nnunet import weights_only_loading

        fold = results_folder(out) / "fold_all"
        checkpoint = next(p for p in (fold / "checkpoint_final.pth", fold / "checkpoint_latest.pth") if p.is_file())
        before = json.loads((results_folder(out) / "xrayseg_budget.json").read_text())
        with weights_only_loading():
            trainer.load_checkpoint(str(checkpoint))
        before["continued_at_epoch"] = trainer.current_epoch
    trainer.run_training()
    budget = {**before, "trainer": "nnUNetTrainer (stock), plans nnUNetPlans, configuration 2d, fold all",
              "epochs": epochs, "iterations_per_epoch": iterations, "val_iterations_per_epoch": val_iterations,
              "batch_size": trainer.batch_size, "planned_batch_size": planned_batch,
              "patch_size": list(trainer.configuration_manager.patch_size),
              "training_images": len(list((paths["nnUNet_raw"] / DATASET / "imagesTr").glob("*"))),
              "device": "cpu, 1 torch thread, augmentation in the main process",
              "wall_minutes": round(before.get("wall_minutes", 0) + (time.time() - started) / 60, 1),
              "nnunet_default": "1000 epochs x 250 iterations (wants a GPU)"}
    (results_folder(out) / "xrayseg_budget.json").write_text(json.dumps(budget, indent=2))
    print(json.dumps(budget), flush=True)


def evaluate(run: Path, out: Path, ours_card: Path) -> dict:
    """Score the nnU-Net model per view with our evaluate_dataset; write the table next to our model's."""
    set_nnunet_paths(out)
    import torch

    torch.set_num_threads(1)
    from bundle import score_views
    from XraySegInferLib.nnunet import NnUNetPredictorAdapter

    predictor = NnUNetPredictorAdapter(results_folder(out), folds=("all",), device="cpu")
    ours = json.loads(ours_card.read_text())["metrics"]["held_out_phantoms"]["per_view"]

    def report(view: str, entry: dict) -> None:
        print(f"nnU-Net {view}: mean Dice {entry['mean_dice']:.3f} (ours {ours[view]['mean_dice']:.3f})", flush=True)

    per_view = score_views(predictor, run, out / "eval", report)
    budget = json.loads((results_folder(out) / "xrayseg_budget.json").read_text())
    result = {"budget": budget, "nnunet": per_view, "ours": ours}
    (out / "side_by_side.json").write_text(json.dumps(result, indent=2))
    (out / "side_by_side.md").write_text("\n".join(side_by_side_table(per_view, ours)) + "\n")
    return result


def add_to_card(out: Path, package: Path) -> None:
    """Put the nnU-Net figures on our model's card (re-sealed; weights unchanged) and rewrite its README."""
    from bundle import readme
    from XraySegInferLib.package import CARD_FILE, load_package, update_card
    from XraySegSimLib.io import atomic_path

    result = json.loads((out / "side_by_side.json").read_text())
    budget = result["budget"]
    card = load_package(package).card
    continued = (f"; {budget['continued_at_epoch']} epochs, then continued as nnUNetv2_train --c does"
                 if budget.get("continued_at_epoch") else "")
    card["metrics"]["nnunet_2d_side_by_side"] = {
        "note": (f"nnU-Net v2 (nnunetv2 2.8.1), stock nnUNetTrainer, plans nnUNetPlans, 2d configuration (patch "
                 f"{budget['patch_size']}; batch {budget['batch_size']} instead of the planned "
                 f"{budget['planned_batch_size']}, for more updates per CPU-minute), fold 'all' on our model's "
                 f"any-rotation training export ({budget['training_images']} images; ours also has the lateral "
                 "export, whose region atoms are numbered on their own), trained on the CPU for "
                 f"{budget['epochs']} epochs of "
                 f"{budget['iterations_per_epoch']} iterations ({budget['epochs'] * budget['iterations_per_epoch']} "
                 f"iterations{continued}, {budget['wall_minutes']} min wall) instead of nnU-Net's 1000 x 250: a "
                 "budget check, not nnU-Net's result; full training wants a GPU. Predicted per view on the same "
                 "unseen-wrist test exports and scored with the same code (XraySegInferLib.evaluate, region "
                 "probabilities thresholded at 0.5). Reproduce: make nnunet-wrist."),
        "budget": budget, "per_view": result["nnunet"]}
    update_card(package, card)
    with atomic_path(package / "README.md") as tmp:
        Path(tmp).write_text(readme(json.loads((package / CARD_FILE).read_text())))


def side_by_side_table(nnunet: dict, ours: dict) -> list[str]:
    """Markdown: mean Dice per view and per bone, ours | nnU-Net."""
    lines = ["| view | " + " | ".join(f"{v} ({nnunet[v]['angle_about_forearm_deg']} deg)" for v in nnunet) + " |",
             "|---|" + "---:|" * len(nnunet)]
    lines.append("| ours (mean Dice) | " + " | ".join(f"{ours[v]['mean_dice']:.3f}" for v in nnunet) + " |")
    lines.append("| nnU-Net 2d (mean Dice) | " + " | ".join(f"{nnunet[v]['mean_dice']:.3f}" for v in nnunet) + " |")
    for name in next(iter(nnunet.values()))["per_class"]:
        cells = [f"{ours[v]['per_class'][name]:.3f} / {nnunet[v]['per_class'][name]:.3f}" for v in nnunet]
        lines.append(f"| {name} (ours / nnU-Net) | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("prepare", "train", "evaluate", "card", "all"))
    parser.add_argument("--run", type=Path, default=ROOT / "out" / "train-wrist",
                        help="the make train-wrist folder (train/ and test/ exports)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "nnunet-wrist")
    parser.add_argument("--card", type=Path, default=ROOT / "Resources" / "Models" / "wrist" / "model.json",
                        help="our model's card (its per-view Dice is the other column)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=90, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=2, help="validation batches per epoch")
    parser.add_argument("--batch-size", type=int, default=2, help="images per iteration (0: the plan's, 10 here)")
    parser.add_argument("--resume", action="store_true", help="train: continue the last run up to --epochs")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    if args.step in ("prepare", "all"):
        prepare(args.run, args.out)
    if args.step in ("train", "all"):
        train(args.out, args.epochs, args.iterations, args.val_iterations, args.batch_size, args.resume)
    if args.step in ("evaluate", "all"):
        evaluate(args.run, args.out, args.card)
    if args.step in ("card", "all"):
        add_to_card(args.out, args.card.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
