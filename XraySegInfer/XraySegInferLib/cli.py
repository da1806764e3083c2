"""``xrayseg train | evaluate | infer``: added to the ``xrayseg`` command by ``add_subcommands(sub)``.

Each subcommand sets ``handler`` (a function of the parsed args returning an exit status); ``entry.main``
calls it and turns an ``XraySegError`` into a message and exit status 2. Heavy imports (torch, MONAI)
happen only inside the handlers, so ``xrayseg render`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_MODELS = Path(__file__).resolve().parents[2] / "Resources" / "Models"
TRUST_PICKLE_HELP = ("load nnU-Net checkpoints even when torch's safe loader (weights_only=True) refuses them; "
                     "unpickling runs code from the file: only for models you trust")
# Everything ``infer`` writes into a result folder (one holding anything else is not replaced).
INFER_FILES = frozenset({"labels.nrrd", "labels.seg.nrrd", "overlay.png", "labels.png", "segmentation.json",
                         "segmentation.dcm"})


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train", help="train a segmentation network on an exported dataset; writes a model package",
        description="Train a MONAI U-Net on a dataset in the nnU-Net v2 layout (as exported by XraySeg). Writes "
                    "OUT/model (model.safetensors + model.json card), checkpoints and history.json. The "
                    "validation split is by CT.")
    train.add_argument("dataset", type=Path, help="dataset folder (Dataset<ID>_<Name>/ or its parent)")
    train.add_argument("--out", type=Path, required=True, help="output folder")
    train.add_argument("--recipe", help="named preset: chest-transfer (the bundled chest model), chest-sample (its "
                                                   "first recipe, one CT), quick")
    train.add_argument("--config", type=Path, help="JSON with TrainConfig fields (over the recipe; options below "
                                                   "override both)")
    train.add_argument("--mode", choices=("multilabel", "multiclass"),
                       help="multilabel: sigmoid per class, overlaps kept (default); multiclass: softmax")
    train.add_argument("--steps", type=int, help="training steps (default 2000)")
    train.add_argument("--val-every", type=int, help="validate and checkpoint every N steps (default 200)")
    train.add_argument("--batch-size", type=int, help="default 8")
    train.add_argument("--patch-size", type=int, help="square training patch, pixels (default 256)")
    train.add_argument("--spacing", type=float, help="training pixel spacing, mm (default: median of the images)")
    train.add_argument("--lr", type=float, dest="learning_rate", help="learning rate (default 2e-3)")
    train.add_argument("--channels", type=int, nargs="+", help="U-Net channels per level, e.g. 16 32 64 128 256")
    train.add_argument("--local-contrast", type=float, metavar="SIGMA_PX",
                       help="put a fixed local-contrast filter (Gaussian sigma in pixels at the training spacing) in "
                            "front of the network, so that it sees bone edges rather than grey levels (default off)")
    train.add_argument("--multilabel-ce", choices=("bce", "softmax"), dest="multilabel_ce",
                       help="cross-entropy term of the multilabel loss: bce, per class (default), or softmax, "
                            "as MONAI's DiceCELoss and the bundled models before chest 0.4.0")
    train.add_argument("--flip", type=float, dest="flip_horizontal",
                       help="probability of left/right flips (default 0: off; refused for lateral views)")
    train.add_argument("--device", help="auto (default), cpu, cuda")
    train.add_argument("--threads", type=int, help="CPU threads")
    train.add_argument("--name", help="model name in the card")
    train.add_argument("--seed", type=int)
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint_last.safetensors")
    train.add_argument("--trust-pickle", action="store_true",
                       help="on --resume, also unpickle a legacy checkpoint_last.pt that torch's safe loader refuses "
                            "(this runs code from the file: only for files you made)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=run_train)

    evaluate = sub.add_parser(
        "evaluate", help="evaluate a model on a dataset split (Dice, IoU, HD95, FCN scores, vertebrae)",
        description="Predict every image of a dataset split and compare with its masks. Writes metrics.csv (per "
                    "case and class), cases.csv and metrics.md (tables per class and per view).")
    evaluate.add_argument("dataset", type=Path, help="dataset folder")
    evaluate.add_argument("--model", type=Path, required=True, help="model package folder or nnU-Net results folder")
    evaluate.add_argument("--out", type=Path, required=True, help="output folder")
    evaluate.add_argument("--split", choices=("test", "val", "train"), default="test",
                          help="test (imagesTs, default), val (held-out CTs of imagesTr) or train")
    evaluate.add_argument("--no-hd95", action="store_true", help="skip HD95 (faster)")
    evaluate.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                          help="flip test-time augmentation (default: as the model card allows)")
    evaluate.add_argument("--update-card", action="store_true", help="store the summary in the model card's metrics")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--threads", type=int)
    evaluate.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    evaluate.set_defaults(handler=run_evaluate)

    infer = sub.add_parser(
        "infer", help="segment bones on radiographs (DICOM, PNG/JPEG/TIFF, NRRD/NIfTI)",
        description="Segment one or more radiographs. Writes labels.nrrd, labels.seg.nrrd (one layer per class, "
                    "overlaps kept), overlay.png, labels.png and segmentation.json (areas in mm^2) into OUT "
                    "(OUT/<name>/ for several inputs).")
    infer.add_argument("radiographs", type=Path, nargs="+", help="radiograph file(s)")
    infer.add_argument("--model", type=Path, help="model package folder (default: the bundled model) or nnU-Net "
                                                  "results folder")
    infer.add_argument("--out", type=Path, required=True, help="output folder")
    infer.add_argument("--spacing", type=float, nargs=2, metavar=("ROW_MM", "COL_MM"),
                       help="pixel spacing, when the file lacks it or to override it")
    infer.add_argument("--photometric", choices=("MONOCHROME1", "MONOCHROME2"),
                       help="override the file's photometric interpretation (PNG/JPEG are taken as MONOCHROME2)")
    infer.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                       help="flip test-time augmentation (default: as the model card allows)")
    infer.add_argument("--overlap", type=float, help="sliding-window overlap (default: the card's, 0.25)")
    infer.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    infer.add_argument("--threads", type=int, help="CPU threads")
    infer.add_argument("--dicom-seg", action="store_true",
                       help="also write OUT/segmentation.dcm: a DICOM Segmentation object (one segment per class, "
                            "SNOMED codes) in the radiograph's study, referencing it (DICOM inputs only)")
    infer.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    infer.set_defaults(handler=run_infer)

    seal = sub.add_parser(
        "seal-model", help="accept a deliberately edited model card: rewrite the package's manifest.json",
        description="A model package's manifest.json holds the SHA-256 of its card and weights; a package whose "
                    "card was changed afterwards is refused. After editing the card on purpose (and checking that "
                    "its classes, spacing and normalisation still fit the weights), seal it again.")
    seal.add_argument("package", type=Path, help="model package folder")
    seal.set_defaults(handler=run_seal_model)


def set_torch_threads(args) -> None:
    """Apply ``--threads`` to torch (one line and exit 2 when it is below 1)."""
    if getattr(args, "threads", None) is not None and args.threads < 1:
        from .errors import InputError

        raise InputError(f"--threads must be at least 1, got {args.threads}")
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def run_train(args) -> int:
    from .errors import InputError
    from .training import RECIPES, TrainConfig, train

    if args.recipe and args.recipe not in RECIPES:
        raise InputError(f"unknown recipe {args.recipe!r}; choose one of: {', '.join(RECIPES)}")
    data = json.loads(json.dumps(RECIPES[args.recipe])) if args.recipe else {}
    if args.config:
        if not args.config.is_file():
            raise InputError(f"training config not found: {args.config}")
        data.update(json.loads(args.config.read_text()))
    for key in ("mode", "steps", "val_every", "batch_size", "patch_size", "learning_rate", "device", "threads",
                "name", "seed", "multilabel_ce"):
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    if args.spacing:
        data["spacing_mm"] = args.spacing
    if args.channels:
        arch = dict(data.get("architecture") or TrainConfig().architecture)
        arch["channels"] = args.channels
        arch["strides"] = [2] * (len(args.channels) - 1)
        data["architecture"] = arch
    if args.local_contrast is not None:
        if not 0 < args.local_contrast < float("inf"):
            raise InputError(f"--local-contrast must be a positive number of pixels, got {args.local_contrast}")
        data["architecture"] = {**(data.get("architecture") or TrainConfig().architecture),
                                "local_contrast_px": args.local_contrast}
    if args.flip_horizontal is not None:
        data.setdefault("augment", {})["flip_horizontal"] = args.flip_horizontal
    try:
        config = TrainConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        raise InputError(f"training options: {error}") from error
    _check_train_numbers(config)
    try:
        result = train(args.dataset, args.out, config, resume=args.resume, progress=not args.quiet,
                       trust_pickle=args.trust_pickle)
    except KeyboardInterrupt:
        print(f"\nxrayseg train: interrupted; the checkpoints in {args.out} are complete (each is written "
              "atomically): rerun the same command with --resume to continue", file=sys.stderr)
        return 130
    print(f"model package: {result.package}")
    return 0


def _check_train_numbers(config) -> None:
    """Counts and sizes that would crash training (division by zero, empty batches), refused up front."""
    from .errors import InputError

    for name in ("steps", "val_every", "batch_size", "patch_size", "max_val_images"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise InputError(f"training option {name} must be a whole number >= 1, got {value!r}")
    if not config.learning_rate > 0 or (config.spacing_mm is not None and not config.spacing_mm > 0):
        raise InputError("the learning rate and the pixel spacing must be positive")
    if not 0 <= config.val_fraction < 1:
        raise InputError(f"val_fraction must be in [0, 1), got {config.val_fraction}")
    if config.threads is not None and config.threads < 1:
        raise InputError(f"--threads must be at least 1, got {config.threads}")


def load_predictor(model: Path | None, device: str = "auto", trust_pickle: bool = False, **kwargs):
    from .errors import ModelPackageError
    from .nnunet import NnUNetPredictorAdapter, is_nnunet_results_folder

    if model is None:
        bundled = sorted(p for p in REPO_MODELS.glob("*") if (p / "model.json").is_file()) if REPO_MODELS.is_dir() \
            else []
        if not bundled:
            raise ModelPackageError("no --model given and no bundled model in Resources/Models; train one with "
                                    "'xrayseg train DATASET --out DIR' and pass --model DIR/model")
        model = bundled[0]
    if is_nnunet_results_folder(model):
        return NnUNetPredictorAdapter(model, device=device, trust_pickle=trust_pickle)
    from .inference import Predictor

    return Predictor.from_package(model, device, **kwargs)


def run_evaluate(args) -> int:
    from .evaluate import evaluate_dataset

    set_torch_threads(args)
    predictor = load_predictor(args.model, args.device, args.trust_pickle, flip_tta=args.tta)
    report = evaluate_dataset(predictor, args.dataset, args.out, args.split, hd95=not args.no_hd95, progress=True)
    summary = report.summary()
    print(report.markdown())
    if args.update_card and hasattr(predictor, "model"):
        from .package import update_card

        card = dict(predictor.model.card)
        card.setdefault("metrics", {})[args.split] = {
            "dataset": str(args.dataset), "flip_tta": predictor.flip_tta, **summary,
            "per_class": {r["class"]: {"dice": r["dice"], "iou": r["iou"], "hd95_mm_median": r["hd95_mm_median"]}
                          for r in report.per_class()}}
        update_card(predictor.model.folder, card)  # the card and its manifest together
    print(f"wrote {args.out}/metrics.csv, cases.csv, metrics.md")
    return 0


def run_infer(args) -> int:
    from .errors import InputError
    from .inference import write_prediction

    set_torch_threads(args)
    kwargs = {}
    if args.tta is not None:
        kwargs["flip_tta"] = args.tta
    if args.overlap is not None:
        kwargs["overlap"] = args.overlap
    if args.dicom_seg:  # refuse before the model loads: every input must be DICOM
        from .dicom_seg import read_source_dataset, require_highdicom

        require_highdicom()
        for path in args.radiographs:
            read_source_dataset(path)
    from XraySegSimLib.errors import XraySegError
    from XraySegSimLib.io import check_output_folder, replace_folder

    single = len(args.radiographs) == 1
    outs = [args.out] if single else [args.out / name for name in unique_output_names(args.radiographs)]
    if single:
        check_output_folder(args.out, INFER_FILES, "segmentation")  # before the model loads
    elif args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} is a file; give a folder (it is created if needed)")
    if args.spacing is not None and not all(v > 0 for v in args.spacing):
        raise InputError(f"--spacing must be positive, got {args.spacing}")
    if args.overlap is not None and not 0 <= args.overlap < 1:
        raise InputError(f"--overlap must be in [0, 1), got {args.overlap}")
    predictor = load_predictor(args.model, args.device, args.trust_pickle, **kwargs)
    from .reader import read_radiograph

    name = getattr(getattr(predictor, "model", None), "card", {}).get("name", str(args.model))
    failed = 0
    for path, out in zip(args.radiographs, outs):
        try:
            radiograph = read_radiograph(path, args.photometric)
            prediction = predictor.predict(radiograph, tuple(args.spacing) if args.spacing else None)
            # A fresh folder swapped in when complete: no mixture with an earlier result.
            with replace_folder(out, INFER_FILES, "segmentation") as staging:
                write_prediction(prediction, staging, name)
                if args.dicom_seg:
                    from .dicom_seg import write_dicom_seg

                    write_dicom_seg(prediction, path, staging, getattr(predictor, "card", None))
        except XraySegError as error:
            if single:
                raise
            failed += 1  # reported; the rest of the batch goes on
            print(f"xrayseg infer: error: {error}", file=sys.stderr)
            continue
        areas = ", ".join(f"{k} {v:.0f}" for k, v in prediction.areas_mm2.items())
        print(f"{path}: {prediction.label_image.shape[1]}x{prediction.label_image.shape[0]} px at "
              f"{prediction.spacing_mm[0]:.3f} mm ({prediction.spacing_source}); areas mm^2: {areas} -> {out}")
    if failed:
        print(f"xrayseg infer: error: {failed} of {len(outs)} radiographs failed (see above); the others are in "
              f"{args.out}", file=sys.stderr)
        return 2
    return 0


def unique_output_names(paths: list[Path]) -> list[str]:
    """One folder name per input: its base name; inputs sharing one get their parent folder's name in front,
    then a number (never two inputs in one folder)."""
    stems = [p.name.split(".")[0] or "radiograph" for p in paths]
    names = [s if stems.count(s) == 1 else f"{p.parent.name or 'input'}_{s}" for p, s in zip(paths, stems)]
    taken: dict[str, int] = {}
    unique = []
    for name in names:
        taken[name] = taken.get(name, 0) + 1
        unique.append(name if taken[name] == 1 and names.count(name) == 1 else f"{name}_{taken[name]}")
    return unique


def run_seal_model(args) -> int:
    from .package import seal_package

    manifest = seal_package(args.package)
    print(f"sealed {args.package}: {manifest} now records the current card and weights")
    return 0
