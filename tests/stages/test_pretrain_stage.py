"""The pretrain stage: `nproc > 1` relaunches it under torchrun, the gate catches non-finite
losses and a validation loss above the unigram baseline, and an output path it cannot write
stops it in its first second with one line naming the path (before torch is even imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lmpipe.params import parse_params

ROOT = Path(__file__).resolve().parents[2]
TINY = {"pretrain": {"model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
                     "device": "cpu", "max_steps": 5}}


def test_nproc_relaunches_under_torchrun(monkeypatch):
    from lmpipe.pretraining import launch

    calls = []
    monkeypatch.setattr(launch.os, "execv", lambda exe, argv: calls.append((exe, argv)))
    launch.relaunch_with_torchrun(2, "stages.pretrain")
    assert calls == [(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                                       "--standalone", "-m", "stages.pretrain"])]


def test_gate_rejects_nan_and_val_above_unigram(tmp_path, monkeypatch):
    from stages.pretrain import gate

    monkeypatch.chdir(tmp_path)
    metrics = {"train_loss": float("nan"), "val_loss": 6.0, "unigram_loss": 5.0}
    history = [{"step": 5, "train_loss": 7.0}, {"step": 10, "train_loss": float("nan"), "val_loss": 6.0}]
    with pytest.raises(SystemExit) as exc:
        gate(metrics, history, parse_params(TINY).pretrain)
    assert exc.value.code == 1
    report = json.loads((tmp_path / "reports/quality/pretrain.json").read_text())
    failed = {r["kwargs"].get("column") for r in report["expectations"] if not r["success"]}
    assert {"all_finite", "val_minus_unigram"} <= failed


def run_stage(cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    full = parse_params(TINY).model_dump(mode="json")
    (cwd / "params.yaml").write_text(yaml.safe_dump(full))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LMPIPE_PARAMS")}
    env["PYTHONPATH"] = str(ROOT)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stages.pretrain"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    return proc, time.perf_counter() - start


@pytest.mark.parametrize("blocker", ["models/base", "data/checkpoints", "models", "metrics/pretrain.json/"])
def test_an_output_path_that_cannot_be_written_fails_before_any_work(tmp_path, blocker):
    """A file where the stage writes a directory (or a directory where it writes a file): exit 2
    within a second or two, one `error:` line naming the path, nothing of the inputs read."""
    target = tmp_path / blocker.rstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if blocker.endswith("/"):
        target.mkdir()
    else:
        target.write_text("not a directory\n")
    proc, seconds = run_stage(tmp_path)  # no shards at all: reading them would fail differently
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert last.startswith("error: cannot write") and blocker.rstrip("/") in last, last
    assert "torch" not in proc.stderr and "Traceback" not in proc.stderr
    assert seconds < 5, f"took {seconds:.1f}s: the check must run before torch is imported"
    assert target.exists()  # the stage did not remove what was in its way


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_folder_fails_before_any_work(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models").chmod(0o500)
    try:
        proc, _ = run_stage(tmp_path)
    finally:
        (tmp_path / "models").chmod(0o700)
    assert proc.returncode == 2
    assert "no write permission on models" in proc.stderr.strip().splitlines()[-1]
