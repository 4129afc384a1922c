"""Resumable pretraining: atomic checkpoints, and a clean stop on SIGTERM/SIGINT.

A checkpoint holds weights, optimizer and RNG state, the logged history and the open loss window
(so a resumed run logs the same losses as an uninterrupted one) and the training seconds so far
(so `wall_s` counts every process of an interrupted run). The batch drawn at step s depends only
on (seed, s, rank), so a resumed run sees exactly the data an uninterrupted one would have and ends
with the same weights.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from dataclasses import dataclass, field

import torch

from lmpipe.io import atomic_path
from lmpipe.params import PretrainParams
from lmpipe.paths import CHECKPOINTS

CKPT_DIR = CHECKPOINTS / "pretrain"


@dataclass
class Resume:
    """Where a run starts: step 0 with nothing logged, or a matching checkpoint's state."""

    step: int = 0
    history: list[dict] = field(default_factory=list)
    window_loss: float = 0.0  # loss summed over the steps since the last log line
    window_steps: int = 0
    wall_s: float = 0.0


def run_fingerprint(p: PretrainParams, seed: int, meta: dict, world: int) -> str:
    """A checkpoint is resumable only by a run with the same config, data and world size."""
    blob = json.dumps([p.model_dump(), seed, meta, world], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(model, optimizer, fingerprint: str, state: Resume) -> None:
    """Write `state` (the step just finished and what was logged up to it) atomically."""
    tensors = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "rng_cpu": torch.get_rng_state()}  # dropout masks continue where they stopped
    if torch.cuda.is_available():
        tensors["rng_cuda"] = torch.cuda.get_rng_state()
    with atomic_path(CKPT_DIR) as tmp:
        tmp.mkdir()
        torch.save(tensors, tmp / "state.pt")
        (tmp / "progress.json").write_text(json.dumps(
            {"step": state.step, "fingerprint": fingerprint, "history": state.history,
             "window": [state.window_loss, state.window_steps], "wall_s": state.wall_s}))


def load_checkpoint(model, optimizer, fingerprint: str, rank: int = 0) -> Resume:
    """Restore a matching checkpoint into `model` and `optimizer`; a fresh start otherwise."""
    progress_file = CKPT_DIR / "progress.json"
    if not progress_file.exists():
        return Resume()
    progress = json.loads(progress_file.read_text())
    if progress["fingerprint"] != fingerprint:
        print(f"[pretrain] ignoring checkpoint from a different config ({CKPT_DIR})", flush=True)
        return Resume()
    # weights_only: never unpickle arbitrary objects from disk
    tensors = torch.load(CKPT_DIR / "state.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(tensors["model"])
    optimizer.load_state_dict(tensors["optimizer"])
    torch.set_rng_state(tensors["rng_cpu"])
    if "rng_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng_cuda"])
    if rank == 0:
        print(f"[pretrain] resuming from step {progress['step']}", flush=True)
    loss_sum, n = progress.get("window", (0.0, 0))
    return Resume(progress["step"], progress["history"], float(loss_sum), int(n), float(progress.get("wall_s", 0.0)))


def clear_checkpoint() -> None:
    """After a finished run: a stale checkpoint must never be resumed."""
    shutil.rmtree(CKPT_DIR, ignore_errors=True)


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checkpoints after the current step and exits 143.
    A context manager, so the previous handlers come back when training ends."""

    def __init__(self):
        self.stop = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.stop = True
