"""--devices parsing and selection (no GPU here: CPU fallback)."""

from __future__ import annotations

import pytest

from bakeoff.train.devices import parse_devices, select_devices
from bakeoff.workspace import BakeoffError


def test_parse_devices():
    assert parse_devices(None) is None and parse_devices("") is None
    assert parse_devices("0,1") == ["0", "1"] and parse_devices(" 2 ") == ["2"]
    assert parse_devices("cpu") == []
    with pytest.raises(BakeoffError):
        parse_devices("gpu0")


def test_select_devices_sets_visible_gpus(monkeypatch):
    import torch

    monkeypatch.delenv("BAKEOFF_DISTRIBUTED_CHILD", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    n = select_devices("0,1")
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert n == 0  # no GPU visible: training falls back to CPU
    assert select_devices("cpu") == 0 and os.environ["CUDA_VISIBLE_DEVICES"] == ""
