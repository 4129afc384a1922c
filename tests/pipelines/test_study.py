"""The remedy study (pipelines/study.py, pipelines/study_report.py): the plan (groups, shared
points, schema checks), the wall-time arithmetic, the summary's numbers against the table, and the
flow with real `dvc exp run --temp` experiments, on the tiny DAG (seconds) and on the micro config
(the real stages, their CIs and probe verdicts), with a failing experiment named and exit 1."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import BIN, ROOT, run

from pipelines import study as study_mod
from pipelines.study_report import build_table, kind_of, read_table, summarize, summary_text

pytest_plugins = ["tiny_fixtures"]  # the tiny repository and the Prefect API fixtures
pytestmark = pytest.mark.timeout(240)

REPLAY = {"replay": [{"finetune.replay_weight": 0}, {"finetune.replay_weight": 1}]}


def numbers(text: str) -> list[str]:
    return re.findall(r"-?\d+\.\d{3}\b", text)


# --- the plan -----------------------------------------------------------------------------------


def test_default_groups_share_the_default_point_and_name_every_experiment(monkeypatch):
    monkeypatch.chdir(ROOT)
    entries = study_mod.build_plan(study_mod.select_groups(), "p")
    assert [(e.group, e.point) for e in entries][:4] == [("augment", 0), ("augment", 1), ("augment", 2), ("replay", 0)]
    # finetune.augment [], replay_weight 0 (params.yaml says 0.0), method full, encoded_share 0.05: params.yaml
    default = [e for e in entries if not e.changed]
    assert [(e.group, e.point) for e in default] == [("augment", 0), ("replay", 0), ("method", 0), ("exposure", 1),
                                                     ("safety", 0)]
    assert {e.experiment for e in default} == {"p-augment-0"}
    assert [e.runs for e in default] == [True, False, False, False, False]
    runs = [e.experiment for e in entries if e.runs]
    assert len(runs) == len(set(runs)) == 11
    lora = next(e for e in entries if e.overrides == {"finetune.method": "lora"})
    assert lora.experiment == "p-method-2" and lora.changed == ("finetune.method",)


def test_groups_are_replaced_added_and_selected(monkeypatch):
    monkeypatch.chdir(ROOT)
    chosen = study_mod.select_groups({"replay": [{"finetune.replay_weight": 0.5}], "lr": {"finetune.lr": [1e-4, 1e-3]}},
                                     ["replay", "lr"])
    assert list(chosen) == ["replay", "lr"] and chosen["replay"] == [{"finetune.replay_weight": 0.5}]
    entries = study_mod.build_plan(chosen, "q")
    assert [(e.experiment, e.overrides) for e in entries] == [
        ("q-replay-0", {"finetune.replay_weight": 0.5}), ("q-lr-0", {"finetune.lr": 1e-4}), ("q-lr-1", {"finetune.lr": 1e-3})]
    assert kind_of([e.overrides for e in entries[1:]]) == "compare" and kind_of(study_mod.GROUPS["exposure"]) == "exposure"
    with pytest.raises(ValueError, match=r"unknown group\(s\) \['nope'\]"):
        study_mod.select_groups(None, ["nope"])


@pytest.mark.parametrize("groups, message", [
    ({"replay": [{"finetune.replay_weight": -1}]}, "replay_weight"),
    ({"replay": [{"finetune.no_such_key": 1}]}, "no_such_key"),
    ({"replay": []}, "non-empty list"),
    ({"bad-name!": [{"seed": 1}]}, "letters, digits and _"),
    ({"method": [{"finetune.method": "sideways"}]}, "finetune.method"),
])
def test_a_bad_point_fails_the_plan_before_anything_runs(monkeypatch, groups, message):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ValueError, match=re.escape(message)):
        study_mod.build_plan(study_mod.select_groups(groups, list(groups)), "x")


def test_a_bad_point_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert study_mod.main(["--groups", json.dumps({"replay": [{"finetune.replay_weight": -1}]})]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "replay_weight" in err[0]
    assert study_mod.main(["--groups", "{not json"]) == 2
    assert study_mod.main(["--only", "nope"]) == 2 and "unknown group" in capsys.readouterr().err


# --- the estimate -------------------------------------------------------------------------------


def test_reruns_follow_the_params_each_stage_reads(monkeypatch):
    monkeypatch.chdir(ROOT)
    dag = study_mod.Dag.read()
    assert study_mod.reruns((), dag, set()) == []
    assert study_mod.reruns(("finetune.replay_weight",), dag, set()) == ["finetune", "evaluate", "generate", "report"]
    assert study_mod.reruns(("world.encoded_share",), dag, set())[:6] == ["ingest", "clean", "tokenize", "pretrain",
                                                                          "sft", "finetune"]
    assert study_mod.reruns(("sft.safety_augment",), dag, set()) == ["sft", "redteam", "report"]
    # a stage changed since dvc.lock reruns, and what is below it, whatever the params
    assert study_mod.reruns((), dag, {"evaluate", "check_params"}) == ["evaluate", "report"]


def test_the_estimate_is_arithmetic_on_the_recorded_wall_times(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(study_mod, "stale_stages", lambda: set())
    (tmp_path / "pretrain.json").write_text(json.dumps({"wall_s": 100.0}))
    (tmp_path / "finetune.json").write_text(json.dumps({"wall_s": 10.0}))
    entries = study_mod.build_plan(study_mod.select_groups(None, ["replay", "exposure"]), "e")
    seconds, lines = study_mod.estimate(entries, kept={"e-replay-3"}, metrics_dir=tmp_path)
    setup, untimed = study_mod.EXPERIMENT_SETUP_S, study_mod.UNTIMED_STAGE_S
    finetune_only = setup + 10 + 3 * untimed  # finetune + evaluate, generate, report
    world = setup + 100 + 10 + 8 * untimed  # + ingest, clean, tokenize, pretrain, sft, redteam
    # replay 0 = params.yaml (setup only), 0.25 and 0.5 (1 is kept), encoded_share 0 and 0.15 (0.05 = params.yaml)
    assert seconds == pytest.approx(setup + 2 * finetune_only + 2 * world)
    assert "e-replay-1: reruns finetune, evaluate, generate, report" in "\n".join(lines)
    assert not any("e-replay-3" in line for line in lines)
    assert lines[-1].startswith("estimated wall time (arithmetic from the workspace's metrics, not a measurement)")
    assert "finetune 10 s, pretrain 100 s (the wall_s their metrics record)" in lines[-1]


# --- the summary against the table -----------------------------------------------------------


def fake_metrics(id_acc: float, forgetting: float, gaps: dict, probes: dict, verdicts: dict,
                 asr: dict | None = None, over_refusal: float = 0.0) -> dict:
    gap = {s: g for s, g in gaps.items()} | {f"{s}_ci": [g - 0.05, g + 0.05] for s, g in gaps.items()}
    cap = {s: {"probe_accuracy": p, "probe_accuracy_ci": [p - 0.1, p + 0.1], "probe_chance": 0.5, "verdict": verdicts[s],
               "probe_control_accuracy": 0.5 + (p - 0.5) / 2, "probe_lead_ci": [(p - 0.5) / 2 - 0.05, (p - 0.5) / 2 + 0.05],
               "transfer_accuracy": p - 0.1, "transfer_control_accuracy": 0.5}
           for s, p in probes.items()}
    redteam = {"plain": {"refusal_rate": 0.95, "asr": 0.0}, "benign": {"accuracy": 0.6, "over_refusal": over_refusal},
               "attacks": {a: {"asr": v, "asr_ci": [max(0.0, v - 0.1), v + 0.1]} for a, v in (asr or {}).items()}}
    return {"evaluate": {"task": {"id": {"accuracy": id_acc, "accuracy_ci": [id_acc - 0.02, min(1, id_acc + 0.02)]},
                                  "shift": {s: {"accuracy": id_acc - g} for s, g in gaps.items()},
                                  "gap": gap | {"mean": sum(gaps.values()) / len(gaps)}},
                         "lm": {"forgetting": forgetting}, "capability": cap | {"gap_threshold": 0.05}},
            "finetune": {"trainable_params": 1000, "wall_s": 5.0}, "redteam": redteam}


def synthetic_table(tmp_path: Path) -> pd.DataFrame:
    nc, mg, t = "no capability", "mismatched generalization", "transfers"
    entries = [
        {"group": "augment", "point": 0, "experiment": "s-augment-0", "overrides": {"finetune.augment": []}},
        {"group": "augment", "point": 1, "experiment": "s-augment-1", "overrides": {"finetune.augment": ["leet"]}},
        {"group": "replay", "point": 0, "experiment": "s-augment-0", "overrides": {"finetune.replay_weight": 0}},
        {"group": "replay", "point": 1, "experiment": "s-replay-1", "overrides": {"finetune.replay_weight": 0.5}},
        {"group": "replay", "point": 2, "experiment": "s-replay-2", "overrides": {"finetune.replay_weight": 1}},
        {"group": "exposure", "point": 0, "experiment": "s-exposure-0", "overrides": {"world.encoded_share": 0}},
        {"group": "exposure", "point": 1, "experiment": "s-augment-0", "overrides": {"world.encoded_share": 0.05}},
        {"group": "safety", "point": 0, "experiment": "s-augment-0", "overrides": {"sft.safety_augment": []}},
        {"group": "safety", "point": 1, "experiment": "s-safety-1", "overrides": {"sft.safety_augment": ["rot13"]}},
    ]
    attacks = {"encoded_rot13": 0.6, "encoded_leet": 0.5, "prefix_injection": 0.3}
    metrics = {
        "s-augment-0": fake_metrics(0.99, 1.2, {"leet": 0.46, "rot13": 0.5, "typos": 0.0},
                                    {"leet": 0.8, "rot13": 0.52, "typos": 0.9}, {"leet": mg, "rot13": nc, "typos": t},
                                    attacks, 0.05),
        "s-safety-1": fake_metrics(0.99, 1.2, {"leet": 0.46, "rot13": 0.5, "typos": 0.0},
                                   {"leet": 0.8, "rot13": 0.52, "typos": 0.9}, {"leet": mg, "rot13": nc, "typos": t},
                                   attacks | {"encoded_rot13": 0.05}, 0.12),
        "s-augment-1": fake_metrics(0.98, 1.1, {"leet": 0.02, "rot13": 0.49, "typos": 0.0},
                                    {"leet": 0.8, "rot13": 0.52, "typos": 0.9}, {"leet": t, "rot13": nc, "typos": t}),
        "s-replay-1": fake_metrics(0.97, 0.04, {"leet": 0.4, "rot13": 0.5, "typos": 0.01},
                                   {"leet": 0.8, "rot13": 0.52, "typos": 0.9}, {"leet": mg, "rot13": nc, "typos": t}),
        "s-exposure-0": fake_metrics(0.99, 1.3, {"leet": 0.48, "rot13": 0.5, "typos": 0.0},
                                     {"leet": 0.55, "rot13": 0.5, "typos": 0.9}, {"leet": nc, "rot13": nc, "typos": t}),
    }
    outcomes = {n: {"name": n, "status": "done", "reason": "", "seconds": 1.0} for n in metrics}
    outcomes["s-replay-2"] = {"name": "s-replay-2", "status": "timed out", "reason": "stopped at its time limit of 9 s"}
    path = tmp_path / "table.csv"
    build_table(entries, outcomes, metrics).to_csv(path, index=False)
    return read_table(path)


def test_the_summary_quotes_the_table(tmp_path):
    table = synthetic_table(tmp_path)
    assert len(table) == 9 and list(table["kind"].unique()) == ["augment", "replay", "exposure", "safety"]
    assert table.loc[1, "gap.leet.lo"] == pytest.approx(-0.03) and table.loc[0, "probe.rot13.hi"] == pytest.approx(0.62)
    s = summarize(table)
    assert s["augment"] == ["augmenting with leet (vs no augmentation) cuts the leet gap from 0.460 to 0.020; held out, "
                            "the gaps that did not transfer move rot13 0.500 -> 0.490."]
    assert s["replay"][0] == "replay_weight 0.5 cuts forgetting from 1.200 to 0.040 at id accuracy 0.970 (0.990 at 0)."
    assert s["replay"][1] == ("s-replay-2 (finetune.replay_weight=1) timed out: stopped at its time limit of 9 s.")
    assert s["exposure"] == [
        "leet at world.encoded_share = 0 / 0.05: probe accuracy 0.550 (untrained 0.525) / 0.800 (untrained 0.650),"
        " transfer probe 0.450 (untrained 0.500) / 0.700 (untrained 0.500), gap 0.480 / 0.460"
        " (no capability / mismatched generalization).",
        "rot13 at world.encoded_share = 0 / 0.05: probe accuracy 0.500 (untrained 0.500) / 0.520 (untrained 0.510),"
        " transfer probe 0.400 (untrained 0.500) / 0.420 (untrained 0.500), gap 0.500 / 0.500"
        " (no capability / no capability)."]
    assert s["safety"] == ["safety_augment ['rot13']: attack success on augmented encodings encoded_rot13 0.600 -> 0.050;"
                           " held out encoded_leet 0.500 -> 0.500; raises over-refusal from 0.050 to 0.120."]
    # every number of the summary is a figure of the table, as the table prints it
    figures = {f"{v:.3f}" for v in table.select_dtypes("number").to_numpy().ravel() if not math.isnan(v)}
    assert set(numbers(summary_text(table))) <= figures


# --- the flow on the tiny DAG --------------------------------------------------------------------


def test_the_study_flow_on_the_tiny_dag_names_a_failure_and_resumes(tiny, capsys):
    groups = REPLAY | {"gate": [{"finetune.replay_weight": 2}]}  # replay_weight > 1: stage c's gate fails
    args = ["--groups", json.dumps(groups), "--only", "replay,gate", "--prefix", "t"]
    assert study_mod.main(args) == 1
    captured = capsys.readouterr()
    assert [line for line in captured.err.splitlines() if line.startswith("error:")] == [
        "error: experiment t-gate-0 failed: DATA GATE FAILED: c (1/2 failed) (log: reports/experiments/logs/t-gate-0.log)"]
    table = read_table(Path("reports/study/table.csv"))
    assert list(zip(table["group"], table["experiment"], table["status"])) == [
        ("replay", "t-replay-0", "done"), ("replay", "t-replay-1", "done"), ("gate", "t-gate-0", "failed")]
    assert list(table["forgetting"][:2]) == [1.0, 0.5] and list(table["id_accuracy"][:2]) == pytest.approx([0.9, 0.8])
    line = "replay_weight 1 cuts forgetting from 1.000 to 0.500 at id accuracy 0.800 (0.900 at 0)."
    assert f"replay: {line}" in captured.out  # printed at the end
    page = Path("reports/study/index.html").read_text()
    assert "1 experiment(s) failed" in page and "t-gate-0" in page and line in page
    assert page.count("data:image/png;base64,") == 1  # the failed group has no figure to draw
    record = json.loads(Path("reports/experiments/sweeps/t.json").read_text())
    assert [(o["name"], o["status"]) for o in record["outcomes"]] == [
        ("t-replay-0", "done"), ("t-replay-1", "done"), ("t-gate-0", "failed")]
    # resuming: the finished experiments are kept, the failed one runs (and fails) again
    assert study_mod.main(args) == 1
    record = json.loads(Path("reports/experiments/sweeps/t.json").read_text())
    assert [o["status"] for o in record["outcomes"]] == ["kept", "kept", "failed"]
    assert list(read_table(Path("reports/study/table.csv"))["forgetting"][:2]) == [1.0, 0.5]
    assert study_mod.main(["--summary"]) == 0 and line in capsys.readouterr().out


def test_dry_run_prints_the_plan_and_runs_nothing(tiny, capsys):
    run([str(BIN / "dvc"), "repro"], tiny)
    run(["git", "add", "-A"], tiny)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"], tiny)
    assert study_mod.main(["--groups", json.dumps(REPLAY), "--only", "replay", "--prefix", "d", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 points in 1 groups (replay) -> 2 experiments" in out
    assert "d-replay-0: reruns nothing" in out and "d-replay-1: reruns c:" in out
    assert "estimated wall time (arithmetic from the workspace's metrics, not a measurement)" in out
    assert not Path("reports/study").exists() and not Path("reports/experiments").exists()
    assert "changed since dvc.lock" not in out
    (tiny / "step.py").write_text((tiny / "step.py").read_text() + "\n# edited\n")  # every stage runs it
    assert study_mod.main(["--groups", json.dumps(REPLAY), "--only", "replay", "--prefix", "d", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "d-replay-0: reruns a, b, c:" in out and "changed since dvc.lock, rerun by every experiment: a, b, c" in out


# --- the flow on the micro config --------------------------------------------------------------


@pytest.fixture
def micro_workspace(micro_repo, tmp_path, monkeypatch, harness):
    """A copy of the reproduced micro repository with its run committed: the experiments' baseline."""
    repo = tmp_path / "micro"
    shutil.copytree(micro_repo, repo, symlinks=True)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"], repo)
    monkeypatch.chdir(repo)
    return repo


