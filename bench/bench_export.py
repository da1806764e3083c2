"""Export throughput: samples per second of ``xrayseg export`` with all bone labels, next to the DRR engine alone.

    .venv/bin/python bench/bench_export.py [--sizes 256 512] [--workers 1 2] [--cts 2] [--views 12]
                                           [--repeats 1] [--physics none] [--output bench-results/export.json]

Inputs: the sample chest CT, listed ``--cts`` times under different ids (one task = one CT, so 2 workers need
>= 2 CTs). View chest-ap with the default randomisation, every TotalSegmentator bone as a class, physics as given
(default none: the pure DRR + labels path, so the ratio measures the export's own overhead).

For each (size, workers) one ``xrayseg export`` runs as a child process:

* ``samples_per_s``: samples / wall time of the whole command (process start, CT reading, everything);
* ``steady_samples_per_s``: from the sidecar times, once every worker has its CT loaded
  ((n - workers) / (last sidecar - workers-th sidecar));
* ``per_ct_samples_per_s``: ``workers`` x (samples - 1) / (last - first sidecar), pooled over the CTs: the rate
  while a CT is loaded, without the gaps where a worker reads and packs its next CT (~1.5 s each; with 1
  worker and 2 CTs ``steady`` includes one such gap);
* ``peak_mb``: largest resident set of the command and its worker processes (sampled every 20 ms; on the
  first run also ``RUSAGE_CHILDREN``, which later runs cannot use: see ``run_one``);
* ``engine_samples_per_s``: ``workers / mean render time`` of ``DrrProjector.render`` in this process with
  ``cores / workers`` threads, on the export's own geometries (same CT ids, views and seed): what the engine
  alone would give;
* ``ratio`` = steady / engine (target >= 0.8).

On a shared machine the wall-clock figures move with other people's load, so the CPU cost is reported too:

* ``cpu_ms_per_sample``: CPU time (user + sys, the command and its worker processes, sampled every 20 ms) spent
  between the same two sidecars as ``steady``, per sample: CT reading, process start and the final step are
  outside the window;
* ``engine_cpu_ms_per_render``: mean CPU time of one ``DrrProjector.render`` (same threads and geometries);
* ``ratio_cpu`` = engine CPU / export CPU per sample: the share of the export's work that is rendering, i.e.
  the steady/engine ratio the export reaches when it has its cores to itself;
* with 2+ workers, ``engine_cpu_ms_per_render_side_by_side`` and ``ratio_cpu_side_by_side``: the same with
  ``workers - 1`` other engine processes rendering meanwhile, as the export's workers render side by side. A
  render alone has the caches and memory bandwidth to itself; ``ratio_cpu`` counts the cost of sharing them
  as export overhead, this one does not (0-4 % per 512^2 render on the 2-core machine here).

``--repeats N`` runs each configuration N times (engine measured after each run) and reports medians.

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


def engine_rate(size: int, workers: int, cts: int, views: int, concurrent: bool = False,
                load_forever: bool = False) -> tuple[float, float]:
    """(samples/s of ``workers`` engines, CPU ms of one render), over the export's own geometries.

    ``concurrent``: ``workers - 1`` other engine processes render the same views meanwhile, as the export's
    workers do side by side (shared caches and memory bandwidth). ``load_forever``: be such a process."""
    from XraySegSimLib import DrrProjector
    from XraySegSimLib.export import ExportConfig, available_cores
    from XraySegSimLib.export_geometry import random_geometry, sample_rng
    from XraySegSimLib.export_inputs import CaseInput, load_case, load_mapping
    from XraySegSimLib.sample_data import fetch_sample_chest_ct

    sample = fetch_sample_chest_ct()
    threads = max(1, available_cores() // workers)
    mapping = load_mapping("bones")
    loaded = load_case(CaseInput("chest", str(sample.ct_path), str(sample.labels_path)), mapping)
    projector = DrrProjector(loaded.ct, loaded.labels, mapping.classes_for(loaded.names), threads=threads,
                             names_table=loaded.names)
    iso = loaded.ct.centroid_ras(projector.packed >> 16 != 0)
    projector.release_packed()  # as the export's workers do: the engine holds what a worker holds
    config = ExportConfig(out="unused", view="chest-ap", size=size)
    geometries = [random_geometry(config, iso, sample_rng(config.seed, f"chest{i}", v))[0]
                  for i in range(cts) for v in range(views)]
    projector.render(geometries[0])  # kernel load
    if load_forever:
        print("ready", flush=True)
        while True:
            for geometry in geometries:
                projector.render(geometry)
    others = []
    if concurrent:
        for _ in range(workers - 1):
            others.append(subprocess.Popen([sys.executable, __file__, "--engine-load", str(size), str(workers),
                                            str(cts), str(views)], stdout=subprocess.PIPE, text=True))
        for other in others:
            other.stdout.readline()  # "ready": CT loaded, kernel compiled
    times, cpu = [], []
    for geometry in geometries:
        t0, c0 = time.perf_counter(), time.process_time()
        projector.render(geometry)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    for other in others:
        other.kill()
        other.wait()
    return workers / statistics.mean(times), 1000 * statistics.mean(cpu)


def _tree_peak_rss(process) -> float:
    """Largest resident set (bytes) among a process and its live descendants, now."""
    import psutil

    largest = 0
    for proc in [process] + process.children(recursive=True):
        try:
            largest = max(largest, proc.memory_info().rss)
        except psutil.Error:
            pass
    return float(largest)


def _tree_cpu(process) -> float:
    """User + sys seconds of a process and its live descendants (worker processes)."""
    import psutil

    total = 0.0
    for proc in [process] + process.children(recursive=True):
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def run_one(size: int, workers: int, cts: int, views: int, physics: str, folder: Path, tag: str = "",
            first_run: bool = False) -> dict:
    from XraySegSimLib.sample_data import fetch_sample_chest_ct

    sample = fetch_sample_chest_ct()
    pairs = folder / "pairs.csv"
    pairs.write_text("ct,labels,id\n" + "".join(f"{sample.ct_path},{sample.labels_path},chest{i}\n"
                                                 for i in range(cts)))
    out = folder / f"out_{size}_{workers}_{views}{tag}"
    command = [sys.executable, "-m", "XraySegInferLib.entry", "export", "--pairs", str(pairs), "--view", "chest-ap",
               "--views-per-ct", str(views), "--size", str(size), "--physics", physics, "--workers", str(workers),
               "--test-fraction", "0", "--quiet", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "XraySegSim"))
    import psutil

    sidecars = out / "Dataset501_XraySeg" / "sidecars"
    t0 = time.perf_counter()
    log = open(folder / f"stderr_{size}_{workers}{tag}.txt", "w+")
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    process = psutil.Process(child.pid)
    cpu_at: dict[int, float] = {}  # sidecars seen -> CPU of the command's process tree then
    peak_bytes = 0.0
    while child.poll() is None:
        try:
            count = sum(1 for _ in sidecars.glob("*.json")) if sidecars.is_dir() else 0
            cpu_at.setdefault(count, _tree_cpu(process))
            peak_bytes = max(peak_bytes, _tree_peak_rss(process))
        except (psutil.Error, OSError):
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    log.seek(0)
    stderr = log.read()
    log.close()
    if child.returncode != 0:
        raise RuntimeError(stderr[-2000:])
    # Sampled, not RUSAGE_CHILDREN: a child's ru_maxrss starts at this process's size when it is forked, and
    # from the second repeat on this process holds the engine measurement's CT (~740 MB reported, not the export's).
    peak = max(peak_bytes / 2 ** 20, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0 if first_run
               else 0.0)
    by_ct: dict[str, list[float]] = {}
    for path in (out / "Dataset501_XraySeg" / "sidecars").glob("*.json"):
        by_ct.setdefault(path.stem.rsplit("_v", 1)[0], []).append(path.stat().st_mtime)
    spans = [(len(t) - 1, max(t) - min(t)) for t in by_ct.values() if len(t) > 1]
    per_ct = workers * sum(n for n, _ in spans) / sum(d for _, d in spans) if spans else float("nan")
    stamps = sorted(t for times in by_ct.values() for t in times)
    n = len(stamps)
    steady = (n - workers) / (stamps[-1] - stamps[workers - 1]) if n > workers and stamps[-1] > stamps[workers - 1] \
        else float("nan")
    seen = sorted(k for k in cpu_at if workers <= k < n)
    cpu_ms = 1000 * (cpu_at[seen[-1]] - cpu_at[seen[0]]) / (seen[-1] - seen[0]) if len(seen) > 1 and \
        seen[-1] > seen[0] else float("nan")
    return {"size": size, "workers": workers, "samples_per_s": round(n / wall, 3),
            "steady_samples_per_s": round(steady, 3), "per_ct_samples_per_s": round(per_ct, 3),
            "peak_mb": round(peak, 1), "samples": n,
            "wall_s": round(wall, 2), "cpu_ms_per_sample": round(cpu_ms, 1), "physics": physics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cts", type=int, default=2)
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--physics", default="none")
    parser.add_argument("--output", type=Path, default=REPO / "bench-results" / "export.json")
    parser.add_argument("--engine-load", type=int, nargs=4, metavar=("SIZE", "WORKERS", "CTS", "VIEWS"),
                        help=argparse.SUPPRESS)  # internal: one of the concurrent engines
    args = parser.parse_args()
    if args.engine_load:
        engine_rate(*args.engine_load, load_forever=True)
    from XraySegSimLib.export import available_cores

    print(f"load: {os.getloadavg()}, cores: {available_cores()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for workers in args.workers:
                runs, engines, side_by_side = [], [], []
                for repeat in range(args.repeats):
                    runs.append(run_one(size, workers, args.cts, args.views, args.physics, Path(tmp), f"_{repeat}",
                                        first_run=not rows and not runs))
                    engines.append(engine_rate(size, workers, args.cts, args.views))
                    if workers > 1:
                        side_by_side.append(engine_rate(size, workers, args.cts, args.views, concurrent=True))
                row = dict(runs[0])
                for key in ("samples_per_s", "steady_samples_per_s", "per_ct_samples_per_s", "wall_s",
                            "cpu_ms_per_sample"):
                    row[key] = round(statistics.median(r[key] for r in runs), 3)
                row["peak_mb"] = max(r["peak_mb"] for r in runs)
                row["repeats"] = args.repeats
                row["engine_samples_per_s"] = round(statistics.median(e[0] for e in engines), 3)
                row["ratio_steady_vs_engine"] = round(row["steady_samples_per_s"] / row["engine_samples_per_s"], 3)
                row["ratio_per_ct_vs_engine"] = round(row["per_ct_samples_per_s"] / row["engine_samples_per_s"], 3)
                row["engine_cpu_ms_per_render"] = round(statistics.median(e[1] for e in engines), 1)
                row["ratio_cpu"] = round(row["engine_cpu_ms_per_render"] / row["cpu_ms_per_sample"], 3)
                if side_by_side:
                    row["engine_cpu_ms_per_render_side_by_side"] = round(statistics.median(e[1] for e in side_by_side),
                                                                         1)
                    row["ratio_cpu_side_by_side"] = round(row["engine_cpu_ms_per_render_side_by_side"]
                                                          / row["cpu_ms_per_sample"], 3)
                row["load_avg_1min"] = round(os.getloadavg()[0], 2)
                rows.append(row)
                print(json.dumps(row))
    from XraySegSimLib.io import write_json

    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, rows)
    print(f"{'size':>5} {'workers':>7} {'samples/s':>10} {'steady':>8} {'per CT':>8} {'engine':>8} {'ratio':>6} "
          f"{'r_ct':>6} {'cpu ms':>7} {'eng ms':>7} {'r_cpu':>6} {'peak MB':>8}")
    for r in rows:
        print(f"{r['size']:>5} {r['workers']:>7} {r['samples_per_s']:>10.2f} {r['steady_samples_per_s']:>8.2f} "
              f"{r['per_ct_samples_per_s']:>8.2f} {r['engine_samples_per_s']:>8.2f} "
              f"{r['ratio_steady_vs_engine']:>6.2f} {r['ratio_per_ct_vs_engine']:>6.2f} {r['cpu_ms_per_sample']:>7.1f} "
              f"{r['engine_cpu_ms_per_render']:>7.1f} "
              f"{r['ratio_cpu']:>6.2f} {r['peak_mb']:>8.0f}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
