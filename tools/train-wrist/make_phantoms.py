"""First step of ``make train-wrist``: write the virtual wrists, one folder per phantom.

``--train 0-23`` and ``--test 1000-1005`` are seed ranges; the test seeds are never used for training, so
their poses, sizes, densities and soft tissue are draws the model has not seen. Layout (what ``xrayseg export
--folder`` reads): ``<out>/train/wrist_<seed>/{ct.nii.gz,labels.nii.gz,names.csv,phantom.json}``, the same
under ``<out>/test/``. Phantoms already written (their phantom.json exists) are kept.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "XraySegSim")]

from XraySegSimLib.phantom.wrist import random_params, write_wrist_phantom  # noqa: E402


def seeds(text: str) -> list[int]:
    if text == "none":
        return []
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", default="0-23", help="training seeds, FIRST-LAST or none (default 0-23)")
    parser.add_argument("--test", default="1000-1005", help="test seeds, FIRST-LAST or none (default 1000-1005)")
    args = parser.parse_args()
    started = time.perf_counter()
    for split, spec in (("train", args.train), ("test", args.test)):
        for seed in seeds(spec):
            folder = args.out / split / f"wrist_{seed:04d}"
            if (folder / "phantom.json").is_file():
                continue
            write_wrist_phantom(folder, random_params(seed))
            print(f"{split} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
