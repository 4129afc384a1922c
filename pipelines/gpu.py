"""Which runs go on a GPU, and the Prefect concurrency slot that keeps two of them off one GPU.

Stages that read `pretrain.device` (pipelines/dag.py: `Stage.uses_device`) hold a slot of the
global concurrency limit `gpu` while they run on a GPU, whichever flow runs them; create it once
with `prefect gcl create gpu --limit 1` (one limit per GPU: `LMPIPE_GPU_LIMIT=gpu-1`).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path

import yaml

from lmpipe import paths
from pipelines.dag import DEVICE_PARAM

GPU_LIMIT = os.environ.get("LMPIPE_GPU_LIMIT", "gpu")


def gpu_requested(params_file: Path = paths.PARAMS) -> bool:
    """Will `pretrain.device` put the GPU stages on a CUDA device here? Cheap: no torch import."""
    try:
        node = yaml.safe_load(params_file.read_text()) or {}
        for key in DEVICE_PARAM.split("."):
            node = node.get(key, {}) if isinstance(node, dict) else {}
        device = node if isinstance(node, str) else "auto"
    except (OSError, yaml.YAMLError):
        device = "auto"
    if device == "cuda":
        return True
    if device != "auto" or os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


@contextmanager
def _slot(log):
    from prefect.concurrency.sync import concurrency

    log.info(f"waiting for a slot of concurrency limit '{GPU_LIMIT}'")
    with concurrency(GPU_LIMIT, occupy=1):
        yield


def gpu_slot(hold: bool, log):
    """A slot of the GPU concurrency limit while the block runs, if `hold`; else nothing."""
    return _slot(log) if hold else nullcontext()
