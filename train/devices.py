"""Devices: ``--devices 0,1`` picks GPUs; more than one re-launches data-parallel
through ``accelerate launch``; no GPU means CPU.

CUDA_VISIBLE_DEVICES must be set before CUDA initialises, so ``select_devices``
runs before any model is built. The re-launch runs the same command line under
``accelerate launch --multi_gpu``; the parent creates the MLflow run first and
passes its id (``BAKEOFF_RUN_ID``) so all ranks write one run's checkpoints and
only rank 0 logs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Sequence

from bakeoff.workspace import BakeoffError

ENV_LAUNCHED = "BAKEOFF_DISTRIBUTED_CHILD"


def parse_devices(devices: str | None) -> list[str] | None:
    """'0,1' -> ['0', '1']; 'cpu' -> []; None/'' -> None (leave as is)."""
    if devices is None or devices.strip() == "":
        return None
    if devices.strip().lower() == "cpu":
        return []
    ids = [d.strip() for d in devices.split(",") if d.strip()]
    for d in ids:
        if not d.isdigit():
            raise BakeoffError(f"--devices: expected GPU indices like 0,1 or 'cpu', got {devices!r}")
    return ids


def select_devices(devices: str | None) -> int:
    """Apply ``--devices`` (CUDA_VISIBLE_DEVICES) and return how many GPUs are visible."""
    ids = parse_devices(devices)
    if ids is not None and os.environ.get(ENV_LAUNCHED) != "1":
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if ids and n == 0:
        from bakeoff.console import warn

        warn(f"--devices {devices}: no CUDA GPU visible here; training on CPU")
    return n


def under_distributed_launch() -> bool:
    return os.environ.get(ENV_LAUNCHED) == "1" or int(os.environ.get("WORLD_SIZE", "1")) > 1


def relaunch_data_parallel(n_gpus: int, run_id: str, argv: Sequence[str] | None = None) -> int:
    """Run this command again under ``accelerate launch`` with ``n_gpus`` processes
    (one per GPU, DDP). Returns the child's exit status."""
    argv = list(argv if argv is not None else sys.argv[1:])
    accelerate = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
    if not os.path.exists(accelerate):
        raise BakeoffError("multi-GPU training needs the `accelerate` command (pip install accelerate)")
    env = dict(os.environ, **{ENV_LAUNCHED: "1", "BAKEOFF_RUN_ID": run_id})
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", str(n_gpus),
           "-m", "bakeoff.cli", *argv]
    return subprocess.call(cmd, env=env)
