"""Shared fixtures. Tests run offline, on CPU, with tiny models and a fast
deterministic embedder unless marked slow."""

from __future__ import annotations

import os

import pytest

# Fast, deterministic embeddings for the default suite; slow tests that need the
# real all-MiniLM-L6-v2 set the model explicitly.
os.environ.setdefault("BAKEOFF_EMBEDDING_MODEL", "hashing")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")


@pytest.fixture
def ws(tmp_path):
    """A fresh workspace."""
    from bakeoff.workspace import Workspace

    return Workspace(tmp_path / "ws")


@pytest.fixture
def torch_one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine the
    threads' spin-waits make each op several times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
