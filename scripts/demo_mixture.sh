#!/usr/bin/env bash
# The mixture demo (configs/demo_mixture.yaml): synthetic data in LISA's real formats (ReasonSeg, refCOCO in the
# refer layout, LLaVA-Instruct conversations), a tiny model trained on their mixture on CPU, evaluated on refCOCO
# val (every sentence a query) and ReasonSeg test, then the report. Extra arguments go to `modlisa train`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
ROOT=data/demo_mixture
COMMON=(--seed 0 --image_size 128 --objects 3-4 --lookalike_prob 0 --no_progress --force)
modlisa make-data "$ROOT/reason_seg/ReasonSeg" "${COMMON[@]}" --num_train 400 --num_val 24 --num_test 32 \
    --query_types attributes --targets_per_scene 3 --select_by colour
modlisa make-data "$ROOT/refer_seg" --format refcoco "${COMMON[@]}" --num_train 300 --num_val 24 --num_test 16
modlisa make-data "$ROOT" --format llava_instruct "${COMMON[@]}" --num_train 200
modlisa check-data --config configs/demo_mixture.yaml --no_progress
modlisa train --config configs/demo_mixture.yaml --overwrite_output_dir true "$@"
modlisa eval --checkpoint runs/demo_mixture --dataset refcoco --split val
modlisa eval --checkpoint runs/demo_mixture --split test
modlisa analyze runs/demo_mixture >/dev/null
echo "[demo_mixture] report: runs/demo_mixture/outputs/report/report.html"
