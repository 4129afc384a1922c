"""Multi-node pretraining through torchrun's c10d rendezvous (lmpipe.pretraining.launch): two
"nodes" of one process each on 127.0.0.1, each in a working directory of its own as on two
machines, train the loss curve of one node with two processes (same global batch) to 1e-5, and
only node 0 writes; the launch commands and the params that describe the nodes.

Two tiny runs (2 layers, 32 dims, 20 steps) of three processes in all: ~30 s on 2 cores."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from pretraining_data import tiny_params, workspace, write_shards
from pydantic import ValidationError

from lmpipe.params import PretrainParams
from lmpipe.pretraining.launch import NODE_RANK_ENV, needs_torchrun, torchrun_command

ROOT = Path(__file__).resolve().parents[2]
CURVES = Path("plots/pretrain/plots/metrics")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(root: Path, **pretrain) -> subprocess.Popen:
    """The stage under torchrun as `pretrain` params ask, in `root` (what relaunch_with_torchrun runs)."""
    params = tiny_params(threads=2, **pretrain)  # 1 thread per rank: world 2 shares 2 cores
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LMPIPE_PARAMS", NODE_RANK_ENV)}
    env["PYTHONPATH"] = str(ROOT)
    if params.pretrain.nnodes > 1:
        env[NODE_RANK_ENV] = str(params.pretrain.node_rank)
    return subprocess.Popen(torchrun_command(params.pretrain, "stages.pretrain"), cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert proc.returncode == 0, out[-3000:]
    return out


def curve(root: Path, name: str) -> list[tuple[int, float]]:
    with open(root / CURVES / f"{name}.tsv") as f:
        return [(int(row["step"]), float(row[name])) for row in csv.DictReader(f, delimiter="\t")]


@pytest.mark.timeout(300)
def test_two_nodes_train_the_curve_of_one_node_with_two_processes(tmp_path_factory):
    shards = write_shards(tmp_path_factory.mktemp("shards"))
    one = workspace(shards, tmp_path_factory.mktemp("one-node"))
    finish(start(one, nproc=2))
    nodes = [workspace(shards, tmp_path_factory.mktemp(f"node{r}")) for r in range(2)]
    endpoint = f"127.0.0.1:{free_port()}"
    # node 1 first: its rank comes from node_rank, not from the order in which nodes join
    procs = [start(nodes[r], nproc=1, nnodes=2, node_rank=r, rdzv_endpoint=endpoint) for r in (1, 0)]
    logs = [finish(p) for p in procs]
    assert "world=2" in logs[1] and "[pretrain] step 20/20" in logs[1] and "step 20/20" not in logs[0]
    for name in ("train_loss", "val_loss"):
        ref, got = curve(one, name), curve(nodes[0], name)
        assert len(ref) >= 2 and [s for s, _ in got] == [s for s, _ in ref], name
        assert all(abs(a - b) <= 1e-5 for (_, a), (_, b) in zip(ref, got)), (name, ref, got)
    metrics = json.loads((nodes[0] / "metrics/pretrain.json").read_text())
    assert metrics["world_size"] == 2 and metrics["tokens_seen"] == 20 * 8 * 32 * 2
    # threads: each node's one rank has its node's cores to itself (2), the single node's two share them (1)
    assert metrics["threads"] == 2 * json.loads((one / "metrics/pretrain.json").read_text())["threads"]
    assert metrics == {**json.loads((one / "metrics/pretrain.json").read_text()),
                       **{k: metrics[k] for k in metrics if "_s" in k or "per_s" in k or "mfu" in k or k == "threads"}}
    assert not (nodes[1] / "metrics/pretrain.json").exists() and not (nodes[1] / "models/base").exists()


def test_launch_commands():
    single = torchrun_command(PretrainParams(nproc=3), "stages.pretrain")
    assert "--standalone" in single and "--nproc-per-node=3" in single and single[-2:] == ["-m", "stages.pretrain"]
    node = torchrun_command(PretrainParams(nproc=1, nnodes=4, node_rank=2, rdzv_endpoint="head:29400"), "m")
    assert "--standalone" not in node and {"--nnodes=4", "--rdzv-backend=c10d", "--rdzv-endpoint=head:29400",
                                           "--rdzv-conf=is_host=false"} <= set(node)
    assert "--rdzv-conf=is_host=true" in torchrun_command(
        PretrainParams(nnodes=2, rdzv_endpoint="head:29400"), "m")
    assert not needs_torchrun(PretrainParams(nproc=1)) and needs_torchrun(
        PretrainParams(nproc=1, nnodes=2, rdzv_endpoint="h:1"))


@pytest.mark.parametrize("pretrain, message", [
    ({"nnodes": 2}, "rdzv_endpoint as host:port"),
    ({"nnodes": 2, "rdzv_endpoint": "head"}, "rdzv_endpoint as host:port"),
    ({"nnodes": 2, "node_rank": 2, "rdzv_endpoint": "head:1"}, "node_rank=2 must be below nnodes=2"),
])
def test_nodes_that_cannot_meet_are_a_param_error(pretrain, message):
    with pytest.raises(ValidationError, match=message):
        PretrainParams(**pretrain)
