"""README figure: how visible the ribs are in a plain DRR of the sample CT and in the real chest CR RG1.

    .venv/bin/python tools/train-sample/figure_ribs.py out/train-sample/test-chest-ct \
        --out Resources/Screenshots/chest-ribs-drr-vs-rg1.png

Both through the shared normalisation (the 0.5-99.5 percentile window the models see), at the same width.
Left: the first plain view of the export (physics on, no virtual patient, no image-domain randomisation);
right: RG1.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "XraySegSim"), str(ROOT / "XraySegInfer")]


def main(argv=None) -> int:
    from PIL import Image, ImageDraw

    from XraySegInferLib.dataset import read_dataset
    from XraySegInferLib.reader import read_radiograph
    from XraySegInferLib.sample_radiograph import fetch_sample_radiograph

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path, help="a plain chest-pa export (folder holding Dataset*/)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--width", type=int, default=400, help="width of each panel, pixels")
    args = parser.parse_args(argv)
    dataset = read_dataset(next(args.export.glob("Dataset*")))
    warnings.simplefilter("ignore")  # RG1 has no pixel spacing; it is not needed for a picture
    images = [(read_radiograph(dataset.split("train")[0].image).normalized(), "plain DRR of the sample CT"),
              (read_radiograph(fetch_sample_radiograph("RG1_UNCR.dcm")).normalized(), "real chest CR RG1")]
    panels = []
    for image, label in images:
        picture = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
        picture = picture.resize((args.width, round(args.width * picture.height / picture.width)), Image.LANCZOS)
        ImageDraw.Draw(picture).text((6, 6), label, fill=255)
        panels.append(picture)
    height = max(p.height for p in panels)
    figure = Image.new("L", (args.width * len(panels), height))
    for index, panel in enumerate(panels):
        figure.paste(panel, (index * args.width, 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
