#!/usr/bin/env bash
# Set up the environment if needed, then run the full test suite (slow end-to-end tests included).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$REPO_ROOT/scripts/setup_env.sh"
cd "$REPO_ROOT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m ruff check src tests scripts benchmarks
python -m pytest -q "$@"
