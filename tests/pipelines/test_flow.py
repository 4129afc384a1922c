"""The lmpipe Prefect flow against a real (temporary) Prefect API and real DVC, on the
three-stage tiny DAG (tiny_dag.py): every path of the flow's failure handling runs through
`dvc repro` as it does in production, in seconds per run.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import BIN, ROOT, run
from prefect.client.orchestration import get_client
from prefect.states import Failed
from tiny_dag import artifacts, logs, task_runs

from pipelines import artifacts as artifacts_mod
from pipelines import flow as flow_mod
from pipelines.dvc_runner import repro
from pipelines.failures import DataError, InfraError
from pipelines.flow import only_infra_errors

pytest_plugins = ["tiny_fixtures"]  # the tiny repository and the Prefect API fixtures
pytestmark = pytest.mark.timeout(180)  # a hang fails the test, not the whole CI run


# --- pure parts --------------------------------------------------------------------------------


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
    # the run says why in one line: the stage's own last line
    assert "error: missing input data/raw/corpus.parquet" in state.message and "\n" not in state.message
    assert task_runs(state.state_details.flow_run_id)["stage:a"].run_count == 1


def test_a_traceback_is_final(tiny, monkeypatch):
    monkeypatch.setenv("TINY_CRASH", "b")
    state = flow_mod.lmpipe(return_state=True)
    assert state.is_failed() and "crashed with a Python exception" in state.message
    assert "RuntimeError: boom: a bug in the stage" in state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert runs["stage:b"].run_count == 1 and "stage:c" not in runs  # not retried, nothing downstream
    assert Path(os.environ["TINY_COUNTER"]).read_text() == "1"  # the stage command ran once


def test_a_sigkill_is_retried(tiny, monkeypatch):
    monkeypatch.setenv("TINY_FAIL_INFRA", "b")
    monkeypatch.setenv("TINY_INFRA_FAILS", "1")  # killed the first time only
    state = flow_mod.lmpipe(return_state=True)
    assert state.is_completed(), state.message
    assert task_runs(state.state_details.flow_run_id)["stage:b"].run_count == 2
    assert Path("out/c.txt").exists()


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
        repro("a", False, InterruptedLog())
    assert time.monotonic() - start < 60  # the stage would hang for 120 s
    for pid in map(int, Path("a.pids").read_text().split()):
        deadline = time.monotonic() + 10
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, f"process {pid} of the interrupted stage still runs"
            time.sleep(0.1)
    # DVC was given the time to clean up: the next stage runs in this process as usual
    monkeypatch.delenv("TINY_HANG")
    code, lines, ran = repro("a", False, logging.getLogger("test"))
    assert (code, ran) == (0, True) and "[gate] a: 2 expectations passed" in lines


def test_a_failed_artifact_is_a_warning_not_a_failure(tiny, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("artifact API down")

    monkeypatch.setattr(artifacts_mod, "create_table_artifact", broken)
    state = flow_mod.lmpipe(stages=["a"], return_state=True)
    assert state.is_completed(), state.message
    fr = state.state_details.flow_run_id
    assert {"gate-a", "lmpipe-summary"} <= set(artifacts(fr)) and "metrics-a" not in artifacts(fr)
    assert any("could not publish an artifact" in e.message and "artifact API down" in e.message for e in logs(fr))


def test_infra_error_fails_after_the_last_retry(tiny, monkeypatch):
    monkeypatch.setenv("TINY_FAIL_INFRA", "a")
    state = flow_mod.lmpipe(return_state=True)
    assert state.is_failed() and "killed by signal 9" in state.message and "retried" in state.message
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


# --- the command line: argument errors are one line and exit 2, before Prefect starts ------------


@pytest.mark.parametrize(("argv", "says"), [
    (["--stages", "nosuch"], "unknown stage(s) ['nosuch']"),
    (["--set", "finetune.lr"], "is not KEY=VALUE"),
    (["--set", "finetune.lr=fast"], "finetune.lr"),
    (["--set", "finetune.lrr=0.1"], "unknown key 'finetune.lrr'"),
    (["-S", "other.yaml:seed=1"], "only params.yaml is supported"),
])
def test_flow_argument_errors_are_one_line(argv, says, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # read-only: dvc.yaml and params.yaml of the project
    before = (ROOT / "params.yaml").read_text()
    assert flow_mod.main(argv) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], out.err
    assert "Traceback" not in out.err + out.out
    assert (ROOT / "params.yaml").read_text() == before
