"""``xrayseg femur-data | ct-train | ct-segment | ct-evaluate``: 3D CT bone segmentation (the femur paper's V-Net).

Heavy imports (torch, MONAI, SimpleITK) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli import set_torch_threads


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser(
        "femur-data", help="proximal-femur crops of a labelled CT as a 3D nnU-Net v2 dataset (held out by side)",
        description="Crop both proximal femurs of a CT with femur_left/femur_right labels (femoral head top + 10 mm "
                    "down to 110 mm below it, 20 mm margin). The training side goes to imagesTr; the other side, "
                    "mirrored left-right, to imagesTs.")
    data.add_argument("--ct", type=Path, required=True, help="CT in HU (NIfTI, NRRD, MHA)")
    data.add_argument("--labels", type=Path, required=True, help="label map on the CT grid")
    data.add_argument("--names", type=Path, required=True, help="CSV value,name (needs femur_left, femur_right)")
    data.add_argument("--train-side", choices=("left", "right"), default="left")
    data.add_argument("--dataset-id", type=int, default=701)
    data.add_argument("--case-prefix", default="body0", help="case name prefix (default body0)")
    data.add_argument("--phantoms", type=Path, nargs="+", default=(), metavar="DIR",
                      help="hip phantom folders ('xrayseg phantom hip'): both femurs of each go to imagesTr")
    data.add_argument("--ct-test-only", action="store_true",
                      help="both femurs of the CT go to imagesTs (train on the phantoms alone)")
    data.add_argument("--train-region", choices=("crop", "half-body"), default="crop",
                      help="the CT's training case: the crop (default) or the training side's half of the whole CT "
                           "(cut at the midline between the femurs), so the network also sees the rest of the body")
    data.add_argument("--out", type=Path, required=True)
    data.set_defaults(handler=run_femur_data)

    train = sub.add_parser(
        "ct-train", help="train a 3D V-Net (Dice + lambda*L2) on a 3D nnU-Net v2 dataset; writes OUT/model",
        description="Patch training of MONAI V-Net blocks on imagesTr/labelsTr (label 1 = the structure).")
    train.add_argument("dataset", type=Path)
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--steps", type=int, default=600)
    train.add_argument("--batch-size", type=int, default=2)
    train.add_argument("--patch-size", type=int, nargs=3, default=(64, 64, 64), metavar=("K", "J", "I"))
    train.add_argument("--spacing", type=float, nargs=3, default=(1.5, 1.5, 1.5), metavar=("X", "Y", "Z"),
                       help="working voxel size, mm (default 1.5 isotropic)")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--l2", type=float, default=1e-4, help="lambda of the L2 weight penalty (default 1e-4)")
    train.add_argument("--full-vnet", action="store_true", help="MONAI's full-size VNet (45.6 M parameters)")
    train.add_argument("--norm", choices=("instance", "batch"), default="instance",
                       help="normalisation of the compact V-Net (default instance; batch: MONAI's blocks as they are)")
    train.add_argument("--no-flip", action="store_true", help="no random left-right flips in the augmentation")
    train.add_argument("--foreground-fraction", type=float, default=0.7,
                       help="share of patches centred on a label voxel; the rest anywhere in a case (default 0.7)")
    train.add_argument("--batch-dice", action="store_true",
                       help="one Dice over the batch, so patches away from the structure still cost their false "
                            "positives (use with femur-data --train-region half-body)")
    train.add_argument("--ce-weight", type=float, default=0.0,
                       help="add this times the voxel-wise cross-entropy to the loss (nnU-Net's Dice + CE; default 0)")
    train.add_argument("--metal-fraction", type=float, default=0.0,
                       help="share of patches given a synthetic metal implant (rods and streaks inside the "
                            "structure; default 0)")
    train.add_argument("--metal-outside", type=float, default=0.0,
                       help="share of the implant rods laid anywhere in the patch (their metal stays background), "
                            "so that metal alone is no sign of the structure (default 0)")
    train.add_argument("--suppress-metal", type=float, nargs=2, metavar=("ABOVE_HU", "FILL_HU"),
                       help="set metal (voxels above ABOVE_HU and their rim) to FILL_HU before the network sees it, "
                            "in training and in ct-segment alike (e.g. 2000 150); the card carries the values")
    train.add_argument("--trained-side", choices=("left", "right"),
                       help="the body side of the training cases (femur-data --train-side): the card says so, and "
                            "ct-segment then predicts the other side of a whole CT mirrored, per side")
    train.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    train.add_argument("--threads", type=int)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--name", default="Proximal femur (3D V-Net)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint_last.*")
    train.add_argument("--init-from", type=Path, help="start from this 3D model package's weights (fine-tuning)")
    train.add_argument("--oversample", nargs=2, action="append", default=[], metavar=("TEXT", "FACTOR"),
                       help="draw training cases whose id contains TEXT FACTOR times as often (repeatable)")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(handler=run_ct_train)

    ensemble = sub.add_parser("ct-ensemble", help="combine 3D model packages of the same recipe (other seeds) into "
                                                   "one that averages their probabilities")
    ensemble.add_argument("packages", type=Path, nargs="+")
    ensemble.add_argument("--out", type=Path, required=True)
    ensemble.add_argument("--name", help="the ensemble's name on its card (default: the first member's + ensemble)")
    ensemble.set_defaults(handler=run_ct_ensemble)

    segment = sub.add_parser("ct-segment", help="segment a CT with a 3D model; writes OUT/labels.nii.gz")
    segment.add_argument("ct", type=Path)
    segment.add_argument("--model", type=Path, required=True, help="3D model package folder")
    segment.add_argument("--out", type=Path, required=True)
    segment.add_argument("--device", default="auto")
    segment.add_argument("--threads", type=int)
    segment.set_defaults(handler=run_ct_segment)

    evaluate = sub.add_parser("ct-evaluate", help="Dice, sensitivity, specificity, HD95, volume R^2 of a 3D model")
    evaluate.add_argument("dataset", type=Path)
    evaluate.add_argument("--model", type=Path, required=True)
    evaluate.add_argument("--split", choices=("test", "train"), default="test")
    evaluate.add_argument("--out", type=Path, help="write metrics.json here")
    evaluate.add_argument("--update-card", action="store_true", help="store the summary in the model card")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--threads", type=int)
    evaluate.set_defaults(handler=run_ct_evaluate)


def _load(args):
    """The --model package on --device (a CUDA device this machine lacks falls back to the CPU with a warning)."""
    from .ct_package import load_ct_package
    from .inference import pick_device

    if not args.model.exists():
        from .errors import InputError

        raise InputError(f"--model {args.model} does not exist; give a 3D model package folder")
    return load_ct_package(args.model, str(pick_device(args.device)))


def run_femur_data(args) -> int:
    from XraySegSimLib.export_inputs import names_table

    from .femur_data import write_femur_dataset

    if args.ct_test_only and not args.phantoms:
        from .errors import InputError

        raise InputError("--ct-test-only leaves nothing to train on; give --phantoms DIR ... as well")
    root = write_femur_dataset(args.ct, args.labels, names_table(args.names), args.out, args.train_side,
                               args.dataset_id, case_prefix=args.case_prefix, phantoms=args.phantoms,
                               ct_test_only=args.ct_test_only, train_region=args.train_region)
    print(f"wrote {root} (train side {args.train_side}; other sides mirrored to it)")
    return 0


def _metal_suppression(values: list[float] | None) -> dict[str, float]:
    if values is None:
        return {}
    from .errors import InputError

    above, fill = values
    if not (fill < above and above > 0):
        raise InputError(f"--suppress-metal {above:g} {fill:g}: give a positive ABOVE_HU above FILL_HU "
                         "(e.g. 2000 150)")
    return {"suppress_metal_above_hu": above, "metal_fill_hu": fill}


def run_ct_train(args) -> int:
    from .ct_networks import DEFAULT_ARCHITECTURE
    from .ct_training import CtTrainConfig, train_ct

    set_torch_threads(args)
    config = CtTrainConfig(steps=args.steps, batch_size=args.batch_size, patch_size=tuple(args.patch_size),
                           spacing_mm=tuple(args.spacing), learning_rate=args.lr, l2_weight=args.l2,
                           architecture={"name": "vnet"} if args.full_vnet else dict(DEFAULT_ARCHITECTURE,
                                                                                     norm=args.norm),
                           flip=not args.no_flip, foreground_fraction=_fraction(args.foreground_fraction),
                           trained_side=args.trained_side or "", batch_dice=args.batch_dice,
                           ce_weight=_non_negative(args.ce_weight, "--ce-weight"),
                           metal_fraction=_fraction(args.metal_fraction, "--metal-fraction"),
                           metal_outside=_fraction(args.metal_outside, "--metal-outside"),
                           **_metal_suppression(args.suppress_metal),
                           seed=args.seed, device=args.device, name=args.name,
                           oversample=[[text, _factor(factor)] for text, factor in args.oversample],
                           init_from=str(args.init_from) if args.init_from else "")

    def progress(step: int, steps: int, loss: float) -> None:
        if not args.quiet and (step % 10 == 0 or step == steps):
            print(f"step {step}/{steps} loss {loss:.4f}", file=sys.stderr, flush=True)

    package = train_ct(args.dataset, args.out, config, resume=args.resume, progress=progress)
    print(f"model -> {package}")
    return 0


def _factor(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        from .errors import InputError

        raise InputError(f"--oversample TEXT FACTOR: '{text}' is not a number; give e.g. --oversample body0 16") from None


def _non_negative(value: float, option: str) -> float:
    if not value >= 0.0:
        from .errors import InputError

        raise InputError(f"{option} {value}: give a weight of 0 or more, e.g. 1")
    return value


def _fraction(value: float, option: str = "--foreground-fraction") -> float:
    if not 0.0 <= value <= 1.0:
        from .errors import InputError

        raise InputError(f"{option} {value}: give a share between 0 and 1, e.g. 0.5")
    return value


def run_ct_ensemble(args) -> int:
    from .ct_ensemble import combine_ct_packages

    for package in args.packages:
        if not package.exists():
            from .errors import InputError

            raise InputError(f"{package} does not exist; give 3D model package folders")
    out = combine_ct_packages(args.packages, args.out, args.name)
    print(f"ensemble of {len(args.packages)} -> {out}")
    return 0


def run_ct_segment(args) -> int:
    from XraySegSimLib.label_jobs import metal_note

    from .ct_segment import segment_ct

    set_torch_threads(args)
    summary = segment_ct(args.ct, _load(args), args.out)
    sides = summary.get("volume_ml_per_side")
    per_side = f" (left {sides['left']:.1f}, right {sides['right']:.1f})" if sides else ""
    print(f"{args.ct}: {summary['structure']} {summary['volume_ml']:.1f} ml{per_side} -> {args.out}")
    metal = metal_note(summary.get("metal_suppression"))
    if metal:
        print(f"{metal} (the model's metal suppression)")
    if summary.get("warning"):
        print(f"warning: {summary['warning']}", file=sys.stderr)
    return 0


def run_ct_evaluate(args) -> int:
    from .ct_package import update_card
    from .ct_segment import evaluate_ct_dataset

    set_torch_threads(args)
    result = evaluate_ct_dataset(args.dataset, _load(args), args.split)
    print(json.dumps(result, indent=2))
    if args.out:
        from XraySegSimLib.io import write_json

        write_json(args.out / "metrics.json", result)
    if args.update_card:
        card = json.loads((args.model / "model.json").read_text())
        metrics = dict(card.get("metrics", {}), **{f"{args.split}_{args.dataset.name}": result})
        update_card(args.model, metrics=metrics)
    return 0
