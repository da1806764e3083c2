"""Benchmark DRR engines side by side on the sample chest CT: ours (xrayseg, with and without bone labels),
plastimatch ``drr -i exact`` and DiffDRR (Siddon, trilinear), all rendering the same chest AP view.

    .venv/bin/python bench/bench_drr.py [--quick] [--threads 2] [--output bench-results/drr.json]

Each engine runs in its own long-lived worker process (bench/worker.py) that loads the volume once, so each
reported peak memory is that engine's own. The timed repeats of all engines are interleaved, spread evenly
over the run, so machine noise hits every engine alike; the median is reported. Every peer image is
correlated with ours to prove the views match. Output: a table with target ratios on stdout, progress on
stderr, and a JSON list of rows (written atomically) at ``--output``, relative to the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from drr_setup import (DETECTOR_MM, REPO_ROOT, SOURCE_TO_DETECTOR_MM, SOURCE_TO_ISOCENTER_MM, VIEW, host_info,
                       machine_load)

BENCH_DIR = Path(__file__).resolve().parent
REFERENCE = "xrayseg"  # every image is correlated with this engine's image at the same size
CORRELATION_MIN = 0.99
# Timed repeats per size and engine (DiffDRR takes seconds per DRR, Siddon at 512^2 ~40 s and ~13 GB).
# xrayseg-gpu (all bone labels, CUDA) gets a row per size: measured with a GPU, marked skipped without one.
FULL_PLAN = {
    256: {"xrayseg": 7, "xrayseg-labels": 7, "plastimatch-exact": 7, "xrayseg-labels-noskip": 7, "xrayseg-gpu": 50,
          "diffdrr-trilinear": 3, "diffdrr-siddon": 3},
    512: {"xrayseg": 5, "xrayseg-labels": 5, "plastimatch-exact": 5, "xrayseg-labels-noskip": 5, "xrayseg-gpu": 50,
          "diffdrr-trilinear": 3, "diffdrr-siddon": 3},
}
QUICK_PLAN = {256: {"xrayseg": 5, "xrayseg-labels": 5, "plastimatch-exact": 5, "xrayseg-gpu": 20,
                    "diffdrr-trilinear": 2}}
TARGET_VS_PLASTIMATCH = 0.5  # ours with labels / plastimatch exact: at most (issue 15)
TARGET_VS_DIFFDRR = 20.0  # DiffDRR / ours with labels: at least
TARGET_PEAK_MB = 500.0  # ours at 512^2: at most


class WorkerError(RuntimeError):
    """A worker could not start or answer a request; its engine is skipped (for that size)."""


class Worker:
    """Client side of one worker process (protocol in worker.py)."""

    def __init__(self, key: str, threads: int, workdir: Path) -> None:
        self.key = key
        self.log_path = workdir / f"{key}.log"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        env.setdefault("XRAYSEG_CACHE", str(REPO_ROOT / ".cache" / "xrayseg"))
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(BENCH_DIR / "worker.py"), key, "--threads", str(threads),
                 "--workdir", str(workdir)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1, env=env,
            )
        self.info: dict = {}

    def receive(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            tail = self.log_path.read_text(errors="replace")[-600:]
            raise WorkerError(f"worker exited with status {self.process.wait()}; its log ends: {tail}")
        message = json.loads(line)
        if "error" in message:
            raise WorkerError(message["error"])
        return message

    def wait_ready(self) -> dict:
        self.info = self.receive()["ready"]
        return self.info

    def request(self, **command) -> dict:
        try:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
        except OSError:  # the worker died (e.g. killed for memory)
            raise WorkerError(f"worker is not running (status {self.process.wait()})") from None
        return self.receive()

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.process.stdin.write('{"cmd": "quit"}\n')
                self.process.stdin.flush()
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


@dataclass
class Measurement:
    """What one engine gave at one size."""

    times_ms: list[float] = field(default_factory=list)
    image: np.ndarray | None = None
    peak_mb: float | None = None


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def interleaved(repeats: dict[str, int]) -> list[str]:
    """Run order: the k-th of an engine's n repeats sits at (k + 0.5) / n of the run (ties: plan order),
    so engines with few slow repeats and engines with many fast ones are spread over the same time."""
    slots = [((k + 0.5) / n, order, key) for order, (key, n) in enumerate(repeats.items()) for k in range(n)]
    return [key for _, _, key in sorted(slots)]


def start_workers(keys: list[str], threads: int, workdir: Path) -> tuple[dict[str, Worker], dict[str, str]]:
    """Start every worker at once (volume loading overlaps); returns those that came up and, for the others,
    why not."""
    pending = {key: Worker(key, threads, workdir) for key in keys}
    ready, skipped = {}, {}
    for key, worker in pending.items():
        try:
            info = worker.wait_ready()
            ready[key] = worker
            progress(f"ready   {key}: {info['version']}, {info['labels']} labels")
        except WorkerError as err:
            progress(f"SKIPPED {key}: {err}")
            skipped[key] = str(err)
            worker.close()
    return ready, skipped


def measure_size(workers: dict[str, Worker], size: int, repeats: dict[str, int]) -> dict[str, Measurement]:
    """Prepare every engine for ``size``, run the interleaved timed repeats, then collect peak memory."""
    results: dict[str, Measurement] = {}
    for key in repeats:
        if key not in workers:
            continue
        try:
            workers[key].request(cmd="prepare", size=size)
            results[key] = Measurement()
        except WorkerError as err:
            progress(f"SKIPPED {key} at {size}: {err}")
    failed: set[str] = set()
    for key in interleaved({key: repeats[key] for key in results}):
        if key in failed:
            continue
        found = results[key]
        try:
            reply = workers[key].request(cmd="render", image=found.image is None)
        except WorkerError as err:
            progress(f"FAILED  {key} at {size}: {err}")
            failed.add(key)
            continue
        found.times_ms.append(reply["ms"])
        if reply["image"]:
            found.image = np.load(reply["image"])
        progress(f"{size:4d}  {key:18s} {reply['ms']:10.1f} ms")
    for key in set(results) - failed:
        try:
            results[key].peak_mb = workers[key].request(cmd="peak")["peak_mb"]
        except WorkerError as err:
            progress(f"FAILED  {key} at {size}: {err}")
            failed.add(key)
    return {key: found for key, found in results.items() if found.times_ms and key not in failed}


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.shape != b.shape:
        return None
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def make_rows(size: int, results: dict[str, Measurement], workers: dict[str, Worker], host: dict) -> list[dict]:
    """JSON rows for one size; ``engine`` names xrayseg's two workers alike (``labels`` tells them apart)."""
    reference = results.get(REFERENCE)
    cpu_labels = results.get("xrayseg-labels")
    rows = []
    for key, found in results.items():
        info = workers[key].info
        corr = pearson(found.image, reference.image) if reference is not None else None
        extra = {}
        if key == "xrayseg-gpu" and cpu_labels is not None:  # CPU-vs-GPU agreement on the same view
            peak = float(np.abs(cpu_labels.image).max())
            extra["max_rel_diff_vs_cpu"] = float(np.abs(found.image - cpu_labels.image).max() / peak)
        if key == "xrayseg-gpu":
            extra["drr_per_s"] = round(1000.0 / statistics.median(found.times_ms), 1)
        rows.append({**extra,
            "engine": key.removesuffix("-labels"), "size": size, "labels": info["labels"],
            "median_ms": round(statistics.median(found.times_ms), 2), "min_ms": round(min(found.times_ms), 2),
            "peak_mb": round(found.peak_mb, 1), "corr_vs_xrayseg": None if corr is None else round(corr, 6),
            "repeats": len(found.times_ms), "version": info["version"], "timing": info["timing"], "host": host,
        })
    return rows


