"""End to end through a real Prefect server: `prefect server start` on 127.0.0.1, process work
pools, `prefect deploy --all` of the project's prefect.yaml, a process worker, a flow run of the
`nightly` deployment, then the run's task runs, logs and artifacts read back over the REST API.

The repository is a copy of this one (tests/conftest.make_repo). By default its dvc.yaml is the
three-stage DAG of tests/pipelines/tiny_dag.py, so the test costs seconds of stage work on top of Prefect's
own start-up; LMPIPE_E2E_MICRO=1 runs the real eight-stage DAG on the micro config instead
(1-2 more minutes on 2 cores).

Every process started here runs in its own process group with PREFECT_HOME pointing into this
test's temp dir; teardown stops the worker before the server (a server stopped first makes the
worker's last heartbeats fail, and SQLite logs "database is locked" when both write at exit), then
checks that no process carrying that PREFECT_HOME is left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import BIN, OFFLINE_ENV, make_repo, run
from tiny_dag import tiny_params, write_tiny_dag

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200 if os.environ.get("LMPIPE_E2E_MICRO") == "1" else 420)]

MICRO_DAG = os.environ.get("LMPIPE_E2E_MICRO") == "1"
STAGES = (["check_params", "ingest", "clean", "tokenize", "pretrain", "sft", "finetune", "evaluate", "generate", "redteam",
           "report"]
          if MICRO_DAG else ["a", "b", "c"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGINT (Prefect's own Ctrl-C shutdown) to the whole group, then SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            # the leader exited; make sure nothing else in its group survives it
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def processes_with(marker: str) -> list[int]:
    """PIDs whose environment contains `marker` (our PREFECT_HOME): what we started and left."""
    pids = []
    for env_file in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in env_file.read_bytes():
                pids.append(int(env_file.parent.name))
        except OSError:
            continue
    return [p for p in pids if p != os.getpid()]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = os.environ | OFFLINE_ENV | {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",  # the API is what we test; skips copying the UI bundle
        # the nightly schedule would only pre-create runs for 02:00; keep the scheduler quiet
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = (home / "server.log").open("w")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited with {proc.returncode}:\n{(home / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{api}/health", timeout=2).json() is True:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server not healthy after 120 s:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"env": env, "api": api, "home": home}
    finally:
        stop(proc)
        log.close()
        left = processes_with(str(home))
        for pid in left:  # ours (they carry our PREFECT_HOME); reported as a failure below
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert not left, f"processes left behind: {left}"


def prefect(server, *args, cwd: Path, timeout: int = 180) -> str:
    proc = subprocess.run([str(BIN / "prefect"), *args], cwd=cwd, env=server["env"], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def api_post(server, path: str, body: dict):
    response = httpx.post(f"{server['api']}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def wait_for_logs(server, flow_run_id: str, last: str, timeout: float = 60) -> list[str]:
    """The flow run's first 200 log messages, once its latest ones include one that starts with `last`
    (or after `timeout`)."""
    def read(sort: str) -> list[str]:
        return [entry["message"] for entry in api_post(server, "/logs/filter", {
            "logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200, "sort": sort})]

    deadline = time.monotonic() + timeout
    while not any(m.startswith(last) for m in read("TIMESTAMP_DESC")) and time.monotonic() < deadline:
        time.sleep(0.5)
    return read("TIMESTAMP_ASC")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("e2e"))
    if not MICRO_DAG:
        write_tiny_dag(repo)
        params = tiny_params(yaml.safe_load((repo / "params.yaml").read_text()))
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for cmd in (["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
            run(cmd, repo)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], repo)
    return repo


def test_deployed_flow_runs_on_a_process_worker(server, repo):
    for pool in ("cpu", "gpu"):
        prefect(server, "work-pool", "create", pool, "--type", "process", cwd=repo)
    prefect(server, "gcl", "create", "gpu", "--limit", "1", cwd=repo)
    prefect(server, "--no-prompt", "deploy", "--all", cwd=repo)

    deployments = {d["name"]: d for d in api_post(server, "/deployments/filter", {})}
    assert set(deployments) == {"nightly", "gpu", "sweep", "study", "data-ray"}
    nightly, gpu = deployments["nightly"], deployments["gpu"]
    assert nightly["work_pool_name"] == "cpu" and gpu["work_pool_name"] == "gpu"
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert gpu["job_variables"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert gpu["parameters"]["params"] == {"pretrain.device": "cuda"}
    assert deployments["sweep"]["parameters"]["grid"]["finetune.method"] == ["full", "lora"]
    pull = json.dumps(nightly["pull_steps"])
    assert "set_working_directory" in pull and str(repo) in pull  # the worker runs in this checkout

    worker_log = (server["home"] / "worker.log").open("w")
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "cpu", "--type", "process"],
                              cwd=repo, env=server["env"], stdout=worker_log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        created = prefect(server, "deployment", "run", "lmpipe/nightly", cwd=repo)
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", created).group(1)
        deadline = time.monotonic() + (900 if MICRO_DAG else 240)
        while True:
            flow_run = httpx.get(f"{server['api']}/flow_runs/{flow_run_id}", timeout=30).json()
            state = flow_run["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            assert worker.poll() is None, f"worker died:\n{(server['home'] / 'worker.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"flow run still {state}"
            time.sleep(1)
        # The flow process sends its last logs while it exits, after the run is COMPLETED: keep the
        # worker (and so that process) alive until they are in, or stopping it would lose them.
        logs = wait_for_logs(server, flow_run_id, "Finished in state Completed()")
    finally:
        stop(worker)
        worker_log.close()
    assert state == "COMPLETED", (flow_run["state"]["message"],
                                  (server["home"] / "worker.log").read_text()[-4000:])

    runs = api_post(server, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    assert sorted(r["name"] for r in runs) == sorted(f"stage:{s}" for s in STAGES)
    assert {r["state"]["type"] for r in runs} == {"COMPLETED"}
    keys = {a["key"] for a in api_post(server, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})}
    for stage in STAGES:
        if stage not in ("check_params", "report"):  # these have neither a gate report nor metrics
            assert {f"gate-{stage}", f"metrics-{stage}"} <= keys, sorted(keys)
    assert "lmpipe-summary" in keys
    assert f"Running stage '{STAGES[0]}':" in logs  # stage output made it to the run log
    assert any(line.startswith("[gate]") for line in logs)
    assert (repo / "dvc.lock").exists() and ((repo / "reports/index.html").exists() or not MICRO_DAG)


def test_served_flow_runs_without_pools_or_workers(server, repo):
    """`python -m pipelines.flow --serve`: deployments served from one process, no pool, no worker."""
    serve_log = (server["home"] / "serve.log").open("w")
    served = subprocess.Popen([str(BIN / "python"), "-m", "pipelines.flow", "--serve"], cwd=repo, env=server["env"],
                              stdout=serve_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            names = {d["name"] for d in api_post(server, "/deployments/filter", {})}
            if {"lmpipe-serve", "sweep-serve"} <= names:
                break
            assert served.poll() is None, (server["home"] / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"served deployments never appeared: {names}"
            time.sleep(1)
        created = prefect(server, "deployment", "run", "lmpipe/lmpipe-serve",
                          "--params", json.dumps({"stages": [STAGES[0]], "force": True}), cwd=repo)
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", created).group(1)
        deadline = time.monotonic() + (600 if MICRO_DAG else 180)
        while (state := httpx.get(f"{server['api']}/flow_runs/{flow_run_id}", timeout=30).json()["state"]["type"]) \
                not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            assert served.poll() is None and time.monotonic() < deadline, state
            time.sleep(1)
    finally:
        stop(served)
        serve_log.close()
    assert state == "COMPLETED", (server["home"] / "serve.log").read_text()[-4000:]
    runs = api_post(server, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    assert [r["name"] for r in runs] == [f"stage:{STAGES[0]}"] and runs[0]["state"]["type"] == "COMPLETED"
