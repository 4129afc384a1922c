"""The clean stage on a real two-node Ray cluster on 127.0.0.1 (`ray start --head` and a second
`ray start --address`, each with its own CPU and a resource of its own): `clean.engine: ray`
against the cluster writes the very files, metrics, dropped samples and gate of `engine: local`.
Both nodes run under `ray start --block` and are stopped by their pids, which takes their
processes down with them, so another Ray instance on the machine is never touched."""

from __future__ import annotations

import filecmp
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lmpipe.params import WorldParams
from lmpipe.world import generate_world
from tests.stages.test_clean_stage import write_corpus, write_params

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]
RAY = Path(sys.executable).parent / "ray"
REPO = Path(__file__).resolve().parents[2]
OUTPUTS = ["data/clean/train.parquet", "data/clean/validation.parquet", "metrics/clean.json"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], temp_dir: str, log: Path) -> subprocess.Popen:
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}  # the token comes from the fixture's environment
    cmd = [str(RAY), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
           "--disable-usage-stats", f"--temp-dir={temp_dir}", *args]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for_nodes(address: str, nodes: int, procs: list[subprocess.Popen], timeout: float = 90) -> None:
    """Until `nodes` nodes are alive (asked in a child process, so this one stays unconnected)."""
    probe = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False);"
             "print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise AssertionError("a ray node exited while starting")
        out = subprocess.run([sys.executable, "-c", probe, address], capture_output=True, text=True,
                             timeout=60)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1] == str(nodes):
            return
        time.sleep(1)
    raise AssertionError(f"{nodes} ray nodes did not come up at {address} in {timeout}s")


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """The address of a two-node cluster on 127.0.0.1 for the test's duration. Its nodes and
    drivers share a token of their own (Ray's token authentication), none from ~/.ray."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live in it
    head = start_node(["--head", f"--port={port}", "--include-dashboard=false", '--resources={"head": 1}'],
                      temp_dir, tmp_path / "head.log")
    procs = [head]
    try:
        address = f"127.0.0.1:{port}"
        procs.append(start_node([f"--address={address}", '--resources={"second": 1}'], temp_dir,
                                tmp_path / "second.log"))
        wait_for_nodes(address, 2, procs)
        yield address
    finally:
        for proc in reversed(procs):  # --block: ray start takes its processes down when it ends
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def run_stage(root: Path, clean: dict) -> str:
    """`python -m stages.clean` in `root` (a process of its own: Ray reads its authentication
    settings when imported); returns its output."""
    write_params(root, clean)
    proc = subprocess.run([sys.executable, "-m", "stages.clean"], cwd=root, capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": str(REPO)}, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_two_node_cluster_cleans_as_the_local_engine(tmp_path, cluster, monkeypatch):
    monkeypatch.delenv("LMPIPE_PARAMS", raising=False)
    corpus = generate_world(WorldParams(docs=3000), seed=11).corpus
    for engine in ("local", "ray"):
        write_corpus(tmp_path / engine, corpus)
    run_stage(tmp_path / "local", {"num_proc": 2})
    out = run_stage(tmp_path / "ray", {"num_proc": 2, "engine": "ray", "ray_address": cluster, "batch_size": 250})
    assert f"ray engine: {cluster}, 2 node(s), 2 CPUs" in out
    local, ray = tmp_path / "local", tmp_path / "ray"
    dropped = sorted(p.relative_to(local).as_posix() for p in (local / "reports/dropped").iterdir())
    assert dropped
    for rel in OUTPUTS + dropped:
        assert filecmp.cmp(local / rel, ray / rel, shallow=False), rel
    metrics = json.loads((local / "metrics/clean.json").read_text())
    assert metrics["drops"]["exact_dup"] > 0 and metrics["drops"]["near_dup"] > 0
    assert json.loads((ray / "reports/quality/clean.json").read_text())["success"]
