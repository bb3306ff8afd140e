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
DATA_ROOT="$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['data_root'])" "$CONFIG")"
OUTPUT_DIR="$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['output_dir'])" "$CONFIG")"

if [[ ! -d "$DATA_ROOT/train" && "$DATA_ROOT" == data/demo* ]]; then
  echo "[run] generating synthetic ReasonSeg-format data in $DATA_ROOT"
  modlisa make-data "$DATA_ROOT" --seed 0 --num-train 96 --num-val 32 --num-test 48 --image-size 128
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
