"""Atomic outputs and data-quality gates."""

from __future__ import annotations

import json

import great_expectations.expectations as gxe
import pandas as pd
import pytest

from lmpipe.gates import GATE_EXIT_CODE, Gate
from lmpipe.io import StageError, atomic_path, read_parquet, write_json


def test_atomic_write_keeps_old_file_on_crash(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp litter


def test_atomic_directory_replace(tmp_path):
    target = tmp_path / "model"
    for version in (1, 2):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "w.txt").write_text(str(version))
    assert (target / "w.txt").read_text() == "2"


def test_nan_becomes_null_in_json(tmp_path):
    write_json(tmp_path / "x.json", {"loss": float("nan"), "n": 3})
    assert json.loads((tmp_path / "x.json").read_text()) == {"loss": None, "n": 3}


def test_corrupt_parquet_is_a_clear_error(tmp_path):
    bad = tmp_path / "corpus.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(StageError, match="cannot read .*corpus.parquet"):
        read_parquet(bad)
    with pytest.raises(StageError, match="missing input"):
        read_parquet(tmp_path / "absent.parquet")
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "ok.parquet")
    with pytest.raises(StageError, match=r"lacks column\(s\) \['text'\]"):
        read_parquet(tmp_path / "ok.parquet", ["text"])


def test_gate_pass_and_fail(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    df = pd.DataFrame({"text": ["ok", "", "fine"], "label": [0, 1, 5]})
    gate = Gate("unit").table("t", df)
    gate.expect("t", gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]))
    gate.expect("t", gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1))
    gate.expect("t", gxe.ExpectColumnValuesToNotBeNull(column="text"))
    with pytest.raises(SystemExit) as exit_info:
        gate.finish(hints=["labels must be 0 or 1: fix data.files.label_map"])
    assert exit_info.value.code == GATE_EXIT_CODE
    report = json.loads((tmp_path / "reports/quality/unit.json").read_text())
    assert report["success"] is False and report["evaluated"] == 3 and report["failed"] == 2
    failed = {r["expectation"]: r for r in report["expectations"] if not r["success"]}
    assert set(failed) == {"expect_column_values_to_be_in_set", "expect_column_value_lengths_to_be_between"}
    assert failed["expect_column_values_to_be_in_set"]["examples"] == [5]
    err = capsys.readouterr().err
    assert "DATA GATE FAILED: unit (2/3 failed)" in err and "expect_column_values_to_be_in_set" in err
    assert "  unit gate: labels must be 0 or 1: fix data.files.label_map" in err

    ok = Gate("unit2").scalars("s", {"x": 0.5})
    ok.expect("s", gxe.ExpectColumnValuesToBeBetween(column="x", min_value=0, max_value=1))
    assert ok.finish()["success"] is True


RUN_STAGE = """
import sys
from lmpipe.io import StageError, run_stage

class Noisy:  # a finalizer that would print at interpreter shutdown
    def __del__(self):
        print("Exception ignored in: noise at shutdown", file=sys.stderr)

keep = Noisy()

def main():
    kind = sys.argv[1]
    if kind == "input":
        raise StageError("data/input/x.jsonl: line 3 is not valid JSON")
    if kind == "bug":
        raise KeyError("boom")
    if kind == "gate":
        raise SystemExit(1)

run_stage(main)
"""


@pytest.mark.parametrize(("kind", "code", "last"), [
    ("input", 2, "error: data/input/x.jsonl: line 3 is not valid JSON"),
    ("bug", 3, "error: unexpected KeyError: 'boom'"),
    ("gate", 1, None),
])
def test_run_stage_ends_with_the_error_and_its_exit_code(tmp_path, kind, code, last):
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "stage.py"
    script.write_text(RUN_STAGE)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(script), kind], capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == code
    assert "noise at shutdown" not in proc.stderr  # the error stays the last thing printed
    if last:
        assert proc.stderr.strip().splitlines()[-1] == last
    if kind == "bug":
        assert "Traceback" in proc.stderr  # a bug shows where it happened
