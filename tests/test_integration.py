"""The whole DAG with real DVC on the micro config, in a throwaway git + DVC repository."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from conftest import BIN, MICRO, make_repo, run

pytestmark = pytest.mark.integration
DVC = str(BIN / "dvc")


def metrics(repo: Path, name: str) -> dict:
    return json.loads((repo / "metrics" / f"{name}.json").read_text())


def test_every_output_exists(micro_repo):
    for rel in ["data/raw/corpus.parquet", "data/clean/train.parquet", "data/tokens/train.bin",
                "data/tokens/meta.json", "models/tokenizer/tokenizer.json", "models/base/model.safetensors",
                "models/finetuned/model.safetensors", "data/samples/samples.jsonl", "data/samples/samples.md",
                "data/raw/safety.parquet", "models/sft/model.safetensors", "metrics/sft.json", "metrics/redteam.json",
                "reports/index.html", "dvc.lock", "plots/pretrain/plots/metrics/train_loss.tsv"]:
        assert (micro_repo / rel).exists(), rel
    for stage in ["ingest", "clean", "tokenize", "pretrain", "sft", "finetune", "evaluate", "generate", "redteam"]:
        quality = json.loads((micro_repo / "reports/quality" / f"{stage}.json").read_text())
        assert quality["success"] is True, stage
    assert not list((micro_repo / "models").rglob("*.bin")), "weights must be safetensors only"


def test_metrics_are_sane(micro_repo):
    pre = metrics(micro_repo, "pretrain")
    for key in ("train_loss", "val_loss", "unigram_loss"):
        assert math.isfinite(pre[key])
    assert pre["val_loss"] < pre["unigram_loss"], "the model must beat the context-free baseline"
    ft = metrics(micro_repo, "finetune")
    assert ft["val_accuracy"] > 0.5
    ev = metrics(micro_repo, "evaluate")
    assert ev["task"]["id"]["accuracy"] > 0.5
    assert set(ev["task"]["shift"]) >= {"lexical", "domain", "leet", "rot13", "typos", "negation"}
    assert ev["lm"]["ppl_base"] > 1 and ev["lm"]["ppl_finetuned"] > 1
    assert math.isclose(ev["lm"]["forgetting"], ev["lm"]["ppl_finetuned"] / ev["lm"]["ppl_base"] - 1, rel_tol=1e-3)
    gen = metrics(micro_repo, "generate")
    assert set(gen) == {"base", "finetuned"}
    assert metrics(micro_repo, "ingest")["leakage"] == 0
    html = (micro_repo / "reports/index.html").read_text()
    assert "Competing objectives" in html and "Mismatched generalization" in html


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def test_second_repro_is_a_noop(micro_repo):
    out = run([DVC, "repro"], micro_repo).stdout
    # only the params check runs (always_changed); its output is unchanged, so nothing else does
    assert ran_stages(out) == ["check_params"]
    assert "didn't change, skipping" in out or "up to date" in out.lower()
    status = run([DVC, "status"], micro_repo).stdout
    assert "ingest" not in status and "pretrain" not in status


def test_a_misspelled_section_stops_the_repro_before_any_stage(micro_repo):
    params = micro_repo / "params.yaml"
    good = params.read_text()
    try:
        params.write_text(good + "pretrian:\n  max_steps: 5\n")
        proc = run([DVC, "repro"], micro_repo, check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0
        assert "error: params.yaml: unknown key 'pretrian' (did you mean 'pretrain'?)" in output
        assert ran_stages(output) == ["check_params"]
    finally:
        params.write_text(good)
        run([DVC, "repro"], micro_repo)  # puts the check's output back; nothing else reruns
    assert ran_stages(run([DVC, "repro"], micro_repo).stdout) == ["check_params"]


def test_an_edited_input_file_makes_ingest_stale(micro_repo):
    """data/input is a dependency of ingest: adding, editing or removing a file there is a change
    that `dvc status` reports (even for the world source, which reads nothing from it)."""
    extra = micro_repo / "data/input/extra.jsonl"
    try:
        extra.write_text('{"text": "a new document"}\n')
        status = run([DVC, "status", "ingest"], micro_repo).stdout
        assert "ingest" in status and "data/input" in status
    finally:
        extra.unlink(missing_ok=True)
    assert "ingest" not in run([DVC, "status", "ingest"], micro_repo).stdout


def test_experiment_with_param_override(micro_repo):
    run([DVC, "exp", "run", "-S", "pretrain.max_steps=40", "--name", "short-pretrain"], micro_repo, timeout=900)
    shown = json.loads(run([DVC, "exp", "show", "--json"], micro_repo).stdout)
    exps = [e for commit in shown for e in (commit.get("experiments") or [])]
    runs = [r for e in exps for r in e.get("revs", [])]
    named = [r for r in runs if r.get("name") == "short-pretrain"]
    assert named, f"experiment not listed: {[r.get('name') for r in runs]}"
    data = named[0]["data"]
    assert data["params"]["params.yaml"]["data"]["pretrain"]["max_steps"] == 40
    assert data["metrics"]["metrics/pretrain.json"]["data"]["steps"] == 40


def test_failed_gate_stops_the_dag(tmp_path):
    """clean.max_drop_share: 0 makes the clean gate fail (every filter drops something)."""
    params = yaml.safe_load(MICRO.read_text())
    params["clean"]["max_drop_share"] = 0.0
    broken = tmp_path / "params.yaml"
    broken.write_text(yaml.safe_dump(params))
    repo = make_repo(tmp_path / "repo", broken)
    proc = run([DVC, "repro"], repo, check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "DATA GATE FAILED: clean" in output and "expect_column_values_to_be_between" in output
    report = json.loads((repo / "reports/quality/clean.json").read_text())
    assert report["success"] is False and report["failed"] >= 1
    assert not (repo / "data/tokens").exists() and not (repo / "models/tokenizer").exists()
    assert "clean" not in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def test_corrupt_input_gives_clear_error_and_writes_nothing(tmp_path):
    repo = make_repo(tmp_path / "repo")
    run([DVC, "repro", "ingest"], repo)
    (repo / "data/raw/corpus.parquet").write_bytes(b"PAR1 truncated garbage")
    proc = run([DVC, "repro", "--single-item", "clean"], repo, check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "error: cannot read data/raw/corpus.parquet" in output
    assert "exited with 2" in output  # a bad input, final: not worth a retry
    assert not (repo / "data/clean").exists()
