"""The finetune stage: the gate names the failed floor and the leak; data checks (truncation,
leaks, class balance) stop the stage before training; output paths it cannot write stop it in its
first second. Runs on a copy of the micro DAG's inputs (conftest's `micro_repo`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lmpipe.finetuning.task import Task
from lmpipe.finetuning.trainer import Prepared
from lmpipe.params import parse_params
from stages import finetune

ROOT = Path(__file__).resolve().parents[2]
INPUTS = ("models/base", "models/tokenizer", "data/raw/task", "data/tokens", "params.yaml")


def prepared(train: pd.DataFrame, eval_texts: list[str], truncated: int = 0) -> Prepared:
    splits = {"train": train, "validation": pd.DataFrame({"text": eval_texts, "label": [1] * len(eval_texts)}),
              "test": train.iloc[:0]}
    task = Task(["negative", "positive"], splits, {})
    return Prepared(task, train, tokenizer=None, n_positions=128, max_length=64, train_ds=None, val_ds=None,
                    truncated=truncated)


def test_gate_names_the_failed_floor_and_the_leak(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train = pd.DataFrame({"text": ["good", "bad"], "label": [1, 0]})
    p = parse_params({}).finetune
    with pytest.raises(SystemExit) as exc:
        finetune.gate(prepared(train, ["fine"]), p, val_accuracy=0.4)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "DATA GATE FAILED: finetune" in err and "finetune.gate.min_val_accuracy" in err
    with pytest.raises(SystemExit):
        finetune.gate(prepared(train, ["Good!"]), p, val_accuracy=0.9)
    assert "also occur in validation, test or a shift" in capsys.readouterr().err


def test_data_gate_before_training_is_silent_when_the_data_is_fine(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train = pd.DataFrame({"text": ["good", "bad"], "label": [1, 0]})
    finetune.gate(prepared(train, ["fine"]), parse_params({}).finetune)  # no val_accuracy: data only
    assert capsys.readouterr().err == "" and not (tmp_path / "reports").exists()
    with pytest.raises(SystemExit):
        finetune.gate(prepared(train, ["fine"], truncated=1), parse_params({}).finetune)
    err = capsys.readouterr().err
    assert "1 of 2 training examples (50.0%) are longer than finetune.max_length=64" in err
    assert "val_accuracy" not in err  # nothing about a model that was never trained


@pytest.fixture
def stage_repo(micro_repo, tmp_path) -> Path:
    for rel in INPUTS:
        src, dst = micro_repo / rel, tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return tmp_path


def run_stage(root: Path, **finetune_overrides) -> tuple[subprocess.CompletedProcess, float]:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["finetune"] |= finetune_overrides
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "LMPIPE_PARAMS"} | {"PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stages.finetune"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc, time.perf_counter() - start


def test_truncation_stops_the_stage_before_training(stage_repo):
    proc, _ = run_stage(stage_repo, max_length=8)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "DATA GATE FAILED: finetune" in proc.stderr
    assert "longer than finetune.max_length=8 tokens and would be cut" in proc.stderr
    assert "'loss'" not in proc.stdout and "train_runtime" not in proc.stdout  # not one training step
    assert not (stage_repo / "models/finetuned").exists() and not (stage_repo / "metrics/finetune.json").exists()
    report = json.loads((stage_repo / "reports/quality/finetune.json").read_text())
    assert not report["success"]
    assert {r["kwargs"]["column"] for r in report["expectations"] if not r["success"]} == {"truncated_share"}


@pytest.mark.parametrize("blocker", ["models/finetuned", "data/checkpoints"])
def test_an_output_path_that_cannot_be_written_fails_before_any_work(stage_repo, blocker):
    (stage_repo / blocker).parent.mkdir(parents=True, exist_ok=True)
    (stage_repo / blocker).write_text("not a directory\n")
    proc, seconds = run_stage(stage_repo)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert last.startswith("error: cannot write") and blocker in last, last
    assert seconds < 5, f"took {seconds:.1f}s: the check must run before torch is imported"
