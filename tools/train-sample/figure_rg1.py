"""Before/after figure for the README: two ``xrayseg plausibility`` pictures of the real chest CR RG1 side by side.

    python tools/train-sample/figure_rg1.py BEFORE/plausibility.png AFTER/plausibility.png \
        --labels "0.1.0 (one CT)" "0.2.0 (two bodies, randomised)" --out Resources/Screenshots/chest-model-rg1.png

Each picture is the model's overlay with the landmarks the rules use (lung fields, heart region: white
outlines; midline: white line). The result is scaled to ``--width`` pixels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from PIL import Image, ImageDraw

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pictures", type=Path, nargs=2)
    parser.add_argument("--labels", nargs=2, default=("before", "after"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--width", type=int, default=1000)
    args = parser.parse_args(argv)
    half = args.width // 2
    tiles = []
    for path, label in zip(args.pictures, args.labels):
        image = Image.open(path).convert("RGB")
        image = image.resize((half, round(image.height * half / image.width)), Image.LANCZOS)
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 0, half, 26), fill=(0, 0, 0))
        draw.text((8, 6), label, fill=(255, 255, 255))
        tiles.append(np.asarray(image))
    height = max(t.shape[0] for t in tiles)
    canvas = np.zeros((height, half * 2, 3), np.uint8)
    for i, tile in enumerate(tiles):
        canvas[: tile.shape[0], i * half: i * half + tile.shape[1]] = tile
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".partial.png")
    # 256 colours: a README picture, not a measurement (the rules run on the full-resolution masks).
    Image.fromarray(canvas).quantize(256, dither=Image.Dither.NONE).save(tmp, optimize=True)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
