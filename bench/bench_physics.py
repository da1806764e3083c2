"""Cost of the realistic X-ray physics on top of the DRR, on the sample chest CT (the bench view of bench_drr.py:
chest AP, SDD 1020 mm, SID 850 mm, 460.8 mm detector), and the README figure.

    .venv/bin/python bench/bench_physics.py [--size 512] [--repeats 9] [--threads 2] [--output bench-results/drr.json]
    .venv/bin/python bench/bench_physics.py --figure   # also writes Testing/Artifacts/physics.png

Timed in one process, repeats interleaved (k-th repeat of every variant back to back) so machine noise hits all
alike; medians reported. Variants: DRR with the 49 bone labels (no materials), the same with the material line
integrals (one pass), the physics chain alone (``simulate_radiograph``, chest-pa parameters, caches warm: the
spectrum, tables and heel profile are built once per parameter set) and the chain cold (first call for a new
kVp, caches cleared). Rows with ``"engine": "xrayseg-physics"`` replace earlier ones in ``--output``; other rows
(bench_drr.py's) are kept. The file is written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drr_setup import REPO_ROOT, make_geometry, sample_ct  # noqa: E402

ENGINE = "xrayseg-physics"
TARGET_OVERHEAD = 0.25  # physics chain / DRR with labels: at most
FIGURE = REPO_ROOT / "Testing" / "Artifacts" / "physics.png"  # the README's copy: make screenshots
FIGURE_MAX_BYTES = 150_000


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load(threads: int):
    """Volumes and the two projectors (labels only; labels + materials)."""
    from XraySegSimLib import DrrProjector, LabelClasses, read_volume
    from XraySegSimLib.materials import MaterialModel

    paths = sample_ct()
    ct, labels = read_volume(paths.ct_path), read_volume(paths.labels_path)
    bones = LabelClasses.totalsegmentator_bones()
    plain = DrrProjector(ct, labels, bones, threads=threads)
    with_materials = DrrProjector(ct, labels, bones, threads=threads, materials=MaterialModel())
    return ct, plain, with_materials


def clear_physics_caches() -> None:
    from XraySegSimLib import physics

    for cached in (physics._spek_model, physics.tube_spectrum, physics.beam_model, physics.moment_table,
                   physics._heel_profile):
        cached.cache_clear()


def time_variants(ct, plain, with_materials, size: int, repeats: int) -> dict[str, list[float]]:
    """Interleaved timings (ms) of every variant; the first call of each (numba load, caches) is not timed."""
    from XraySegSimLib import physics

    geometry = make_geometry(ct.center_ras, size)
    params = physics.preset("chest-pa")
    result = with_materials.render(geometry)
    plain.render(geometry)
    physics.simulate_radiograph(result, params, rng=0)
    times: dict[str, list[float]] = {"drr+labels": [], "drr+labels+materials": [], "physics": [],
                                     "physics-cold": []}
    for k in range(repeats):
        for name, call in (("drr+labels", lambda: plain.render(geometry)),
                           ("drr+labels+materials", lambda: with_materials.render(geometry)),
                           ("physics", lambda: physics.simulate_radiograph(result, params, rng=k))):
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    for k in range(min(3, repeats)):  # cold: a new parameter set (spekpy model, tables, heel profile)
        clear_physics_caches()
        start = time.perf_counter()
        physics.simulate_radiograph(result, params, rng=k)
        times["physics-cold"].append((time.perf_counter() - start) * 1e3)
    return times


def rows_for(times: dict[str, list[float]], size: int, threads: int, n_labels: int) -> list[dict]:
    medians = {name: statistics.median(values) for name, values in times.items()}
    medians["drr+labels+materials+physics"] = medians["drr+labels+materials"] + medians["physics"]
    host = {"nproc": os.cpu_count(), "threads": threads, "load_1min": round(os.getloadavg()[0], 2)}
    rows = []
    for variant, median in medians.items():
        rows.append({"engine": ENGINE, "variant": variant, "size": size, "labels": n_labels,
                     "median_ms": round(median, 2), "peak_mb": round(peak_mb(), 1),
                     "repeats": len(times.get(variant, times["physics"])),
                     "ratio_vs_drr_labels": round(median / medians["drr+labels"], 3),
                     "timing": "wall time in one process, interleaved repeats, medians; physics = "
                               "simulate_radiograph(chest-pa) on a rendered DrrResult", "host": host})
    return rows


def write_rows(path: Path, rows: list[dict]) -> None:
    """Replace this engine's rows in the JSON list at ``path``, keep the others; atomic (tmp + os.replace)."""
    existing = json.loads(path.read_text()) if path.is_file() else []
    kept = [row for row in existing if row.get("engine") != ENGINE]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(kept + rows, handle, indent=2)
        handle.write("\n")
    os.replace(handle.name, path)


