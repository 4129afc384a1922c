"""The process a stage runs in: seeding, CPU threads, the device, the allocator, progress lines.

Kept apart from `lmpipe.io` (files) because these touch process-wide state; a stage calls them
once at the top, before any work.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from typing import TYPE_CHECKING

import numpy as np

from lmpipe.io import StageError

if TYPE_CHECKING:  # torch is imported inside the functions: the data stages never load it
    import torch


def seed_everything(seed: int) -> None:
    """One seed drives Python, NumPy and torch; stages derive sub-seeds from it explicitly."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int) -> int:
    import torch

    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


class Progress:
    """Rate-limited progress lines on stderr (DVC and Prefect both stream them)."""

    def __init__(self, label: str, total: int, every_s: float = 5.0):
        self.label, self.total, self.every_s = label, total, every_s
        self.start = self.last = time.perf_counter()

    def update(self, done: int, extra: str = "") -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s and done < self.total:
            return
        self.last = now
        print(f"[{self.label}] {done}/{self.total} {extra} ({now - self.start:.0f}s)", flush=True)


def resolve_device(requested: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    import torch

    has = {"cuda": torch.cuda.is_available(),
           "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
           "cpu": True}
    if requested == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if has[d]))
    if not has[requested]:
        raise StageError(f"device '{requested}' was requested but is not available on this machine;"
                         " use device: auto or cpu")
    return torch.device(requested)


def autocast(device, dtype: str):
    """bf16 autocast on CUDA (the default there), full fp32 elsewhere: CPU bf16 is slower here."""
    import torch

    use_bf16 = dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def keep_freed_memory() -> bool:
    """Make glibc keep freed large blocks for reuse instead of returning them to the OS.

    By default glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
    mmap and unmaps it on free. A CPU training step frees and reallocates several vocabulary-sized
    buffers (logits, their log-softmax, their gradient: 33.5 MB each at batch 16 x block 128 x vocab
    4096), so every step page-faults ~38,000 freshly zeroed pages back in; with the heap serving
    them and never trimmed, that drops to a few hundred faults (bench/pretrain.py --allocator measures the effect). jemalloc or tcmalloc through LD_PRELOAD would do the same from
    outside; this is two mallopt calls with no new dependency. Linux/glibc only, else a no-op;
    process-wide, so call it only in processes that train or evaluate. Returns whether it applied."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30))


