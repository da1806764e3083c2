"""``xrayseg``: the one command line for headless batch work (the same library as the Slicer modules).

Each module registers its subcommands with ``add_subcommands(sub)``; every subcommand sets ``handler`` (parsed
args -> exit status). The entry point lives on the Infer side because Infer may import Sim, never the reverse.

Errors in the input end with one line saying what is wrong and how to fix it, and exit status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Modules whose ``add_subcommands(sub)`` make up ``xrayseg``, in the order of ``xrayseg --help``.
SUBCOMMAND_MODULES = (
    "XraySegSimLib.cli",  # render, demo, fetch-sample, views, export
    "XraySegSimLib.phantom_cli",  # phantom wrist
    "XraySegInferLib.cli",  # train, evaluate, infer
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xrayseg",
        description="XraySeg: simulated radiographs (DRRs) with exactly projected bone labels from CT, and bone "
                    "segmentation of radiographs.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from XraySegSimLib.errors import XraySegError

    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except XraySegError as error:
        if args.debug:
            raise
        print(f"xrayseg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
