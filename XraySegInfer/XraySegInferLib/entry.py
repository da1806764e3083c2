"""``xrayseg``: the one command line for headless batch work (the same library as the Slicer modules).

Each module registers its subcommands with ``add_subcommands(sub)``; every subcommand sets ``handler`` (parsed
args -> exit status). The entry point lives on the Infer side because Infer may import Sim, never the reverse.

Errors in the input end with one line saying what is wrong and how to fix it, and exit status 2; so do the
faults of the machine a user can fix (disk full, permission denied, out of memory). Ctrl-C ends with one line and
status 130. ``--debug`` shows the traceback instead. Warnings print as one line each.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from typing import Sequence

# Modules whose ``add_subcommands(sub)`` make up ``xrayseg``, in the order of ``xrayseg --help``.
SUBCOMMAND_MODULES = (
    "XraySegSimLib.cli",  # render, demo, fetch-sample, views, export
    "XraySegSimLib.phantom_cli",  # phantom wrist
    "XraySegInferLib.cli",  # train, evaluate, infer
    "XraySegInferLib.transfer_cli",  # plausibility, lobo (transfer to other bodies and real images)
    "XraySegInferLib.ct_cli",  # femur-data, ct-train, ct-segment, ct-evaluate (3D CT)
    "XraySegInferLib.lumbar_cli",  # lumbar-compare (instance-aware vs semantic)
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


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"xrayseg: warning: {message}\n"


def _os_error_line(error: OSError) -> str:
    hints = {errno.ENOSPC: "the disk is full; free space or choose another --out",
             errno.EDQUOT: "the disk quota is exceeded; free space or choose another --out",
             errno.EACCES: "permission denied; choose a folder you may write to",
             errno.EPERM: "permission denied; choose a folder you may write to",
             errno.EROFS: "the file system is read-only; choose another --out",
             errno.ENOTDIR: "a path component is a file, not a folder; check the paths",
             errno.EISDIR: "a folder was given where a file is expected; check the paths",
             errno.ENOENT: "no such file or folder; check the path"}
    where = f"{error.filename}: " if getattr(error, "filename", None) else ""
    return where + hints.get(error.errno, f"{error.strerror or error}")


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    from XraySegSimLib.errors import XraySegError

    args = build_parser().parse_args(argv)
    previous_format = warnings.formatwarning
    if not args.debug:
        warnings.formatwarning = _one_line_warning
    try:
        return int(args.handler(args) or 0)
    except XraySegError as error:
        if args.debug:
            raise
        message = " ".join(str(error).split("\n"))
        print(f"xrayseg {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as error:  # the machine, not the input: disk full, read-only, permissions
        if args.debug:
            raise
        print(f"xrayseg {args.command}: error: {_os_error_line(error)}", file=sys.stderr)
        return 2
    except MemoryError:
        if args.debug:
            raise
        print(f"xrayseg {args.command}: error: out of memory; use a smaller input (--size, fewer --workers) or a "
              "machine with more memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"\nxrayseg {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous_format


if __name__ == "__main__":
    sys.exit(main())
