"""The lmpipe Prefect flow and the sweep flow against a real (temporary) Prefect API and real DVC,
on a three-stage dvc.yaml whose commands are a tiny Python script: seconds, not minutes, per run.

The script (`step.py <stage>`) behaves like our stages: it prints progress, writes its outs, its
metrics and a gate report (reports/quality/<stage>.json), and on request fails its gate
("DATA GATE FAILED", exit 1), rejects its input ("error: ...", exit 1) or dies (exit 137), so
every path of the flow's failure handling runs through `dvc repro` as it does in production.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import BIN, MICRO, run
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.states import Failed
from prefect.testing.utilities import prefect_test_harness

from pipelines import flow as flow_mod
from pipelines import sweep as sweep_mod
from pipelines.flow import DataError, InfraError, classify_failure, only_infra_errors

STEP = r'''
import json, os, sys, time
from pathlib import Path
import yaml

stage = sys.argv[1]
params = yaml.safe_load(open("params.yaml"))
print(f"[{stage}] started", flush=True)
if os.environ.get("TINY_SLOW") == stage:
    time.sleep(1.5)
print(f"[{stage}] working", flush=True)
if os.environ.get("TINY_HANG") == stage:  # a stage that hangs, with a process of its own under it
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    Path(f"{stage}.pids").write_text(f"{os.getpid()} {child.pid}")
    print(f"[{stage}] hanging", flush=True)
    time.sleep(120)
if os.environ.get("TINY_FAIL_INFRA") == stage:
    counter = Path(os.environ["TINY_COUNTER"])
    n = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(n + 1))
    if n < int(os.environ.get("TINY_INFRA_FAILS", "99")):
        print("simulated lost worker", flush=True)
        sys.exit(137)
if os.environ.get("TINY_FAIL_INPUT") == stage:
    print("error: missing input data/raw/corpus.parquet: run the upstream stage first", flush=True)
    sys.exit(1)
fail = os.environ.get("TINY_FAIL_GATE") == stage
Path("reports/quality").mkdir(parents=True, exist_ok=True)
Path("reports/quality", f"{stage}.json").write_text(json.dumps({
    "stage": stage, "success": not fail, "evaluated": 2, "failed": int(fail), "expectations": [
        {"table": "docs", "expectation": "expect_column_values_to_not_be_null", "kwargs": {"column": "text"},
         "success": not fail, "observed": "3 of 10 rows unexpected" if fail else "0 of 10 rows unexpected",
         "examples": ["<null>", "<empty>"] if fail else []},
        {"table": "docs", "expectation": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1},
         "success": True, "observed": 10, "examples": []}]}))
if fail:
    print(f"DATA GATE FAILED: {stage} (1/2 failed)\n  - docs: expect_column_values_to_not_be_null", file=sys.stderr)
    sys.exit(1)
Path("out").mkdir(exist_ok=True)
Path("out", f"{stage}.txt").write_text(stage)
Path("metrics").mkdir(exist_ok=True)
ft = params.get("finetune", {})
rw, lora = float(ft.get("replay_weight", 0.0)), ft.get("method") == "lora"
if stage == "c":
    metrics = {"task": {"id": {"accuracy": 0.9 - 0.1 * rw - 0.05 * lora},
                        "shift": {"leet": {"accuracy": 0.6 + 0.1 * rw}}, "gap": {"mean": 0.3 - 0.1 * rw}},
               "lm": {"forgetting": 1.0 - 0.5 * rw}, "efficiency": {"latency_ms_p50": 5.0 - 2 * lora}}
    Path("metrics/evaluate.json").write_text(json.dumps(metrics))
else:
    Path("metrics", f"{stage}.json").write_text(json.dumps({"rows": 10, "seed": params["seed"]}))
print(f"[gate] {stage}: 2 expectations passed", flush=True)
'''

DVC_YAML = """
stages:
  a:
    cmd: python step.py a
    deps: [step.py]
    params: [seed]
    outs:
      - out/a.txt
      - reports/quality/a.json:
          cache: false
    metrics:
      - metrics/a.json:
          cache: false
  b:
    cmd: python step.py b
    deps: [step.py, out/a.txt]
    params: [pretrain.device]
    outs:
      - out/b.txt
      - reports/quality/b.json:
          cache: false
    metrics:
      - metrics/b.json:
          cache: false
  c:
    cmd: python step.py c
    deps: [step.py, out/b.txt]
    params: [finetune.replay_weight, finetune.method]
    outs:
      - out/c.txt
      - reports/quality/c.json:
          cache: false
    metrics:
      - metrics/evaluate.json:
          cache: false
