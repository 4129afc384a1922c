"""A three-stage DVC repository whose stage commands are a tiny Python script: seconds, not
minutes, per flow or sweep run, for the tests of pipelines/.

The script (`step.py <stage>`) behaves like our stages: it prints progress, writes its outs, its
metrics and a gate report (reports/quality/<stage>.json), and on request (environment variables,
which DVC passes on to stage commands, also inside `dvc exp run --temp`) fails its gate
("DATA GATE FAILED", exit 1), rejects its input ("error: ...", exit 2), raises an exception
(traceback), is killed by SIGKILL, or hangs with a child process of its own. Stage c's output
models/finetuned is a copy of $TINY_MODEL (a saved classifier) when that is set. Stage c's gate also
fails when finetune.replay_weight > 1: an override that makes an experiment fail.
"""

from __future__ import annotations

from pathlib import Path

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

STEP = r'''
import json, os, signal, sys, time
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
    Path(os.environ.get("TINY_PIDS", f"{stage}.pids")).write_text(f"{os.getpid()} {child.pid}")
    print(f"[{stage}] hanging", flush=True)
    time.sleep(120)
if os.environ.get("TINY_FAIL_INFRA") == stage:  # the OOM killer, a lost worker: SIGKILL
    counter = Path(os.environ["TINY_COUNTER"])
    n = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(n + 1))
    if n < int(os.environ.get("TINY_INFRA_FAILS", "99")):
        print("about to be killed", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
if os.environ.get("TINY_CRASH") == stage:
    counter = Path(os.environ["TINY_COUNTER"])
    counter.write_text(str(int(counter.read_text()) + 1 if counter.exists() else 1))
    raise RuntimeError("boom: a bug in the stage")
if os.environ.get("TINY_FAIL_INPUT") == stage:
    print("error: missing input data/raw/corpus.parquet: run the upstream stage first", file=sys.stderr, flush=True)
    sys.exit(2)
ft = params.get("finetune", {})
rw, lora = float(ft.get("replay_weight", 0.0)), ft.get("method") == "lora"
fail = os.environ.get("TINY_FAIL_GATE") == stage or (stage == "c" and rw > 1)
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
if stage == "c":  # the "fine-tuned model": a copy of $TINY_MODEL (a saved classifier), or a stand-in
    import shutil
    shutil.rmtree("models/finetuned", ignore_errors=True)
    if os.environ.get("TINY_MODEL"):
        shutil.copytree(os.environ["TINY_MODEL"], "models/finetuned")
    else:
        Path("models/finetuned").mkdir(parents=True)
        Path("models/finetuned/README").write_text("no model")
Path("metrics").mkdir(exist_ok=True)
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
      - models/finetuned
      - reports/quality/c.json:
          cache: false
    metrics:
      - metrics/evaluate.json:
          cache: false
"""

ENV_VARS = ("TINY_SLOW", "TINY_FAIL_INFRA", "TINY_FAIL_GATE", "TINY_FAIL_INPUT", "TINY_INFRA_FAILS", "TINY_HANG",
            "TINY_CRASH", "TINY_PIDS", "TINY_MODEL")


def tiny_params(base: dict) -> dict:
    """`base` plus the keys the tiny dvc.yaml tracks."""
    base["finetune"] = (base.get("finetune") or {}) | {"replay_weight": 0.0, "method": "full"}
    return base


def write_tiny_dag(repo: Path) -> None:
    (repo / "step.py").write_text(STEP)
    (repo / "dvc.yaml").write_text(DVC_YAML)


def make_tiny_repo(dest: Path) -> Path:
    """A git + DVC repository with the three-stage DAG above and a schema-valid params.yaml."""
    dest.mkdir(parents=True, exist_ok=True)
    write_tiny_dag(dest)
    params = tiny_params(yaml.safe_load(MICRO.read_text()))  # the micro config plus the keys dvc.yaml names
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / ".gitignore").write_text("/reports/experiments/\n")
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"],
                [str(BIN / "dvc"), "config", "core.analytics", "false"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        run(cmd, dest)
    return dest


# --- reading a flow run back from the API ------------------------------------------------------


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


# --- a classifier small enough to build in a test -------------------------------------------------

WORDS = "the a cat dog sat on mat ran fast slow good bad film plot".split()


def save_tiny_classifier(dest: Path, n_layer: int = 2, n_embd: int = 32, seed: int = 0) -> Path:
    """A randomly initialized GPT-2 sequence classifier and its word-level tokenizer, saved as
    `models/finetuned` is (from_pretrained-loadable)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1} | {w: i + 2 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=n_embd, n_layer=n_layer, n_head=2,
                        num_labels=2, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    GPT2ForSequenceClassification(config).save_pretrained(dest)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(dest)
    return dest


def sentences(n: int = 32) -> list[str]:
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(6 + i % 5)) for i in range(n)]
