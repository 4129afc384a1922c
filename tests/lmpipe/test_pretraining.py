"""Pretraining library: loss goes down and beats the unigram baseline on a micro model, an
interrupted run (SIGTERM, or a crash after a periodic checkpoint) resumes to the same weights as an
uninterrupted one, 2-process DDP over gloo trains and only rank 0 writes, the MFU formula matches
a hand count, the lr schedule has its shape, and compiled training learns what eager learns.

Everything runs on tiny shards written here (2 layers, 32 dims, block 32, 20 steps)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pretraining_data import tiny_params, workspace, write_shards

from lmpipe.modeling import flops_per_token, sample_blocks
from lmpipe.pretraining.checkpoint import CKPT_DIR
from lmpipe.pretraining.loop import train
from lmpipe.pretraining.model import build_model, flop_params, mfu
from lmpipe.pretraining.optim import lr_at, total_steps

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """models/tokenizer and data/tokens (as the tokenize stage writes them) in a template dir."""
    return write_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    """One uninterrupted run, shared by the tests that compare against it."""
    root = workspace(shards, tmp_path_factory.mktemp("reference"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        out = train(tiny_params())
    return {"root": root, "out": out, "weights": load_weights(root / "models/base")}


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_loss_decreases_and_beats_unigram(reference):
    out, root = reference["out"], reference["root"]
    result, history = out.metrics.as_dict(), out.history
    losses = [h["train_loss"] for h in history if "train_loss" in h]
    assert len(losses) == 4 and losses[-1] < losses[0] - 1.0  # 20 steps, logged every 5
    assert all(math.isfinite(v) for v in losses)
    assert result["val_loss"] < result["unigram_loss"] - 0.3
    assert result["val_ppl"] == pytest.approx(math.exp(result["val_loss"]))
    for key in ("train_loss", "val_loss", "val_ppl", "val_bits_per_byte", "unigram_loss", "tokens_seen",
                "tokens_per_s", "mfu", "params", "wall_s"):  # the metrics contract (README)
        assert key in result
    assert result["tokens_seen"] == 20 * 8 * 32 and result["tokens_per_s"] > 0
    # a transformers-loadable model and tokenizer, and the dvclive curves dvc.yaml points at
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(root / "models/base")
    assert model.config.n_layer == 2 and model.num_parameters() == result["params"]
    assert AutoTokenizer.from_pretrained(root / "models/base").eos_token_id == model.config.eos_token_id
    curves = root / "plots/pretrain/plots/metrics"
    assert len((curves / "train_loss.tsv").read_text().splitlines()) == 1 + 4
    assert len((curves / "val_loss.tsv").read_text().splitlines()) == 1 + 2  # steps 10 and 20
    assert len((curves / "lr.tsv").read_text().splitlines()) == 1 + 4


def test_val_bits_per_byte_scores_the_whole_validation_split(reference):
    """The number lm-evaluation-harness would report for models/base on data/clean/validation:
    recomputed here from the saved model, and consistent with the sampled loss in nats/token."""
    import pandas as pd
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from lmpipe.bits_per_byte import bits_per_byte

    root, metrics = reference["root"], reference["out"].metrics
    texts = pd.read_parquet(root / "data/clean/validation.parquet")["text"].tolist()
    model = GPT2LMHeadModel.from_pretrained(root / "models/base")
    tokenizer = AutoTokenizer.from_pretrained(root / "models/base")
    again = bits_per_byte(model, tokenizer, texts, 32, 8, torch.device("cpu"))
    assert metrics.val_bits_per_byte == pytest.approx(again, rel=1e-6)
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in texts)
    nats_per_token = metrics.val_bits_per_byte * math.log(2) * sum(len(t.encode()) for t in texts) / tokens
    assert nats_per_token == pytest.approx(metrics.val_loss, rel=0.25)  # the same model, other windows


def assert_same_run(root: Path, reference) -> None:
    weights = load_weights(root / "models/base")
    for name, ref in reference["weights"].items():
        torch.testing.assert_close(weights[name], ref, rtol=0, atol=1e-6, msg=name)
    curves = root / "plots/pretrain/plots/metrics/train_loss.tsv"
    rows = curves.read_text().splitlines()[1:]
    ref_rows = (reference["root"] / "plots/pretrain/plots/metrics/train_loss.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[0] for r in rows] == ["5", "10", "15", "20"]  # no step logged twice
    for row, ref in zip(rows, ref_rows):  # and the same logged losses as the uninterrupted run
        assert float(row.split("\t")[1]) == pytest.approx(float(ref.split("\t")[1]), abs=1e-5)


def test_resume_after_sigterm_matches_uninterrupted(shards, reference, tmp_path, monkeypatch):
    monkeypatch.chdir(workspace(shards, tmp_path))

    def sigterm_at_7(done: int) -> None:
        if done == 7:
            os.kill(os.getpid(), signal.SIGTERM)  # the real signal path: handler sets the flag

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc:
        train(tiny_params(), on_step=sigterm_at_7)
    assert exc.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored
    progress = json.loads((CKPT_DIR / "progress.json").read_text())
    assert progress["step"] == 7 and progress["wall_s"] > 0
    assert not Path("models/base").exists()
    # wall_s counts both processes' training time: mark the first one's so it is recognizable
    (CKPT_DIR / "progress.json").write_text(json.dumps({**progress, "wall_s": 1000.0}))
    out = train(tiny_params())  # resumes from step 7
    assert 1000.0 < out.metrics.wall_s < 1000.0 + 120
    assert [h["step"] for h in out.history] == [h["step"] for h in reference["out"].history]
    assert out.metrics.val_loss == pytest.approx(reference["out"].metrics.val_loss, abs=1e-6)
    assert_same_run(tmp_path, reference)


def test_resume_after_crash_from_periodic_checkpoint(shards, reference, tmp_path, monkeypatch):
    monkeypatch.chdir(workspace(shards, tmp_path))

    def crash_at_13(done: int) -> None:
        if done == 13:  # like a SIGKILL: no handler runs; the last checkpoint is step 10
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train(tiny_params(), on_step=crash_at_13)
    assert json.loads((CKPT_DIR / "progress.json").read_text())["step"] == 10
    train(tiny_params())
    assert_same_run(tmp_path, reference)


def test_changed_config_does_not_resume(shards, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(workspace(shards, tmp_path))

    def crash_at_6(done: int) -> None:
        if done == 6:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        train(tiny_params(max_steps=12), on_step=crash_at_6)
    assert (CKPT_DIR / "progress.json").exists()
    out = train(tiny_params(max_steps=12, lr=0.005))
    assert "ignoring checkpoint from a different config" in capsys.readouterr().out
    assert out.history[0]["step"] == 5  # started over


def test_ddp_two_processes_over_gloo(shards, tmp_path):
    """The command `nproc: 2` runs (see above): both ranks train, only rank 0 writes."""
    workspace(shards, tmp_path)
    full = tiny_params(nproc=2, threads=2).model_dump(mode="json")  # a params file names every section
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(full))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LMPIPE_PARAMS")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "stages.pretrain"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "world=2, threads=1" in log
    assert log.count("[pretrain] step 20/20") == 1  # only rank 0 reports
    metrics = json.loads((tmp_path / "metrics/pretrain.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["tokens_seen"] == 20 * 8 * 32 * 2  # both ranks' batches count
    assert metrics["val_loss"] < metrics["unigram_loss"]
    assert (tmp_path / "models/base/model.safetensors").exists()
    assert json.loads((tmp_path / "reports/quality/pretrain.json").read_text())["success"]
    assert not (tmp_path / CKPT_DIR).exists()  # finished: checkpoint removed


def test_mfu_formula_against_hand_count(reference):
    p = tiny_params().pretrain
    meta = {"vocab_size": 300, "eos_id": 0, "pad_id": 1}
    model = build_model(p, meta)
    V, C, L, H, T = 300, 32, 2, 2, 32
    per_layer = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C + (C * 4 * C + 4 * C) + (4 * C * C + C)
    n_matmul = V * C + L * per_layer + 2 * C  # tied wte/lm_head once, final LayerNorm; no wpe
    assert flop_params(model) == n_matmul
    assert sum(t.numel() for t in model.parameters()) == n_matmul + T * C
    flops = 6 * n_matmul + 12 * L * H * (C // H) * T
    assert flops_per_token(n_matmul, L, H, C // H, T) == flops
    assert mfu(flops, 1000.0, 1e9) == pytest.approx(flops * 1000 / 1e9)
    result = reference["out"].metrics.as_dict()  # the run reports exactly this formula
    assert result["mfu"] == pytest.approx(flops * result["tokens_per_s"] / p.cpu_peak_flops)


def test_lr_schedule_shape():
    p = tiny_params(lr=1.0, warmup_steps=10, min_lr_ratio=0.1).pretrain
    total = 111  # decay spans steps 10..110: step 60 is half-way
    lrs = [lr_at(s, p, total) for s in range(total)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warmup
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # then never increases
    assert lrs[-1] == pytest.approx(0.1)  # reaches lr * min_lr_ratio at the last step
    assert lr_at(10 + 50, p, total) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[35] - lrs[36] < lrs[59] - lrs[60]  # cosine: decay is fastest mid-way


def test_token_budget_overrides_max_steps():
    p = tiny_params(max_tokens=10_000, max_steps=3).pretrain
    assert total_steps(p, world=1) == math.ceil(10_000 / (8 * 32))
    assert total_steps(p, world=2) == math.ceil(10_000 / (8 * 32 * 2))
    assert total_steps(tiny_params(max_steps=3).pretrain, world=2) == 3


def test_sample_blocks_contiguous_and_shifted():
    data = np.arange(1000, dtype=np.uint16)
    x, y = sample_blocks(data, 32, 4, np.random.default_rng(0))
    assert x.dtype == y.dtype == torch.int64 and x.is_contiguous() and y.is_contiguous()
    assert x.shape == y.shape == (4, 32)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    x2, _ = sample_blocks(data, 32, 4, np.random.default_rng(0))
    assert torch.equal(x, x2)  # same rng seed, same windows (the basis of resumable data order)


def test_compiled_loss_trains_like_eager(shards, reference, tmp_path, monkeypatch):
    """`compile: true` (model and loss compiled as one graph, LMLoss) learns what eager learns:
    the same logged losses up to kernel rounding, over the same 20 steps."""
    monkeypatch.chdir(workspace(shards, tmp_path))
    out = train(tiny_params(compile=True))
    got = [h["train_loss"] for h in out.history if "train_loss" in h]
    ref = [h["train_loss"] for h in reference["out"].history if "train_loss" in h]
    assert got == pytest.approx(ref, abs=2e-3)
    assert out.metrics.val_loss == pytest.approx(reference["out"].metrics.val_loss, abs=2e-3)


# --- the CUDA path: skipped where there is no GPU (CI has none); run on a GPU machine with
# `pytest tests/lmpipe/test_pretraining.py -k cuda` ---------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def sigterm_at(step: int):
    def on_step(done: int) -> None:
        if done == step:
            os.kill(os.getpid(), signal.SIGTERM)
    return on_step


@cuda
def test_cuda_bf16_trains_resumes_and_saves(shards, tmp_path, monkeypatch):
    """device auto -> cuda with bf16 autocast, pinned batches and the CUDA RNG in the checkpoint:
    it learns, an interrupted run resumes to what an uninterrupted one reaches (bf16 kernels may
    round differently run to run, hence loose tolerances), and the saved model loads on the CPU."""
    monkeypatch.chdir(workspace(shards, tmp_path / "whole"))
    whole = train(tiny_params(device="auto"))
    result = whole.metrics.as_dict()
    losses = [h["train_loss"] for h in whole.history if "train_loss" in h]
    assert result["device"] == "cuda" and losses[-1] < losses[0] - 1.0
    assert result["val_loss"] < result["unigram_loss"] - 0.3 and 0 < result["mfu"] < 1

    monkeypatch.chdir(workspace(shards, tmp_path / "resumed"))
    with pytest.raises(SystemExit):
        train(tiny_params(device="auto"), on_step=sigterm_at(7))
    assert "rng_cuda" in torch.load(CKPT_DIR / "state.pt", weights_only=True)
    resumed = train(tiny_params(device="auto"))
    assert resumed.metrics.val_loss == pytest.approx(result["val_loss"], abs=0.03)
    expected = load_weights(tmp_path / "whole/models/base")
    for name, tensor in load_weights(tmp_path / "resumed/models/base").items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=3e-2, msg=name)
    from transformers import GPT2LMHeadModel

    assert GPT2LMHeadModel.from_pretrained(tmp_path / "resumed/models/base").device.type == "cpu"


@cuda
def test_cuda_compiled_loss_trains_like_eager(shards, tmp_path, monkeypatch):
    monkeypatch.chdir(workspace(shards, tmp_path / "eager"))
    eager = [h["train_loss"] for h in train(tiny_params(device="cuda")).history if "train_loss" in h]
    monkeypatch.chdir(workspace(shards, tmp_path / "compiled"))
    compiled = [h["train_loss"] for h in train(tiny_params(device="cuda", compile=True)).history
                if "train_loss" in h]
    assert compiled == pytest.approx(eager, abs=0.05)