"""


def make_tiny_repo(dest: Path) -> Path:
    """A git + DVC repository with the three-stage DAG above and a schema-valid params.yaml."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "step.py").write_text(STEP)
    (dest / "dvc.yaml").write_text(DVC_YAML)
    params = yaml.safe_load(MICRO.read_text())  # the micro config plus the keys dvc.yaml names
    params["finetune"] |= {"replay_weight": 0.0, "method": "full"}
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"],
                [str(BIN / "dvc"), "config", "core.analytics", "false"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        run(cmd, dest)
    return dest


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def tiny_template(tmp_path_factory) -> Path:
    return make_tiny_repo(tmp_path_factory.mktemp("tiny") / "repo")


@pytest.fixture
def tiny(tmp_path, monkeypatch, harness, tiny_template):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_template, repo, symlinks=True)  # git + dvc init once per module, not per test
    monkeypatch.chdir(repo)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    for var in ("TINY_SLOW", "TINY_FAIL_INFRA", "TINY_FAIL_GATE", "TINY_FAIL_INPUT", "TINY_INFRA_FAILS", "TINY_HANG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TINY_COUNTER", str(tmp_path / "counter"))
    # retries keep their count but not their 10-20-40 s backoff
    monkeypatch.setattr(flow_mod, "run_stage", flow_mod.run_stage.with_options(retry_delay_seconds=0))
    return repo


def task_runs(flow_run_id) -> dict:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r for r in runs}


def artifacts(flow_run_id) -> dict:
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in arts}


def logs(flow_run_id) -> list:
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        return client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


# --- pure parts --------------------------------------------------------------------------------


def test_failures_are_classified_from_dvc_output():
    exited = "ERROR: failed to reproduce 'x': failed to run: python -m stages.x, exited with {}"
    gate = ["[x] ...", "DATA GATE FAILED: x (1/3 failed)", exited.format(1)]
    assert isinstance(classify_failure("x", 255, gate), DataError)
    bad_input = ["error: cannot read data/raw/corpus.parquet: ArrowInvalid", exited.format(1)]
    assert isinstance(classify_failure("x", 255, bad_input), DataError)
    bad_params = ["error: params.yaml: unknown key 'finetune.lrr'", exited.format(2)]
    assert isinstance(classify_failure("x", 255, bad_params), DataError)
    crash = ["Traceback (most recent call last):", "RuntimeError: CUDA error: unspecified launch failure",
             exited.format(1)]
    assert isinstance(classify_failure("x", 255, crash), InfraError)
    killed = ["[pretrain] step 40/80", exited.format(-9)]
    assert isinstance(classify_failure("x", 255, killed), InfraError)
    no_param = ["ERROR: failed to reproduce 'c': Parameters 'finetune.method' are missing from 'params.yaml'."]
    assert isinstance(classify_failure("x", 255, no_param), DataError)
    locked = ["ERROR: Unable to acquire lock. Most likely another DVC process is running"]
    assert isinstance(classify_failure("x", 255, locked), InfraError)


def test_retry_condition_retries_infra_errors_only():
    assert only_infra_errors(None, None, Failed(data=InfraError("lost worker"))) is True
    assert only_infra_errors(None, None, Failed(data=RuntimeError("anything else"))) is True
    assert only_infra_errors(None, None, Failed(data=DataError("gate"))) is False
    assert only_infra_errors(None, None, Failed(message="DataError('gate')")) is False


# --- the flow against a temporary Prefect API ---------------------------------------------------


