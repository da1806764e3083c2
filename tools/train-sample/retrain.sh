#!/usr/bin/env bash
# The bundled chest model (issue 10 item 6), one command: `make train-sample` runs this.
#
# Data: two bodies, the sample chest CT (`chest-ct`) and the full chest CT with the sample CT's bone labels
# transferred by deformable registration (`chest-full-ct-labelled`). Training exports: chest-pa with small
# angle/magnification jitter, physics randomised, virtual patients (random smooth deformation, anisotropic
# scale, soft-tissue and bone density, the bone up to 2.5 times denser), the ignore label at the cut faces,
# strong image-domain randomisation. Test exports: plain chest-pa views (physics on; no virtual patients, no
# domain randomisation) of each body, with another seed.
# Then: the final model on both bodies (recipe chest-transfer), leave-one-body-out with the same recipe (one
# process per held-out body, run side by side with the final training), evaluation of the final model on the
# plain views, the plausibility rules on the real chest CR RG1, and tools/train-sample/bundle.py.
# Uses a GPU when torch sees one (--device auto). Measured: about 65 min on the 2-core machine shared with seven
# other jobs (plus 15 min for the label transfer on first use); not measured on free cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
X=.venv/bin/xrayseg
PY=.venv/bin/python
OUT=${OUT:-out/train-sample}
THREADS=${THREADS:-1}
mkdir -p "$OUT"
CT1=$($PY -c "from XraySegSimLib.sample_data import fetch_sample; p = fetch_sample('chest-ct'); print(p['ct'], p['labels'])")
CT2=$($PY -c "from XraySegSimLib.sample_data import fetch_sample; p = fetch_sample('chest-full-ct-labelled'); print(p['ct'], p['labels'])")
read -r CT1_IMAGE CT1_LABELS <<< "$CT1"
read -r CT2_IMAGE CT2_LABELS <<< "$CT2"
COMMON=(--classes tools/train-sample/classes.json --view chest-pa --physics chest-pa
        --range magnification_scale=1.02,1.12 --range lao_deg=-5,5 --range cranial_deg=-5,5 --range roll_deg=-3,3
        --size 256 --threads 2 --quiet --test-fraction 0 --no-previews)
# Bone density x 1.0-2.5 in the virtual patients: the DRRs of these CTs show the ribs far fainter than real CRs do
# (README, "0.4.0: ribs you can see"); trained on them, the model paints whole hemithoraces as ribs.
TRAIN=(--views-per-ct "${VIEWS:-200}" --seed 0 --virtual-patients 20 --domain-randomisation strong
       --bone-density-range 1.0,2.5)
PLAIN=(--views-per-ct 30 --seed 1)
[ -d "$OUT/train-chest-ct" ] || $X export --ct "$CT1_IMAGE" --labels "$CT1_LABELS" "${COMMON[@]}" "${TRAIN[@]}" \
    --dataset-id 611 --dataset-name ChestCT --out "$OUT/train-chest-ct"
[ -d "$OUT/test-chest-ct" ] || $X export --ct "$CT1_IMAGE" --labels "$CT1_LABELS" "${COMMON[@]}" "${PLAIN[@]}" \
    --dataset-id 621 --dataset-name ChestCTPlain --out "$OUT/test-chest-ct"
[ -d "$OUT/train-chest-full" ] || $X export --ct "$CT2_IMAGE" --labels "$CT2_LABELS" "${COMMON[@]}" "${TRAIN[@]}" \
    --dataset-id 612 --dataset-name ChestFull --out "$OUT/train-chest-full"
[ -d "$OUT/test-chest-full" ] || $X export --ct "$CT2_IMAGE" --labels "$CT2_LABELS" "${COMMON[@]}" "${PLAIN[@]}" \
    --dataset-id 622 --dataset-name ChestFullPlain --out "$OUT/test-chest-full"
TRAIN_SETS=("$OUT"/train-chest-ct/Dataset* "$OUT"/train-chest-full/Dataset*)
TEST_SETS=("$OUT"/test-chest-ct/Dataset* "$OUT"/test-chest-full/Dataset*)
$X merge-datasets "${TRAIN_SETS[@]}" --name Dataset613_ChestTwoBodies --out "$OUT/train-both"
BODIES=$($PY -c "
import sys; from XraySegInferLib.dataset import read_dataset
print(' '.join(sorted({c.ct_id for d in sys.argv[1:] for c in read_dataset(d).cases})))" "${TRAIN_SETS[@]}")
# The final model and one leave-one-body-out fold per body, side by side.
pids=()
$X train "$OUT/train-both/Dataset613_ChestTwoBodies" --recipe chest-transfer --threads "$THREADS" --quiet \
    --out "$OUT/run" > "$OUT/train.log" 2>&1 & pids+=($!)
for body in $BODIES; do
    $X lobo "${TRAIN_SETS[@]}" --test "${TEST_SETS[@]}" --bodies "$body" --recipe chest-transfer \
        --threads "$THREADS" --quiet --out "$OUT/lobo" > "$OUT/lobo-$body.log" 2>&1 & pids+=($!)
    sleep 5  # the folds merge their rows into one lobo.json; do not start them in the same second
done
for pid in "${pids[@]}"; do wait "$pid"; done
# Held-out VIEWS of the two training bodies (plain exports, another seed); the transfer figure is the LOBO table.
$X merge-datasets "${TEST_SETS[@]}" --name Dataset623_ChestTwoBodiesPlain --out "$OUT/test-both"
$X evaluate "$OUT/test-both/Dataset623_ChestTwoBodiesPlain" --model "$OUT/run/model" --split train \
    --update-card --threads 2 --out "$OUT/eval"
$X plausibility --model "$OUT/run/model" --threads 2 --out "$OUT/rg1"
# The previous bundle's figures (0.3.0) go on the card for the acceptance test.
$PY tools/train-sample/bundle.py --run "$OUT" --out "${BUNDLE:-Resources/Models/chest}" \
    --baseline tools/train-sample/previous-0.3.0.json
