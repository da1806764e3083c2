#!/bin/bash
# A set of unseen wrists (seeds never trained on), exported like make train-wrist's test sets and scored with the
# bundled wrist model: the third (3000-3005), fourth (4000-4005) and fifth (5000-5005) sets of its README.
# Usage: tools/train-wrist/unseen_test_set.sh [OUT [SEEDS]]   (default out/wrist-third 3000-3005; ~75 s on 2 cores)
set -e
cd "$(dirname "$0")/../.."  # the repository root
W=${1:-out/wrist-third}
SEEDS=${2:-3000-3005}
.venv/bin/python tools/train-wrist/make_phantoms.py --out "$W/phantoms" --train none --test "$SEEDS"
NAMES=$(realpath "$W/phantoms/test/wrist_${SEEDS%-*}/names.csv")
for view in wrist-pa wrist-oblique-pronated wrist-lateral wrist-oblique-supinated; do
  .venv/bin/xrayseg export --folder "$W/phantoms/test" --names "$NAMES" --classes tools/train-wrist/classes.json \
    --physics wrist-pa --range pixel_scale=0.6,0.7 --range shift_s_mm=-35,-15 --size 256 --threads 2 --quiet \
    --view "$view" --views-per-ct 6 --seed 1 --test-fraction 0 --dataset-id 612 --dataset-name WristTest \
    --out "$W/test/$view"
done
.venv/bin/python tools/train-wrist/bundle.py --score Resources/Models/wrist --run "$W" --json "$W/score.json"