def find(rows: list[dict], engine: str, size: int, labelled: bool = False) -> dict | None:
    for row in measured(rows):
        if row["engine"] == engine and row["size"] == size and (row["labels"] > 0) == labelled:
            return row
    return None


def format_table(rows: list[dict]) -> str:
    lines = [f"{'engine':18s} {'size':>5s} {'labels':>6s} {'median ms':>10s} {'min ms':>9s} {'reps':>4s} "
             f"{'peak MB':>8s} {'r vs ours':>9s}"]
    for row in rows:
        if "skipped" in row:
            lines.append(f"{row['engine']:18s} {row['size']:5d}  skipped: {row['skipped'][:80]}")
            continue
        corr = "-" if row["corr_vs_xrayseg"] is None else f"{row['corr_vs_xrayseg']:.5f}"
        lines.append(f"{row['engine']:18s} {row['size']:5d} {row['labels']:6d} {row['median_ms']:10.1f} "
                     f"{row['min_ms']:9.1f} {row['repeats']:4d} {row['peak_mb']:8.0f} {corr:>9s}")
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def format_ratios(rows: list[dict]) -> str:
    """Target ratios: ours with labels vs plastimatch exact and vs DiffDRR; our peak memory."""
    lines = []
    for row in (r for r in measured(rows) if r["engine"] == "xrayseg-labels-noskip"):
        ours = find(rows, REFERENCE, row["size"], labelled=True)
        if ours is not None:
            lines.append(f"{row['size']}^2  empty-space skipping: {ours['median_ms'] / row['median_ms']:.2f}x the "
                         "time without it (same labels)")
    for row in (r for r in measured(rows) if r["engine"] == "xrayseg-gpu"):
        lines.append(f"{row['size']}^2  GPU ({row['labels']} labels): {row['drr_per_s']:.0f} DRR/s, max relative "
                     f"difference vs CPU {row.get('max_rel_diff_vs_cpu', float('nan')):.1e}")
    rows = measured(rows)
    for size in sorted({row["size"] for row in rows}):
        ours = find(rows, REFERENCE, size, labelled=True)
        if ours is None:
            continue
        peer = find(rows, "plastimatch-exact", size)
        if peer is not None:
            ratio = ours["median_ms"] / peer["median_ms"]
            lines.append(f"{size}^2  ours ({ours['labels']} labels) / plastimatch exact: {ratio:6.2f}   "
                         f"(target <= {TARGET_VS_PLASTIMATCH:g})  {verdict(ratio <= TARGET_VS_PLASTIMATCH)}")
        for name in ("diffdrr-siddon", "diffdrr-trilinear"):
            peer = find(rows, name, size)
            if peer is not None:
                ratio = peer["median_ms"] / ours["median_ms"]
                lines.append(f"{size}^2  {name} / ours ({ours['labels']} labels): {ratio:6.0f}x  "
                             f"(target >= {TARGET_VS_DIFFDRR:g}x)  {verdict(ratio >= TARGET_VS_DIFFDRR)}")
    largest = max(row["size"] for row in rows)
    for row in (r for r in rows if r["engine"] == REFERENCE and r["size"] == largest):
        note = "" if largest == 512 else "  (512^2 not run: drop --quick)"
        lines.append(f"{largest}^2  ours ({row['labels']} labels) peak memory: {row['peak_mb']:.0f} MB   "
                     f"(target <= {TARGET_PEAK_MB:g} MB)  {verdict(row['peak_mb'] <= TARGET_PEAK_MB)}{note}")
    for row in rows:
        if row["corr_vs_xrayseg"] is not None and row["corr_vs_xrayseg"] < CORRELATION_MIN:
            lines.append(f"WARNING {row['engine']} at {row['size']}^2 correlates r={row['corr_vs_xrayseg']:.4f} "
                         "with ours: the views do not match")
    return "\n".join(lines)


