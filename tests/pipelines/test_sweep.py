"""The sweep flow on the tiny DAG (tiny_dag.py) with real `dvc exp run --temp` experiments: the
trade-off table, side-by-side latency of the experiments' models, a failing experiment that fails
the sweep and is named, resuming, a hung experiment stopped by its time limit, a bad grid."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from conftest import BIN, run
from tiny_dag import artifacts, save_tiny_classifier, sentences

from pipelines import sweep as sweep_mod
from pipelines.experiments import default_time_limit_s

pytest_plugins = ["tiny_fixtures"]  # the tiny repository and the Prefect API fixtures
pytestmark = pytest.mark.timeout(240)


def experiments_in_repo() -> list[str]:
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], Path.cwd()).stdout)
    return [e["name"] for entry in shown for e in entry.get("experiments") or []]


def test_sweep_runs_experiments_and_publishes_the_tradeoffs(tiny, monkeypatch, tmp_path):
    # both experiments "fine-tune" the same classifier: re-measured side by side, they must tie
    monkeypatch.setenv("TINY_MODEL", str(save_tiny_classifier(tmp_path / "model")))
    Path("data/raw/task").mkdir(parents=True)
    pd.DataFrame({"text": sentences(), "label": 0}).to_parquet("data/raw/task/test.parquet")
    grid = {"finetune.replay_weight": [0, 1], "finetune.method": ["full"]}
    state = sweep_mod.sweep(grid=grid, prefix="t", jobs=2, return_state=True)
    assert state.is_completed(), state.message
    records = {r["experiment"]: r for r in state.result()}
    assert {"t-00", "t-01"} <= set(records)
    assert records["t-00"]["finetune.replay_weight"] == 0 and records["t-01"]["finetune.replay_weight"] == 1
    assert records["t-00"]["id_accuracy"] == pytest.approx(0.9) and records["t-01"]["forgetting"] == pytest.approx(0.5)
    # more accuracy vs less forgetting: both ends of the front are optimal
    assert records["t-00"]["pareto_id_forgetting"] and records["t-01"]["pareto_id_forgetting"]
    # the same model twice: measured in one process, within noise of each other
    assert records["t-00"]["latency_ms"] > 0 and records["t-01"]["latency_ms"] > 0
    assert records["t-00"]["latency_ties"] == "t-01" and records["t-01"]["latency_ties"] == "t-00"
    assert Path("reports/experiments/index.html").exists() and Path("reports/experiments/table.csv").exists()
    assert Path("reports/experiments/logs/t-00.log").read_text().count("[gate] c: 2 expectations passed") == 1
    arts = artifacts(state.state_details.flow_run_id)
    assert {"sweep-tradeoffs", "sweep-pareto"} <= set(arts)
    assert "data:image/png;base64," in arts["sweep-pareto"].data
    # the workspace is untouched: experiments ran in temporary copies
    assert subprocess.run(["git", "status", "--porcelain", "params.yaml"], capture_output=True, text=True).stdout == ""
    assert not Path("out").exists()


def test_a_failing_experiment_fails_the_sweep_and_is_named(tiny, capsys):
    args = ["--grid", json.dumps({"finetune.replay_weight": [0, 2]}), "--prefix", "f", "--no-measure"]
    assert sweep_mod.main(args) == 1  # replay_weight 2 makes stage c's gate fail
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [line for line in err if line.startswith("error: experiment f-01 failed: DATA GATE FAILED: c")]
    assert len(err) == 1 and "f-00" not in err[0]
    record = json.loads(Path("reports/experiments/sweeps/f.json").read_text())
    assert [(o["name"], o["status"]) for o in record["outcomes"]] == [("f-00", "done"), ("f-01", "failed")]
    page = Path("reports/experiments/index.html").read_text()
    assert "1 experiment(s) failed" in page and "f-01" in page and "DATA GATE FAILED: c" in page
    assert experiments_in_repo() == ["f-00"]
    # the same command again resumes: f-00 is kept, only f-01 runs (and fails) again
    assert sweep_mod.main(args) == 1
    record = json.loads(Path("reports/experiments/sweeps/f.json").read_text())
    assert [(o["name"], o["status"]) for o in record["outcomes"]] == [("f-00", "kept"), ("f-01", "failed")]
    # a grid that gives f-00 other params is refused rather than mixed into that sweep
    state = sweep_mod.sweep(grid={"finetune.replay_weight": [0.5]}, prefix="f", measure=False, return_state=True)
    assert state.is_failed() and "'f-00' already exists with other params" in state.message


def test_a_hung_experiment_is_stopped_by_its_time_limit(tiny, monkeypatch, tmp_path):
    pids = tmp_path / "pids"
    monkeypatch.setenv("TINY_HANG", "c")
    monkeypatch.setenv("TINY_PIDS", str(pids))
    start = time.monotonic()
    state = sweep_mod.sweep(grid={"seed": [3]}, prefix="h", time_limit_s=8, measure=False, return_state=True)
    assert time.monotonic() - start < 90  # the stage alone would hang for 120 s
    assert state.is_failed() and "h-00 timed out: stopped at its time limit of 8 s" in state.message
    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:  # gone, also between a pid_exists check and the lookup
            return False

    for pid in map(int, pids.read_text().split()):  # the stage and the child it started
        deadline = time.monotonic() + 10
        while running(pid):
            assert time.monotonic() < deadline, f"process {pid} of the hung experiment still runs"
            time.sleep(0.1)
    # DVC was left the time to remove the experiment's temporary workspace
    assert not [p for p in Path(".dvc/tmp/exps/standalone").glob("tmp*")]
    outcome = json.loads(Path("reports/experiments/sweeps/h.json").read_text())["outcomes"][0]
    assert outcome["status"] == "timed out" and "[c] hanging" in Path(outcome["log"]).read_text()


def test_a_bad_grid_is_one_line_before_anything_runs(tiny, capsys):
    assert sweep_mod.main(["--grid", json.dumps({"finetune.replay_weight": [0, -1]})]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --grid:") and "replay_weight" in err[0]
    assert sweep_mod.main(["--grid", "{not json"]) == 2
    assert sweep_mod.main(["--grid", "{}"]) == 2 and "empty grid" in capsys.readouterr().err
    state = sweep_mod.sweep(grid={"finetune.replay_weight": [0, -1]}, prefix="bad", return_state=True)
    assert state.is_failed() and "replay_weight" in state.message
    assert experiments_in_repo() == [] and not Path("reports/experiments/logs").exists()


def test_default_time_limit_is_sized_from_the_recorded_wall_time(tmp_path):
    assert default_time_limit_s(tmp_path) == 900  # nothing recorded: the floor
    (tmp_path / "pretrain.json").write_text(json.dumps({"wall_s": 400.0, "tokens_per_s": 1e4}))
    (tmp_path / "finetune.json").write_text(json.dumps({"wall_s": 100.0, "nested": {"wall_s": 20}}))
    assert default_time_limit_s(tmp_path) == 5 * 520
