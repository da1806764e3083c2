"""README picture of the lumbar phantom: a lateral and an AP DRR, each bare and with its labels (overlay.overlay_rgb:
the class with the longest path tinted, every class outlined), for phantom seed 4 at 1.5 mm.

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
from XraySegSimLib.overlay import overlay_rgb  # noqa: E402
from XraySegSimLib.phantom.lumbar import build_lumbar_phantom, random_params  # noqa: E402
from XraySegSimLib.physics import normalize_radiograph  # noqa: E402


def tinted(result) -> tuple[np.ndarray, np.ndarray]:
    """(gray RGB, the same with the project's label overlay: winning class tinted, every class outlined)."""
    gray = (np.clip(normalize_radiograph(result.line_integral, "MONOCHROME2"), 0, 1) * 255).astype(np.uint8)
    return (np.repeat(gray[..., None], 3, axis=-1),
            overlay_rgb(gray, result.masks(), result.label_image(), result.classes))


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
