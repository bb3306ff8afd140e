#!/usr/bin/env bash
# The main job: set up (if needed), generate the demo data (if missing), train configs/demo.yaml,
# evaluate the best checkpoint on the test split, and print where the results are.
#   ./run_training.sh                         # the embedded default (tiny model, synthetic data, CPU)
#   CONFIG=configs/smol.yaml ./run_training.sh
#   ./run_training.sh --num_epochs 2          # any TrainingConfig field overrides the YAML
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck disable=SC1091
source scripts/setup_env.sh
CONFIG="${CONFIG:-configs/demo.yaml}"
# The demo data: 1,500 scenes of 3-4 shapes of distinct colours; each train scene asked about 3 different
# shapes (one file each), every query a short phrase that names its target's colour ("the small red shape"),
# so that the model must read its query to pick one of 3-4 shapes (docs/TRAINING_GUIDE.md, "Does it follow
# the query?").
DEMO_DATA_FLAGS="--seed 0 --num_train 1500 --num_val 32 --num_test 48 --image_size 128 --objects 3-4 --lookalike_prob 0 --query_types attributes --targets_per_scene 3 --select_by colour"
DATA_ROOT="$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['data_root'])" "$CONFIG")"
OUTPUT_DIR="$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['output_dir'])" "$CONFIG")"

if [[ "$DATA_ROOT" == data/demo* ]] && ! grep -qF -- "$DEMO_DATA_FLAGS" "$DATA_ROOT/README.txt" 2>/dev/null; then
  echo "[run] generating synthetic ReasonSeg-format data in $DATA_ROOT"
  # shellcheck disable=SC2086
  modlisa make-data "$DATA_ROOT" $DEMO_DATA_FLAGS --force --no_progress
fi
modlisa check-data "$DATA_ROOT"
modlisa train --config "$CONFIG" --overwrite_output_dir true "$@"
modlisa eval --checkpoint "$OUTPUT_DIR" --split test --data_root "$DATA_ROOT"
modlisa analyze "$OUTPUT_DIR" >/dev/null
echo
echo "[run] results:"
echo "  per-epoch metrics   $OUTPUT_DIR/outputs/metrics_epoch_*.json"
echo "  training log        $OUTPUT_DIR/outputs/train_log.jsonl"
echo "  test evaluation     $OUTPUT_DIR/outputs/eval_test.json, predictions_test.jsonl"
echo "  checkpoints         $OUTPUT_DIR/checkpoints/"
echo "  report              $OUTPUT_DIR/outputs/report/report.html (and report.md, plots)"