def print_table(rows: list[dict]) -> None:
    print(f"{'variant':32s} {'size':>5s} {'median ms':>10s} {'x DRR+labels':>13s}")
    for row in rows:
        print(f"{row['variant']:32s} {row['size']:5d} {row['median_ms']:10.1f} {row['ratio_vs_drr_labels']:13.3f}")
    by = {row["variant"]: row for row in rows}
    overhead = by["drr+labels+materials+physics"]["median_ms"] / by["drr+labels"]["median_ms"] - 1.0
    materials = by["drr+labels+materials"]["median_ms"] / by["drr+labels"]["median_ms"] - 1.0
    print(f"materials in the kernel add {materials:+.1%}; materials + physics add {overhead:+.1%} to the DRR with "
          f"labels (target <= {TARGET_OVERHEAD:.0%}): {'MET' if overhead <= TARGET_OVERHEAD else 'NOT MET'}")


def make_figure(ct, with_materials, size: int = 512) -> Path:
    """Side by side: naive DRR (overlay.drr_to_uint8) | full physics (chest-pa), PA view of the sample CT."""
    from PIL import Image

    from XraySegSimLib import physics, views
    from XraySegSimLib.overlay import drr_to_uint8

    result = with_materials.render(views.from_preset("chest-pa", isocenter=ct.center_ras, size=size))
    simulated = physics.simulate_radiograph(result, "chest-pa", rng=0)
    right = (simulated.image * 255).round().astype(np.uint8)
    picture = np.hstack([drr_to_uint8(result.line_integral), np.zeros((size, 8), np.uint8), right])
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    for colours in (256, 128, 64):  # fewest grey levels that keep it under the size limit
        image = Image.fromarray(picture)
        if colours < 256:
            image = image.quantize(colours, dither=Image.Dither.NONE).convert("L")
        image.save(FIGURE, optimize=True)
        if FIGURE.stat().st_size <= FIGURE_MAX_BYTES:
            break
    print(f"figure: {FIGURE.relative_to(REPO_ROOT)} ({FIGURE.stat().st_size // 1024} KB, {colours} grey levels)")
    return FIGURE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="bench-results/drr.json")
    parser.add_argument("--figure", action="store_true", help="also write Testing/Artifacts/physics.png")
    parser.add_argument("--no-write", action="store_true", help="print only, leave the JSON alone")
    args = parser.parse_args(argv)
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"before: {load_before}", file=sys.stderr)
    ct, plain, with_materials = load(args.threads)
    times = time_variants(ct, plain, with_materials, args.size, args.repeats)
    rows = rows_for(times, args.size, args.threads, len(plain.classes))
    print_table(rows)
    print(f"load 1/5/15 min: {os.getloadavg()} (2 cores shared: rerun if > ~0.5 before the run)")
    if not args.no_write:
        write_rows(REPO_ROOT / args.output, rows)
    if args.figure:
        make_figure(ct, with_materials)
    return 0


if __name__ == "__main__":
    sys.exit(main())
