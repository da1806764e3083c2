"""Inference time for one 2048x2048 radiograph, end to end: normalisation, resampling to the model's spacing,
the network (one 512x512 pass for the chest model's 0.84 mm), back to the input grid, thresholds.

    .venv/bin/python bench/bench_infer.py [--size 2048] [--repeats 7] [--threads 2] [--output bench-results/infer.json]

The network is the bundled chest recipe's architecture (MONAI UNet 16-32-64-128-256, one residual unit, instance
norm, 9 classes, multilabel) with random weights: the time does not depend on the weights. Rows (written
atomically, replacing earlier rows of the same device, size and threads): device, size, median_ms, min_ms, peak_mb,
threads, repeats, network_input, load_before (1-min load average: the machine's cores are shared), host.
CPU peak_mb is the process's max RSS (torch libraries included); CUDA peak_mb is torch's peak allocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "XraySegInfer"))

from XraySegInferLib.inference import Predictor  # noqa: E402
from XraySegInferLib.networks import DEFAULT_ARCHITECTURE, build_network  # noqa: E402
from XraySegInferLib.package import load_package, make_card, save_package  # noqa: E402
from XraySegInferLib.reader import Radiograph  # noqa: E402

CLASSES = ["ribs_left", "ribs_right", "clavicle_left", "clavicle_right", "scapula_left", "scapula_right",
           "humerus_left", "humerus_right", "sternum", "thoracic_spine"][:9]
MODEL_SPACING_MM = 0.84
DETECTOR_MM = 430.0


def make_package(folder: Path) -> Path:
    from XraySegSimLib.labels import palette_color

    network = build_network(DEFAULT_ARCHITECTURE, len(CLASSES), "multilabel")
    card = make_card(name="bench-chest", architecture=DEFAULT_ARCHITECTURE, mode="multilabel",
                     classes=[{"name": n, "color": palette_color(i)} for i, n in enumerate(CLASSES)],
                     spacing_mm=(MODEL_SPACING_MM, MODEL_SPACING_MM), patch_size=(512, 512),
                     normalization={"window_percentiles": [0.5, 99.5], "gamma": 1.0})
    return save_package(folder, network, card)


def radiograph(size: int) -> Radiograph:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    body = np.exp(-(((x - 0.5) / 0.35) ** 2 + ((y - 0.5) / 0.45) ** 2) ** 2)
    image = (1000 + 2500 * body + rng.normal(0, 30, (size, size))).astype(np.uint16)
    spacing = DETECTOR_MM / size
    return Radiograph(image.astype(np.float32), "MONOCHROME2", (spacing, spacing), "synthetic")


def measure(package: Path, device: str, size: int, repeats: int) -> dict:
    predictor = Predictor(load_package(package, device), device)
    image = radiograph(size)
    predictor.predict(image)  # warm-up (allocations, kernels)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        prediction = predictor.predict(image)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1e3)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    network_input = [int(round(size * DETECTOR_MM / size / MODEL_SPACING_MM))] * 2
    assert prediction.masks.shape == (len(CLASSES), size, size)
    return {"device": device if device == "cpu" else torch.cuda.get_device_name(0), "size": size,
            "median_ms": round(float(np.median(times)), 1), "min_ms": round(float(np.min(times)), 1),
            "peak_mb": round(float(peak), 1), "threads": torch.get_num_threads() if device == "cpu" else None,
            "repeats": repeats, "network_input": network_input, "timings_ms": {
                k: round(v, 1) for k, v in prediction.timings_ms.items()}}


def write_rows(path: Path, rows: list[dict]) -> None:
    existing = json.loads(path.read_text()) if path.is_file() else []
    keys = {(r["device"], r["size"], r.get("threads")) for r in rows}
    kept = [r for r in existing if (r.get("device"), r.get("size"), r.get("threads")) not in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(handle, "w") as out:
        json.dump(kept + rows, out, indent=2)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--output", type=Path, default=Path("bench-results/infer.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        package = make_package(Path(tmp) / "model")
        for device in args.devices:
            if device == "cuda" and not torch.cuda.is_available():
                print("cuda: not available, skipped")
                continue
            load = os.getloadavg()[0]
            row = measure(package, device, args.size, args.repeats)
            row.update(load_before=round(load, 2), host=platform.node())
            rows.append(row)
            print(f"{row['device']:>24s} {args.size}^2: median {row['median_ms']:8.1f} ms (min {row['min_ms']:.1f}), "
                  f"peak {row['peak_mb']:.0f} MB, load {load:.2f}, parts {row['timings_ms']}")
    write_rows(args.output, rows)
    print(f"-> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
