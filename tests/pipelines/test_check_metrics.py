"""CI's metric reproduction check: tolerances, missing keys, timing keys never gated."""

from __future__ import annotations

import json

from pipelines.check_metrics import compare, flatten, main

TOL = {
    "default": {"rel": 0.05},
    "rules": [
        {"key": "*:*tokens_per_s", "ignore": True},
        {"key": "pretrain.json:val_loss", "abs": 0.1},
    ],
}


def test_flatten_nested_and_lists():
    assert flatten({"a": {"b": 1, "c": [0.1, 0.2]}}) == {"a.b": 1, "a.c[0]": 0.1, "a.c[1]": 0.2}


def test_within_and_outside_tolerance():
    committed = {"pretrain.json:val_loss": 3.0, "pretrain.json:params": 100, "pretrain.json:tokens_per_s": 5.0}
    ok = {"pretrain.json:val_loss": 3.09, "pretrain.json:params": 104, "pretrain.json:tokens_per_s": 500.0}
    assert compare(committed, ok, TOL) == []
    bad = {"pretrain.json:val_loss": 3.2, "pretrain.json:params": 106, "pretrain.json:tokens_per_s": 1.0}
    moved = {row["key"] for row in compare(committed, bad, TOL)}
    assert moved == {"pretrain.json:val_loss", "pretrain.json:params"}


def test_missing_key_and_changed_string_fail():
    committed = {"finetune.json:method": "full", "finetune.json:val_accuracy": 0.9}
    rows = compare(committed, {"finetune.json:method": "lora"}, TOL)
    assert {r["key"]: r["current"] for r in rows} == {
        "finetune.json:method": "lora", "finetune.json:val_accuracy": "<missing>"}


def test_cli_exit_codes_and_table(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    (tmp_path / "old" / "evaluate.json").write_text(json.dumps({"task": {"id": {"accuracy": 0.9}}}))
    (tmp_path / "new" / "evaluate.json").write_text(json.dumps({"task": {"id": {"accuracy": 0.5}}}))
    tol = tmp_path / "tol.yaml"
    tol.write_text("default: {abs: 0.02}\n")
    args = ["--committed", str(tmp_path / "old"), "--current", str(tmp_path / "new"), "--tolerances", str(tol)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "evaluate.json:task.id.accuracy" in out and "0.9" in out and "0.5" in out
    (tmp_path / "new" / "evaluate.json").write_text(json.dumps({"task": {"id": {"accuracy": 0.91}}}))
    assert main(args) == 0
