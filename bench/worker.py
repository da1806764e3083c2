"""One benchmark engine in its own long-lived process, driven by bench_drr.py over stdin/stdout.

    python bench/worker.py ENGINE --threads 2 --workdir DIR

Protocol: one JSON object per line each way. After start-up the worker sends ``{"ready": info}`` (or
``{"error": ...}``), then answers each request:

    {"cmd": "prepare", "size": N}     -> {"ok": true}          (renders once untimed if the engine warms up)
    {"cmd": "render", "image": true}  -> {"ms": float, "image": "DIR/ENGINE-N.npy" or null}
    {"cmd": "peak"}                   -> {"peak_mb": float}
    {"cmd": "quit"}                   -> exits

A request that fails is answered ``{"error": "Type: message"}`` and the worker keeps serving. The protocol
has the real stdout to itself: anything the libraries print goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from engines import ENGINE_NAMES, make_engine


def protocol_stream():
    """A private line-buffered copy of stdout; fd 1 itself is pointed at stderr."""
    stream = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return stream


def handle(engine, key: str, workdir: Path, state: dict, request: dict) -> dict:
    """Answer one request (see the module docstring)."""
    command = request.get("cmd")
    if command == "prepare":
        state["size"] = int(request["size"])
        engine.prepare(state["size"])
        if engine.warmup:
            engine.render()
        return {"ok": True}
    if command == "render":
        ms, image = engine.render()
        path = None
        if request.get("image"):
            path = workdir / f"{key}-{state['size']}.npy"
            np.save(path, image)
        return {"ms": ms, "image": None if path is None else str(path)}
    if command == "peak":
        return {"peak_mb": engine.peak_mb()}
    raise ValueError(f"unknown command {command!r}")


def serve(key: str, threads: int, workdir: Path) -> None:
    out = protocol_stream()

    def send(message: dict) -> None:
        out.write(json.dumps(message) + "\n")

    try:
        engine = make_engine(key, threads, str(workdir))
        send({"ready": engine.info()})
    except Exception as err:  # reported to the driver, which skips this engine
        send({"error": f"{type(err).__name__}: {err}"})
        return
    state: dict = {"size": None}
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("cmd") == "quit":
            return
        try:
            send(handle(engine, key, workdir, state, request))
        except Exception as err:
            send({"error": f"{type(err).__name__}: {err}"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", choices=ENGINE_NAMES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    serve(args.engine, args.threads, args.workdir)


if __name__ == "__main__":
    main()
