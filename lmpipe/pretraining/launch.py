"""Starting a multi-process (DDP) run: the stage re-executes itself under torchrun.

Kept free of torch imports so the stage can check its params and output paths, and relaunch,
within its first second.
"""

from __future__ import annotations

import os
import sys


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ


def relaunch_with_torchrun(nproc: int, module: str) -> None:
    """Replace this process with `torchrun --nproc_per_node=nproc -m module` (never returns)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", module]
    print(f"[pretrain] launching {' '.join(cmd[2:])}", flush=True)
    sys.stdout.flush()
    os.execv(sys.executable, cmd)