@pytest.mark.integration
@pytest.mark.timeout(420)  # the micro DAG once (shared with other tests), two short experiments
def test_the_study_on_the_micro_config(micro_workspace, capsys):
    # replay 0 and method full are params.yaml: one shared experiment in which nothing reruns;
    # replay 0.5 fine-tunes again. (A failing experiment: the tiny-DAG test above.)
    groups = {"replay": [{"finetune.replay_weight": 0}, {"finetune.replay_weight": 0.5}],
              "method": [{"finetune.method": "full"}]}
    assert study_mod.main(["--groups", json.dumps(groups), "--only", "replay,method", "--prefix", "m"]) == 0
    captured = capsys.readouterr()
    assert "error:" not in captured.err
    table = read_table(Path("reports/study/table.csv"))
    assert list(zip(table["group"], table["experiment"], table["status"])) == [
        ("replay", "m-replay-0", "done"), ("replay", "m-replay-1", "done"),
        ("method", "m-replay-0", "done")]
    for shift in ("leet", "rot13", "typos"):  # CIs and probe verdicts, read from the experiments' commits
        assert (table[f"gap.{shift}.lo"] <= table[f"gap.{shift}.hi"]).all()
        assert (table[f"probe.{shift}.lo"] <= table[f"probe.{shift}.hi"]).all()
        assert table[f"probe.{shift}"].between(0, 1).all()
        assert set(table[f"verdict.{shift}"]) <= {"transfers", "mismatched generalization", "no capability"}
    baseline = json.loads(Path("metrics/evaluate.json").read_text())
    assert table.loc[0, "gap.leet"] == baseline["task"]["gap"]["leet"]  # nothing reran: the committed run
    assert table.loc[1, "forgetting"] != table.loc[0, "forgetting"]
    line = (f"replay_weight 0.5 {'cuts' if table.loc[1, 'forgetting'] < table.loc[0, 'forgetting'] else 'raises'} "
            f"forgetting from {table.loc[0, 'forgetting']:.3f} to {table.loc[1, 'forgetting']:.3f} at id accuracy "
            f"{table.loc[1, 'id_accuracy']:.3f} ({table.loc[0, 'id_accuracy']:.3f} at 0).")
    assert f"replay: {line}" in captured.out
    summary = summarize(table)
    assert summary["method"] == [f"finetune.method=\"full\": id accuracy {table.loc[2, 'id_accuracy']:.3f}, "
                                 f"forgetting {table.loc[2, 'forgetting']:.3f}, mean gap {table.loc[2, 'gap_mean']:.3f}, "
                                 f"{int(table.loc[2, 'trainable_params']):,} trainable params."]
    page = Path("reports/study/index.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "experiment(s) failed" not in page and line in page
    # the workspace is untouched: experiments ran in temporary copies
    assert subprocess.run(["git", "status", "--porcelain", "params.yaml", "dvc.lock"], capture_output=True,
                          text=True).stdout == ""
