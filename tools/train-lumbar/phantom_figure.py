"""README picture of the lumbar phantom: a lateral and an AP DRR, each bare and with its labels (label image:
the class with the longest path wins), for phantom seed 4 at 1.5 mm.

    .venv/bin/python tools/train-lumbar/phantom_figure.py [--seed 4] [--out Resources/Screenshots/lumbar-phantom-drr.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "XraySegSim"))

from XraySegSimLib import DrrProjector, views  # noqa: E402
from XraySegSimLib.io import atomic_path  # noqa: E402
from XraySegSimLib.phantom.lumbar import build_lumbar_phantom, random_params  # noqa: E402
from XraySegSimLib.physics import normalize_radiograph  # noqa: E402


def tinted(result) -> tuple[np.ndarray, np.ndarray]:
    """(gray RGB, gray RGB with each pixel's winning class tinted 40 % in its colour)."""
    gray = (np.clip(normalize_radiograph(result.line_integral, "MONOCHROME2"), 0, 1) * 255).astype(np.uint8)
    plain = np.repeat(gray[..., None], 3, axis=-1)
    overlay = plain.astype(np.float32)
    label = result.label_image()
    for index, cls in enumerate(result.classes.classes, start=1):
        inside = label == index
        overlay[inside] = 0.6 * overlay[inside] + 0.4 * 255 * np.asarray(cls.color, np.float32)
    return plain, overlay.round().astype(np.uint8)


def main() -> int:
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "Resources/Screenshots/lumbar-phantom-drr.png")
    args = parser.parse_args()
    ct, labels, _, _ = build_lumbar_phantom(dataclasses.replace(random_params(args.seed), voxel_mm=1.5))
    projector = DrrProjector(ct, labels)
    tiles = []
    for view in ("lumbar-lateral", "lumbar-ap"):
        tiles.extend(tinted(projector.render(views.from_preset(view, ct.center_ras, size=(320, 400)))))
    with atomic_path(args.out) as tmp:
        Image.fromarray(np.concatenate(tiles, axis=1)).save(tmp, format="PNG")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
