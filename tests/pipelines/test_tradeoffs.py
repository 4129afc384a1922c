"""The cross-experiment view on made-up `dvc exp show --json`, and the sweep's grid handling."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from lmpipe.params import ParamsError
from pipelines import tradeoffs
from pipelines.efficiency import Latency
from pipelines.experiments import normalize, overrides_args, parse_value, validate_overrides
from pipelines.sweep import expand


def _data(params: dict, acc=None, shifts=(), forgetting=None, latency=None, readability=None, error=False):
    metrics = {}
    if acc is not None:
        metrics["metrics/evaluate.json"] = {"data": {
            "task": {"id": {"accuracy": acc}, "shift": {f"s{i}": {"accuracy": a} for i, a in enumerate(shifts)},
                     "gap": {"mean": acc - sum(shifts) / len(shifts)}},
            "lm": {"forgetting": forgetting}, "efficiency": {"latency_ms_p50": latency}}}
        metrics["metrics/finetune.json"] = {"data": {"val_accuracy": acc, "wall_s": 3.0, "trainable_params": 10}}
        metrics["metrics/generate.json"] = {"data": {"finetuned": {"readability": readability}}}
    elif error:
        metrics["metrics/evaluate.json"] = {"error": {"type": "FileNotFoundError", "msg": "missing"}}
    return {"rev": "x", "params": {"params.yaml": {"data": params}}, "metrics": metrics}


def _exp(name, rev, state, data):
    return {"revs": [{"rev": rev, "name": name, "data": data, "error": None, "experiments": None}],
            "executor": {"state": state, "name": "dvc-task", "local": {}} if state else None, "name": name}


def ft(rw, method="full"):
    return {"seed": 1, "finetune": {"replay_weight": rw, "method": method, "augment": []}}


EXP_SHOW = [
    {"rev": "workspace", "name": None, "error": None, "experiments": None,
     "data": _data(ft(0.0), 0.95, [0.5, 0.6], 4.0, 3.0, 80.0)},
    {"rev": "0123456789abcdef", "name": "main", "error": None,
     "data": _data(ft(0.0), 0.95, [0.5, 0.6], 4.0, 3.0, 80.0),
     "experiments": [
         # accurate but forgets most
         _exp("full-0", "a" * 40, "success", _data(ft(0.0), 0.96, [0.50, 0.60], 4.0, 3.0, 82.0)),
         # replay: less forgetting, a little less accuracy
         _exp("full-1", "b" * 40, "success", _data(ft(1.0), 0.93, [0.70, 0.70], 1.0, 3.0, 85.0)),
         # dominated by full-1 on both accuracy fronts (worse accuracy, more forgetting), but fastest
         _exp("lora-1", "c" * 40, "success", _data(ft(1.0, "lora"), 0.90, [0.60, 0.60], 2.0, 1.0, 70.0)),
         # strictly worse than full-1 everywhere
         _exp("lora-0", "d" * 40, "success", _data(ft(0.0, "lora"), 0.80, [0.40, 0.40], 3.0, 3.5, 60.0)),
         _exp("broken", "e" * 40, "failed", _data(ft(0.5), error=True)),
         {"revs": [{"rev": "f" * 40, "name": None, "data": {}, "error": None}],
          "executor": {"state": "queued"}, "name": "waiting"},
     ]},
]


# side-by-side latency (pipelines/efficiency.py) of the finished experiments: full-0 and full-1
# share an architecture and measure the same within noise; the LoRA runs are clearly faster/slower
LATENCY = {"full-0": Latency(3.0, 2.9, 3.2, 7), "full-1": Latency(3.1, 2.95, 3.3, 7),
           "lora-1": Latency(1.0, 0.95, 1.05, 7), "lora-0": Latency(3.6, 3.5, 3.7, 7)}


def test_table_has_params_metrics_and_status():
    table = tradeoffs.build_table(EXP_SHOW)
    assert list(table["experiment"]) == ["main", "full-0", "full-1", "lora-1", "lora-0", "broken", "waiting"]
    assert list(table["status"]) == ["done", "done", "done", "done", "done", "failed", "queued"]
    row = table.set_index("experiment").loc["full-1"]
    assert row["finetune.replay_weight"] == 1.0 and row["finetune.method"] == "full"
    assert row["finetune.augment"] == "[]"
    assert row["id_accuracy"] == 0.93 and row["shift_accuracy"] == pytest.approx(0.70)
    assert row["forgetting"] == 1.0 and row["latency_ms_p50"] == 3.0 and row["readability"] == 85.0
    assert row["gap_mean"] == pytest.approx(0.23) and row["ft_val_accuracy"] == 0.93
    assert "seed" not in table.columns  # same everywhere: not shown
    assert math.isnan(table.set_index("experiment").loc["broken", "id_accuracy"])


def test_pareto_fronts():
    table = tradeoffs.build_table(EXP_SHOW, baselines=False, latency=LATENCY).set_index("experiment")
    # id accuracy vs forgetting: full-0 (most accurate), full-1 (least forgetting)
    assert set(table.index[table["pareto_id_forgetting"]]) == {"full-0", "full-1"}
    # mean shift accuracy vs forgetting: full-1 dominates everything
    assert set(table.index[table["pareto_shift_forgetting"]]) == {"full-1"}
    # id accuracy vs latency: full-0 (accurate), lora-1 (fast)
    assert set(table.index[table["pareto_id_latency"]]) == {"full-0", "lora-1"}
    assert set(table.index[table["pareto"]]) == {"full-0", "full-1", "lora-1"}
    assert table.loc["full-0", "latency_ties"] == "full-1" and table.loc["lora-1", "latency_ties"] == ""
    assert not table.loc[["lora-0", "broken", "waiting"], "pareto"].any()


def test_latency_within_noise_is_not_ranked():
    # full-0 is more accurate than full-1 and its latency reads lower: but the two bands overlap,
    # so full-0 does not dominate full-1 on latency; a band clear of the other's does rank
    noisy = {"full-0": Latency(2.0, 1.5, 3.5, 7), "full-1": Latency(3.0, 1.9, 4.0, 7)}
    table = tradeoffs.build_table(EXP_SHOW, baselines=False, latency=noisy).set_index("experiment")
    assert table.loc["full-0", "latency_ties"] == "full-1"
    # on id accuracy vs latency, full-1 is dominated by full-0 only through accuracy: latency ties
    assert table.loc["full-0", "pareto_id_latency"] and not table.loc["full-1", "pareto_id_latency"]
    same_accuracy = tradeoffs.add_latency(pd.DataFrame({"experiment": ["a", "b"], "id_accuracy": [0.9, 0.9]}),
                                          {"a": Latency(2.0, 1.8, 2.3, 7), "b": Latency(2.2, 2.0, 2.6, 7)})
    assert tradeoffs.pareto_flags(same_accuracy, ["id_accuracy"], ["latency_ms"]) == [True, True]
    clear = tradeoffs.add_latency(same_accuracy[["experiment", "id_accuracy"]],
                                  {"a": Latency(2.0, 1.8, 2.3, 7), "b": Latency(4.0, 3.8, 4.4, 7)})
    assert tradeoffs.pareto_flags(clear, ["id_accuracy"], ["latency_ms"]) == [True, False]


def test_without_side_by_side_latency_latency_is_not_ranked(tmp_path):
    table = tradeoffs.build_table(EXP_SHOW, baselines=False).set_index("experiment")
    assert not table["pareto_id_latency"].any()  # the stages' own latencies are shown, never ranked
    assert table.loc["lora-1", "latency_ms_p50"] == 1.0
    # the all-objectives front then ranks the objectives that were measured comparably
    assert set(table.index[table["pareto"]]) == {"full-0", "full-1"}
    page = tradeoffs.render_html(table.reset_index(), None)
    assert "Latency is not ranked" in page


def test_failed_experiments_are_listed(tmp_path):
    failures = [{"name": "rw-2", "point": {"finetune.replay_weight": 2}, "status": "failed",
                 "reason": "DATA GATE FAILED: evaluate (1/12 failed)"},
                {"name": "slow", "point": {"finetune.replay_weight": 3}, "status": "timed out",
                 "reason": "stopped at its time limit of 5 s"}]
    table = tradeoffs.build_table(EXP_SHOW, failures=failures, names=["full-1", "rw-2", "slow"])
    rows = table.set_index("experiment")
    assert rows.loc["rw-2", "status"] == "failed" and "DATA GATE FAILED" in rows.loc["rw-2", "reason"]
    assert rows.loc["slow", "status"] == "timed out" and not rows.loc[["rw-2", "slow"], "pareto"].any()
    page = tradeoffs.write_report(table, tmp_path)["html"].read_text()
    assert "2 experiment(s) failed" in page and "rw-2" in page and "DATA GATE FAILED: evaluate" in page
    text = tradeoffs.to_text(table)
    assert "FAILED: rw-2: DATA GATE FAILED" in text and "TIMED OUT: slow" in text


def test_names_filter_keeps_baselines_and_workspace_is_opt_in():
    table = tradeoffs.build_table(EXP_SHOW, names=["full-1", "lora-1"])
    assert list(table["experiment"]) == ["main", "full-1", "lora-1"]
    assert "workspace" in list(tradeoffs.build_table(EXP_SHOW, workspace=True)["experiment"])


def test_command_writes_csv_and_html_and_prints_the_table(tmp_path, capsys):
    src = tmp_path / "exp.json"
    src.write_text(json.dumps(EXP_SHOW))
    out = tmp_path / "experiments"
    assert tradeoffs.main(["--json", str(src), "--out", str(out)]) == 0  # a saved listing: not re-measured
    printed = capsys.readouterr().out
    assert "full-1" in printed and "★" in printed and "index.html" in printed
    csv = pd.read_csv(out / "table.csv")
    assert set(csv.loc[csv["pareto"], "experiment"]) == {"full-0", "full-1"}
    page = (out / "index.html").read_text()
    assert "data:image/png;base64," in page and page.count('class="pareto"') == 2
    assert (out / "fronts.png").read_bytes()[:4] == b"\x89PNG"


def test_empty_exp_show_gives_an_empty_report(tmp_path):
    table = tradeoffs.build_table([])
    assert table.empty
    assert tradeoffs.write_report(table, tmp_path)["html"].exists()


def test_grid_expansion_and_override_syntax(tmp_path):
    points = expand({"finetune.replay_weight": [0, 0.5, 1], "finetune.method": ["full", "lora"]})
    assert len(points) == 6 and points[1] == {"finetune.replay_weight": 0, "finetune.method": "lora"}
    assert expand({"seed": 3}) == [{"seed": 3}]
    with pytest.raises(ValueError, match="empty grid"):
        expand({})
    assert parse_value("1e-3") == 0.001 and parse_value("0.5") == 0.5 and parse_value("[typos, leet]") == ["typos", "leet"]
    assert normalize(["params.yaml:finetune.lr=1e-3"]) == {"finetune.lr": "1e-3"}
    with pytest.raises(ParamsError, match="only params.yaml"):
        normalize({"other.yaml:a": 1})
    assert overrides_args({"finetune.augment": ["typos"], "finetune.lr": 0.001}) == \
        ["-S", 'finetune.augment=["typos"]', "-S", "finetune.lr=0.001"]
    params = tmp_path / "params.yaml"
    params.write_text("seed: 1\n")
    assert validate_overrides({"finetune.lr": "1e-3"}, params) == {"finetune.lr": "1e-3"}
    with pytest.raises(ParamsError, match="unknown key 'finetune.lrr'"):
        validate_overrides({"finetune.lrr": "1"}, params)
    with pytest.raises(ParamsError, match="replay_weight"):
        validate_overrides({"finetune.replay_weight": -1}, params)