def test_flow_runs_every_stage_streams_output_and_publishes_artifacts(tiny, monkeypatch):
    monkeypatch.setenv("TINY_SLOW", "b")
    state = flow_mod.lmpipe(return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == {"a": "ran", "b": "ran", "c": "ran"}
    fr = state.state_details.flow_run_id
    runs = task_runs(fr)
    assert set(runs) == {"stage:a", "stage:b", "stage:c"}
    assert all(r.state.is_completed() for r in runs.values())
    # no tags on CPU stages: a tagged task first asks the API for tag concurrency slots (slow, see flow.py)
    assert all(r.tags == [] for r in runs.values())
    order = sorted(runs.values(), key=lambda r: r.start_time)
    assert [r.name for r in order] == ["stage:a", "stage:b", "stage:c"]
    arts = artifacts(fr)
    assert {"gate-a", "gate-b", "gate-c", "metrics-a", "metrics-b", "metrics-c", "lmpipe-summary"} <= set(arts)
    assert arts["metrics-c"].type == "table"
    assert "task.id.accuracy" in json.dumps(arts["metrics-c"].data)
    assert "passed" in arts["gate-b"].data
    assert "| c | ran |" in arts["lmpipe-summary"].data
    # output reaches the run log while the stage runs: "started" is logged before the 1.5 s sleep ends
    entries = logs(fr)
    messages = {entry.message: entry.timestamp for entry in entries}
    assert "[b] started" in messages and "[gate] c: 2 expectations passed" in messages
    assert (messages["[b] working"] - messages["[b] started"]).total_seconds() >= 1.0
    # DVC's own messages and the stage command's output reach the task's log in the order they happened
    of_b = [e.message for e in entries if e.task_run_id == runs["stage:b"].id]
    expected = ["Running stage 'b':", "> python step.py b", "[b] started", "[b] working",
                "[gate] b: 2 expectations passed", "Updating lock file 'dvc.lock'"]
    assert [m for m in of_b if m in expected] == expected, of_b
    # a second run finds everything up to date in dvc.lock
    again = flow_mod.lmpipe(return_state=True)
    assert set(again.result().values()) == {"skipped (up to date)"}


def test_selected_stage_runs_with_its_upstream_only(tiny):
    assert flow_mod.lmpipe(stages=["b"]) == {"a": "ran", "b": "ran"}
    assert not Path("out/c.txt").exists()


def test_failed_gate_is_final_and_nothing_downstream_runs(tiny, monkeypatch):
    monkeypatch.setenv("TINY_FAIL_GATE", "b")
    state = flow_mod.lmpipe(return_state=True)
    assert state.is_failed()
    assert "data gate of stage 'b' failed" in state.message
    fr = state.state_details.flow_run_id
    runs = task_runs(fr)
    assert set(runs) == {"stage:a", "stage:b"}  # c never started
    assert runs["stage:b"].state.is_failed() and runs["stage:b"].run_count == 1  # not retried
    assert not Path("out/c.txt").exists()
    arts = artifacts(fr)
    assert "FAILED" in arts["gate-b"].data and "expect_column_values_to_not_be_null" in arts["gate-b"].data
    assert "`<null>`" in arts["gate-b"].data  # offending examples
    assert "| c | not run |" in arts["lmpipe-summary"].data and "not retried" in arts["lmpipe-summary"].data


def test_rejected_input_is_final_too(tiny, monkeypatch):
    monkeypatch.setenv("TINY_FAIL_INPUT", "a")
    state = flow_mod.lmpipe(return_state=True)
    assert state.is_failed() and "rejected its input" in state.message
    assert task_runs(state.state_details.flow_run_id)["stage:a"].run_count == 1


def test_dvc_refusing_a_stage_is_final(tiny):
    params = yaml.safe_load(Path("params.yaml").read_text())
    del params["finetune"]["method"]  # stage c tracks it: DVC stops before running the command
    Path("params.yaml").write_text(yaml.safe_dump(params))
    state = flow_mod.lmpipe(return_state=True)
    assert state.is_failed() and "dvc rejected stage 'c'" in state.message
    assert "ERROR: failed to reproduce 'c'" in state.message and "finetune.method" in state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert runs["stage:c"].run_count == 1 and runs["stage:b"].state.is_completed()


def test_interrupted_stage_leaves_no_process_behind(tiny, monkeypatch):
    """Ctrl-C, or Prefect cancelling the run, while DVC runs a stage inside the flow process: the
    stage command and the processes under it are stopped, not orphaned."""
    import psutil

    monkeypatch.setenv("TINY_HANG", "a")

    class InterruptedLog:  # the run log; the interrupt arrives once the stage has started its child
        def info(self, line):
            if line == "[a] hanging":
                raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        flow_mod.repro("a", False, InterruptedLog())
    assert time.monotonic() - start < 60  # the stage would hang for 120 s
    for pid in map(int, Path("a.pids").read_text().split()):
        deadline = time.monotonic() + 10
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, f"process {pid} of the interrupted stage still runs"
            time.sleep(0.1)
    # DVC was given the time to clean up: the next stage runs in this process as usual
    monkeypatch.delenv("TINY_HANG")
    code, lines, ran = flow_mod.repro("a", False, flow_mod.logging.getLogger("test"))
    assert (code, ran) == (0, True) and "[gate] a: 2 expectations passed" in lines


def test_a_failed_artifact_is_a_warning_not_a_failure(tiny, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("artifact API down")

    monkeypatch.setattr(flow_mod, "create_table_artifact", broken)
    state = flow_mod.lmpipe(stages=["a"], return_state=True)
    assert state.is_completed(), state.message
    fr = state.state_details.flow_run_id
    assert {"gate-a", "lmpipe-summary"} <= set(artifacts(fr)) and "metrics-a" not in artifacts(fr)
    assert any("could not publish an artifact" in e.message and "artifact API down" in e.message for e in logs(fr))


def test_infra_error_is_retried_until_it_succeeds(tiny, monkeypatch):
    monkeypatch.setenv("TINY_FAIL_INFRA", "b")
    monkeypatch.setenv("TINY_INFRA_FAILS", "1")
    state = flow_mod.lmpipe(return_state=True)
    assert state.is_completed(), state.message
    assert task_runs(state.state_details.flow_run_id)["stage:b"].run_count == 2
    assert Path("out/c.txt").exists()


def test_infra_error_fails_after_the_last_retry(tiny, monkeypatch):
    monkeypatch.setenv("TINY_FAIL_INFRA", "a")
    state = flow_mod.lmpipe(return_state=True)
    assert state.is_failed() and "exited with 137" in state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert runs["stage:a"].run_count == flow_mod.RETRIES + 1 and set(runs) == {"stage:a"}


def test_bad_override_fails_before_any_stage(tiny):
    before = Path("params.yaml").read_text()
    state = flow_mod.lmpipe(params={"finetune.lrr": "0.1"}, return_state=True)
    assert state.is_failed() and "unknown key 'finetune.lrr'" in state.message
    assert task_runs(state.state_details.flow_run_id) == {}
    state = flow_mod.lmpipe(params={"finetune.method": "qlora"}, return_state=True)
    assert state.is_failed() and "finetune.method" in state.message
    assert Path("params.yaml").read_text() == before and not Path("out").exists()


def test_override_runs_as_named_experiment_and_gpu_stages_hold_the_gpu_slot(tiny):
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu", limit=1))
    seen, done = [], threading.Event()

    def watch():  # sample the limit's occupied slots while the flow runs
        with get_client(sync_client=True) as client:
            while not done.is_set():
                seen.append(client.read_global_concurrency_limit_by_name("gpu").active_slots)
                time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    os.environ["TINY_SLOW"] = "b"
    try:
        state = flow_mod.lmpipe(params={"pretrain.device": "cuda", "seed": "11"}, experiment="on-gpu",
                                return_state=True)
    finally:
        done.set()
        watcher.join()
        del os.environ["TINY_SLOW"]
    assert state.is_completed(), state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert "gpu" in runs["stage:b"].tags and "gpu" not in runs["stage:a"].tags
    assert max(seen) == 1 and seen[-1] == 0  # held during b, released after
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], Path.cwd()).stdout)
    exp = next(e for e in shown[1]["experiments"] if e["name"] == "on-gpu")["revs"][0]["data"]
    assert exp["params"]["params.yaml"]["data"]["seed"] == 11
    assert exp["params"]["params.yaml"]["data"]["pretrain"]["device"] == "cuda"
    assert exp["metrics"]["metrics/a.json"]["data"]["seed"] == 11  # untracked metrics were included


