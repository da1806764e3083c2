"""``xrayseg lumbar-compare``: instance-aware vs semantic lumbar models on one dataset (the lumbar paper's table)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    compare = sub.add_parser(
        "lumbar-compare", help="score a semantic and an instance-aware lumbar model: four scores, recognition rate",
        description="Both models run on the images of a dataset whose classes are the vertebra levels (L1 ... L5, "
                    "S1). Semantic instances are connected components given levels top to bottom; a vertebra is "
                    "recognised when the instance of its level overlaps it with IoU >= 0.5. Writes "
                    "OUT/lumbar.json and OUT/lumbar.md.")
    compare.add_argument("dataset", type=Path, help="dataset folder with per-level classes")
    compare.add_argument("--semantic", type=Path,
                         help="model package with one class (vertebra); without it the instance model alone")
    compare.add_argument("--instance", type=Path, required=True, help="model package with one class per level")
    compare.add_argument("--split", choices=("test", "train"), default="test")
    compare.add_argument("--out", type=Path, required=True)
    compare.add_argument("--device", default="auto")
    compare.set_defaults(handler=run_lumbar_compare)


def run_lumbar_compare(args) -> int:
    from XraySegSimLib.io import write_json

    from .inference import Predictor
    from .lumbar_study import compare_models, markdown_table

    summary = compare_models(args.dataset, Predictor.from_package(args.semantic, args.device) if args.semantic else None,
                             Predictor.from_package(args.instance, args.device), args.split)
    table = markdown_table(summary)
    write_json(args.out / "lumbar.json", summary)
    (args.out / "lumbar.md").write_text(table + "\n")
    print(table)
    return 0
