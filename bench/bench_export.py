"""Export throughput: samples per second of ``xrayseg export`` with all bone labels, next to the DRR engine alone.

    .venv/bin/python bench/bench_export.py [--sizes 256 512] [--workers 1 2] [--cts 2] [--views 12]
                                           [--physics none] [--output bench-results/export.json]

Inputs: the sample chest CT, listed ``--cts`` times under different ids (one task = one CT, so 2 workers need
>= 2 CTs). View chest-ap with the default randomisation, every TotalSegmentator bone as a class, physics as given
(default none: the pure DRR + labels path, so the ratio measures the export's own overhead).

For each (size, workers) one ``xrayseg export`` runs as a child process:

* ``samples_per_s``: samples / wall time of the whole command (process start, CT reading, everything);
* ``steady_samples_per_s``: from the sidecar times, once every worker has its CT loaded
  ((n - workers) / (last sidecar - workers-th sidecar));
* ``peak_mb``: largest resident set of the command and its worker processes (``RUSAGE_CHILDREN``);
* ``engine_samples_per_s``: ``workers / median render time`` of ``DrrProjector.render`` in this process with
  ``cores / workers`` threads, on the same kind of geometries: what the engine alone would give;
* ``ratio`` = steady / engine (target >= 0.8).

Rows are written atomically to ``--output`` as a list of {"size", "workers", "samples_per_s", "peak_mb", ...}.
Check ``uptime`` first: the machine may be shared.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "XraySegSim"))


def engine_rate(size: int, workers: int, repeats: int = 7) -> float:
    from XraySegSimLib import DrrProjector, LabelClasses, read_volume
    from XraySegSimLib.export import ExportConfig, random_geometry, sample_rng
    from XraySegSimLib.sample_data import fetch_sample_chest_ct

    sample = fetch_sample_chest_ct()
    threads = max(1, (os.cpu_count() or 1) // workers)
    ct, labels = read_volume(sample.ct_path), read_volume(sample.labels_path)
    projector = DrrProjector(ct, labels, LabelClasses.totalsegmentator_bones(), threads=threads)
    labelled = projector.packed >> 16 != 0
    iso = ct.centroid_ras(labelled)
    config = ExportConfig(out="unused", view="chest-ap", size=size)
    geometries = [random_geometry(config, iso, sample_rng(0, "chest", v))[0] for v in range(repeats)]
    projector.render(geometries[0])  # kernel load
    times = []
    for geometry in geometries:
        t0 = time.perf_counter()
        projector.render(geometry)
        times.append(time.perf_counter() - t0)
    return workers / statistics.median(times)


def run_one(size: int, workers: int, cts: int, views: int, physics: str, folder: Path) -> dict:
    from XraySegSimLib.sample_data import fetch_sample_chest_ct

    sample = fetch_sample_chest_ct()
    pairs = folder / "pairs.csv"
    pairs.write_text("ct,labels,id\n" + "".join(f"{sample.ct_path},{sample.labels_path},chest{i}\n"
                                                 for i in range(cts)))
    out = folder / f"out_{size}_{workers}"
    command = [sys.executable, "-m", "XraySegSimLib.cli", "export", "--pairs", str(pairs), "--view", "chest-ap",
               "--views-per-ct", str(views), "--size", str(size), "--physics", physics, "--workers", str(workers),
               "--test-fraction", "0", "--quiet", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "XraySegSim"))
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    stamps = sorted(p.stat().st_mtime for p in (out / "Dataset501_XraySeg" / "sidecars").glob("*.json"))
    n = len(stamps)
    steady = (n - workers) / (stamps[-1] - stamps[workers - 1]) if n > workers and stamps[-1] > stamps[workers - 1] \
        else float("nan")
    return {"size": size, "workers": workers, "samples_per_s": round(n / wall, 3),
            "steady_samples_per_s": round(steady, 3), "peak_mb": round(peak, 1), "samples": n,
            "wall_s": round(wall, 2), "physics": physics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cts", type=int, default=2)
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--physics", default="none")
    parser.add_argument("--output", type=Path, default=REPO / "bench-results" / "export.json")
    args = parser.parse_args()
    print(f"load: {os.getloadavg()}, cores: {os.cpu_count()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for workers in args.workers:
                row = run_one(size, workers, args.cts, args.views, args.physics, Path(tmp))
                row["engine_samples_per_s"] = round(engine_rate(size, workers), 3)
                row["ratio_steady_vs_engine"] = round(row["steady_samples_per_s"] / row["engine_samples_per_s"], 3)
                row["load_avg_1min"] = round(os.getloadavg()[0], 2)
                rows.append(row)
                print(json.dumps(row))
    from XraySegSimLib.io import write_json

    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, rows)
    print(f"{'size':>5} {'workers':>7} {'samples/s':>10} {'steady':>8} {'engine':>8} {'ratio':>6} {'peak MB':>8}")
    for r in rows:
        print(f"{r['size']:>5} {r['workers']:>7} {r['samples_per_s']:>10.2f} {r['steady_samples_per_s']:>8.2f} "
              f"{r['engine_samples_per_s']:>8.2f} {r['ratio_steady_vs_engine']:>6.2f} {r['peak_mb']:>8.0f}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
