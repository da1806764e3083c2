"""README figure: the full chest CT's PA view with its shoulder girdles turned by -15, 0 and +5 degrees.

    .venv/bin/python tools/shoulder_pose_figure.py [--out Resources/Screenshots/export-shoulder-pose.png]
    .venv/bin/python tools/shoulder_pose_figure.py --sample chest-ct --angles 0,-20 \
        --out Resources/Screenshots/export-shoulder-unknown.png

One virtual patient per angle with every other draw switched off (no deformation, scale or density change),
the same view; outlines: clavicles cyan, scapulae magenta, humeri green, ribs orange/yellow; ignored pixels
(the cut faces' continuation, and what the turn brought in from beyond a face) tinted red. Needs the
`chest-full-ct-labelled` sample (label transfer on first use, a few minutes) or the one named.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ANGLES = (-15, 0, 5)
OUTLINES = {"clavicles": (0, 255, 255), "scapulae": (255, 0, 255), "humeri": (0, 255, 0),
            "ribs_left": (255, 150, 0), "ribs_right": (255, 255, 0)}
IGNORED_TINT = (255, 40, 40)


def export_view(ct: str, labels: str, angle: int, out: Path) -> Path:
    subprocess.run([str(Path(sys.executable).parent / "xrayseg"), "export", "--ct", ct, "--labels", labels,
                    "--classes", str(ROOT / "tools/train-sample/classes.json"), "--view", "chest-pa", "--size", "320",
                    "--quiet", "--test-fraction", "0", "--views-per-ct", "1", "--seed", "3", "--virtual-patients",
                    "1", "--deform-mm", "0", "--scale-range", "1,1", "--soft-tissue-range", "1,1",
                    "--bone-density-range", "1,1", "--isocenter", "center", f"--shoulder-range={angle},{angle}",
                    "--no-previews", "--dataset-id", "99", "--dataset-name", "ShoulderPose", "--out", str(out)],
                   check=True)
    return out / "Dataset099_ShoulderPose"


def outlined(dataset: Path) -> np.ndarray:
    from XraySegInferLib.dataset import read_dataset
    from XraySegSimLib.overlay import mask_outline
    from XraySegSimLib.truncation import IGNORE_MASK_VALUE

    data = read_dataset(dataset, require="train")
    image, reference, _ = data.load(data.split("train")[0])
    image = np.asarray(image, float).squeeze()
    low, high = np.percentile(image, (1, 99))
    rgb = np.repeat(np.clip((image - low) / (high - low + 1e-9), 0, 1)[..., None] * 215, 3, -1)
    ignored = reference[0] == IGNORE_MASK_VALUE
    rgb[ignored] = 0.55 * rgb[ignored] + 0.45 * np.array(IGNORED_TINT)
    for name, colour in OUTLINES.items():
        rgb[mask_outline(reference[data.class_names.index(name)] == 1)] = colour
    return rgb.astype(np.uint8)


def main(argv=None) -> int:
    from PIL import Image

    from XraySegSimLib.sample_data import fetch_sample

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "Resources/Screenshots/export-shoulder-pose.png")
    parser.add_argument("--sample", default="chest-full-ct-labelled")
    parser.add_argument("--angles", default=",".join(map(str, ANGLES)), help="degrees, comma-separated")
    args = parser.parse_args(argv)
    angles = [int(a) for a in args.angles.split(",")]
    sample = fetch_sample(args.sample)
    with tempfile.TemporaryDirectory() as tmp:
        tiles = [outlined(export_view(str(sample["ct"]), str(sample["labels"]), a, Path(tmp) / str(a)))
                 for a in angles]
    gap = np.full((tiles[0].shape[0], 6, 3), 255, np.uint8)
    picture = np.hstack([part for tile in tiles for part in (tile, gap)][:-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).convert("P", palette=Image.Palette.ADAPTIVE, colors=128).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB): shoulder pose {angles} degrees")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
