"""README picture of the local-contrast input filter: one plain lateral lumbar view (exported as `xrayseg export`
writes it, physics on, no virtual patient or domain randomisation) of the abdomen CT, the chest CT and a lumbar
phantom (seed 4, the current phantom version); top row the normalised image, bottom row what the network sees through ``networks.LocalContrast`` at the
bundled lumbar model's spacing and sigma, the reference vertebrae outlined in red.

    .venv/bin/python tools/train-lumbar/filter_figure.py [--out Resources/Screenshots/lumbar-local-contrast.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "XraySegSim"), str(ROOT / "XraySegInfer")]

MODEL = ROOT / "Resources" / "Models" / "lumbar"


def one_view(ct: dict, out: Path) -> Path:
    """A single plain lateral view of ``ct`` (paths ct, labels, names) with the lumbar levels as classes."""
    from XraySegInferLib.entry import main
    from XraySegInferLib.lumbar_study import LEVEL_CLASSES

    out.parent.mkdir(parents=True, exist_ok=True)
    levels = out.parent / "levels.txt"
    levels.write_text(LEVEL_CLASSES)
    code = main(["export", "--ct", str(ct["ct"]), "--labels", str(ct["labels"]), "--names", str(ct["names"]),
                 "--classes", str(levels), "--view", "lumbar-lateral", "--views-per-ct", "1", "--size", "256",
                 "--test-fraction", "0", "--seed", "1", "--quiet", "--no-previews", "--out", str(out)])
    if code:
        raise SystemExit(code)
    return next(out.glob("Dataset*"))


def tiles(dataset: Path, sigma_px: float, model_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(normalised image, filtered image with the vertebrae outlined) as RGB uint8, on the model's grid."""
    import torch
    from scipy import ndimage
    from XraySegInferLib.dataset import read_dataset
    from XraySegInferLib.ignore import split_ignore
    from XraySegInferLib.networks import LocalContrast
    from XraySegInferLib.reader import read_radiograph
    from XraySegInferLib.transforms import resample, resampled_size

    data = read_dataset(dataset, require="train")
    case = data.cases[0]
    _, masks, spacing = data.load(case)
    reference, _ = split_ignore(masks)
    image = torch.from_numpy(read_radiograph(case.image).normalized())[None, None]
    size = resampled_size(image.shape[-2:], spacing, (model_mm, model_mm))
    image = resample(image, size)
    spine = resample(torch.from_numpy(reference.any(0).astype(np.float32))[None, None], size, "nearest")[0, 0] > 0
    seen = LocalContrast(sigma_px)(image)[0, 0].numpy()
    gray = (np.clip(image[0, 0].numpy(), 0, 1) * 255).astype(np.uint8)
    filtered = ((seen + 4) / 8 * 255).astype(np.uint8)  # the filter's whole range, -4 ... 4
    outline = spine.numpy() & ~ndimage.binary_erosion(spine.numpy(), iterations=1)
    rgb = np.repeat(filtered[..., None], 3, axis=-1)
    rgb[outline] = (255, 40, 40)
    return np.repeat(gray[..., None], 3, axis=-1), rgb


def main() -> int:
    from PIL import Image
    from XraySegSimLib.io import atomic_path
    from XraySegSimLib.phantom.lumbar import random_params, write_lumbar_phantom
    from XraySegSimLib.sample_data import fetch_sample

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "Resources/Screenshots/lumbar-local-contrast.png")
    args = parser.parse_args()
    card = json.loads((MODEL / "model.json").read_text())
    sigma, model_mm = card["architecture"]["local_contrast_px"], card["input"]["pixel_spacing_mm"][0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        phantom = write_lumbar_phantom(tmp / "phantom", dataclasses.replace(random_params(4), voxel_mm=1.5))
        bodies = [fetch_sample("abdomen-pelvis-ct"), fetch_sample("chest-ct"), phantom]
        columns = [tiles(one_view(body, tmp / f"view{i}" / "x"), sigma, model_mm) for i, body in enumerate(bodies)]
    height = max(c[0].shape[0] for c in columns)
    pad = [np.pad(t, ((0, height - t.shape[0]), (0, 4), (0, 0))) for c in columns for t in c]
    picture = np.concatenate([np.concatenate(pad[0::2], axis=1), np.concatenate(pad[1::2], axis=1)], axis=0)
    with atomic_path(args.out) as tmp_file:
        Image.fromarray(picture).save(tmp_file, format="PNG")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
