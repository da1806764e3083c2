#!/bin/bash
# A third set of unseen wrists (seeds 3000-3005), made after every phase choice: scored once, chooses nothing.
# Usage: tools/train-wrist/third_test_set.sh [OUT]   (default out/wrist-third; about 75 s on 2 cores)
set -e
cd "$(dirname "$0")/../.."  # the repository root
W=${1:-out/wrist-third}
.venv/bin/python tools/train-wrist/make_phantoms.py --out "$W/phantoms" --train none --test 3000-3005
NAMES=$(realpath "$W/phantoms/test/wrist_3000/names.csv")
for view in wrist-pa wrist-oblique-pronated wrist-lateral wrist-oblique-supinated; do
  .venv/bin/xrayseg export --folder "$W/phantoms/test" --names "$NAMES" --classes tools/train-wrist/classes.json \
    --physics wrist-pa --range pixel_scale=0.6,0.7 --range shift_s_mm=-35,-15 --size 256 --threads 2 --quiet \
    --view "$view" --views-per-ct 6 --seed 1 --test-fraction 0 --dataset-id 612 --dataset-name WristTest \
    --out "$W/test/$view"
done
.venv/bin/python tools/train-wrist/bundle.py --score Resources/Models/wrist --run "$W" --json "$W/score.json"
