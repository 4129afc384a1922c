"""Starting a multi-process (DDP) run: the stage re-executes itself under torchrun, on one node
(`pretrain.nproc` processes, `--standalone`) or as one of `pretrain.nnodes` nodes that meet through
torchrun's c10d rendezvous at `pretrain.rdzv_endpoint` (host:port of a machine every node
reaches; node 0 hosts the store there). Every node runs the same command with its own
`pretrain.node_rank`; global rank = node_rank * nproc + local rank, so 2 nodes x 1 process draw
the very batches of 1 node x 2 processes.

Kept free of torch imports so the stage can check its params and output paths, and relaunch,
within its first second.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

# the node's pretrain.node_rank, for the ranks of lmpipe.pretraining.distributed
NODE_RANK_ENV = "LMPIPE_NODE_RANK"


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ


def needs_torchrun(p) -> bool:
    """Whether pretraining params `p` (PretrainParams) ask for more than one process."""
    return p.nproc > 1 or p.nnodes > 1


def torchrun_command(p, module: str) -> list[str]:
    """The torchrun command line that runs `module` as params `p` ask: standalone on one node,
    else this node's part of an nnodes-node c10d rendezvous. Static ranks (--node-rank), so a
    node's rank, and with it its data, does not depend on which node joins first."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={p.nproc}"]
    if p.nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={p.nnodes}", f"--node-rank={p.node_rank}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={p.rdzv_endpoint}", f"--rdzv-id={p.rdzv_id}",
                # node 0 hosts the rendezvous store at the endpoint; the others connect to it
                f"--rdzv-conf=is_host={'true' if p.node_rank == 0 else 'false'}"]
    return [*cmd, "-m", module]


def relaunch_with_torchrun(p, module: str) -> None:
    """Replace this process with torchrun_command(p, module) (never returns); `p` is the pretrain
    params, or a number of processes on this one node."""
    if isinstance(p, int):
        p = SimpleNamespace(nproc=p, nnodes=1)
    cmd = torchrun_command(p, module)
    if p.nnodes > 1:
        os.environ[NODE_RANK_ENV] = str(p.node_rank)
    print(f"[pretrain] launching {' '.join(cmd[2:])}", flush=True)
    sys.stdout.flush()
    os.execv(sys.executable, cmd)