def write_json(rows: list[dict], path: Path) -> None:
    """Write the rows as a JSON list, atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(rows, indent=2) + "\n")
    os.replace(temporary, path)


def run(plan: dict[int, dict[str, int]], threads: int) -> list[dict]:
    """Start one worker per engine, measure every size in turn, stop the workers; returns the rows."""
    keys = list(dict.fromkeys(key for repeats in plan.values() for key in repeats))
    host = host_info(threads)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="drr-bench-") as tmp:
        workers, skipped = start_workers(keys, threads, Path(tmp))
        try:
            for size, repeats in plan.items():
                rows += make_rows(size, measure_size(workers, size, repeats), workers, host)
                rows += [{"engine": key, "size": size, "skipped": why, "host": host}
                         for key, why in skipped.items() if key in repeats]
        finally:
            for worker in workers.values():
                worker.close()
    host["loadavg_end"] = machine_load()  # the same dict in every row
    return rows


def measured(rows: list[dict]) -> list[dict]:
    """The rows with timings (not the engines that were skipped)."""
    return [row for row in rows if "skipped" not in row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256^2 only, fewer repeats, no DiffDRR Siddon")
    parser.add_argument("--threads", type=int, default=2, help="threads every engine may use (default 2)")
    parser.add_argument("--engines", help="comma-separated subset of the plan's engines (default: all), e.g. "
                        "xrayseg,xrayseg-labels,plastimatch-exact,xrayseg-gpu to leave DiffDRR out")
    parser.add_argument("--output", type=Path, default=Path("bench-results/drr.json"),
                        help="JSON rows, relative to the repository root (default bench-results/drr.json)")
    args = parser.parse_args()
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.engines:
        wanted = set(args.engines.split(","))
        plan = {size: {key: n for key, n in repeats.items() if key in wanted} for size, repeats in plan.items()}
    rows = run(plan, args.threads)
    if not measured(rows):
        sys.exit("no engine produced a measurement")
    host = rows[0]["host"]
    print(f"DRR benchmark: sample chest CT, {VIEW}, SDD {SOURCE_TO_DETECTOR_MM:g} mm, SID "
          f"{SOURCE_TO_ISOCENTER_MM:g} mm, detector {DETECTOR_MM[0]:g} mm; {host['threads']} threads on "
          f"{host['nproc']} x {host['cpu']}; load average {host['loadavg_start']} at the start, "
          f"{host['loadavg_end']} at the end")
    print(format_table(rows))
    print(format_ratios(rows))
    output = args.output if args.output.is_absolute() else REPO_ROOT / args.output
    write_json(rows, output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