def test_sweep_queues_runs_and_publishes_the_tradeoffs(tiny):
    grid = {"finetune.replay_weight": [0, 1], "finetune.method": ["full"]}
    state = sweep_mod.sweep(grid=grid, prefix="t", jobs=2, out_dir="reports/experiments", return_state=True)
    assert state.is_completed(), state.message
    records = {r["experiment"]: r for r in state.result()}
    assert {"t-00", "t-01"} <= set(records)
    assert records["t-00"]["finetune.replay_weight"] == 0 and records["t-01"]["finetune.replay_weight"] == 1
    assert records["t-00"]["id_accuracy"] == pytest.approx(0.9) and records["t-01"]["forgetting"] == pytest.approx(0.5)
    # more accuracy vs less forgetting: both ends of the front are optimal
    assert records["t-00"]["pareto_id_forgetting"] and records["t-01"]["pareto_id_forgetting"]
    assert Path("reports/experiments/index.html").exists() and Path("reports/experiments/table.csv").exists()
    arts = artifacts(state.state_details.flow_run_id)
    assert {"sweep-tradeoffs", "sweep-pareto"} <= set(arts)
    assert "data:image/png;base64," in arts["sweep-pareto"].data
    assert subprocess.run(["git", "status", "--porcelain", "params.yaml"], capture_output=True, text=True).stdout == ""


def test_sweep_rejects_a_bad_grid_before_queueing(tiny):
    state = sweep_mod.sweep(grid={"finetune.replay_weight": [0, -1]}, prefix="bad", return_state=True)
    assert state.is_failed() and "replay_weight" in state.message
    queued = run([str(BIN / "dvc"), "queue", "status"], Path.cwd()).stdout
    assert "bad-" not in queued
