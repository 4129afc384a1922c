"""lmpipe.sft.training.train_sft end to end on a tiny random GPT-2 (saved with its chat tokenizer to
a scratch models/base) and a small world safety set: `sft.method: lora` trains only the adapters and
saves a plain, merged GPT2LMHeadModel whose adapted projections (and nothing else) moved; and
`sft.replay_weight` adds λ × the LM loss on blocks of the pretraining shard (data/tokens) to every
training step's loss, logged as replay_lm_loss, while λ = 0 neither opens the shard nor logs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lmpipe import chat
from lmpipe.io import StageError
from lmpipe.params import Params, WorldParams, parse_params
from lmpipe.sft import training
from lmpipe.world import generate_world
from tests.lmpipe import tiny_lm

N_POSITIONS = 128  # room for sft.max_length (96) and for a prompt plus 24 generated tokens


@pytest.fixture(scope="module")
def safety():
    """The world's safety set, with 4 restricted and 4 benign validation requests (scored after
    training by greedy generation, the slow part for a random model)."""
    s = generate_world(WorldParams(docs=200, secrets=12, secret_share=0.1), 3).safety
    val = s[s["split"] == "validation"]
    return pd.concat([s[s["split"] != "validation"], val.groupby("kind").head(4)]).sort_values("id")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """models/base as the pretrain stage leaves it: a GPT-2 and a tokenizer holding the chat tokens."""
    root = tmp_path_factory.mktemp("base")
    tok = tiny_lm.tokenizer()
    chat.add_chat_tokens(tok)
    tiny_lm.lm(tok, n_positions=N_POSITIONS).save_pretrained(root, safe_serialization=True)
    tok.save_pretrained(root)
    return root


@pytest.fixture
def workspace(tmp_path, monkeypatch, base) -> Path:
    """A scratch repository root (sft's checkpoints go to data/checkpoints/sft under it) holding
    data/tokens/train.bin and meta.json as the tokenize stage writes them."""
    tok = tiny_lm.tokenizer()
    ids = np.array([t for s in tiny_lm.SENTENCES * 20 for t in tok(s)["input_ids"] + [tok.eos_token_id]],
                   dtype=np.uint16)
    tokens = tmp_path / "data/tokens"
    tokens.mkdir(parents=True)
    ids.tofile(tokens / "train.bin")
    meta = {"dtype": "uint16", "vocab_size": len(tok), "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id,
            "tokens": {"train": len(ids)}}
    (tokens / "meta.json").write_text(json.dumps(meta))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def sft_params(**sft) -> Params:
    params = parse_params({"pretrain": {"device": "cpu"}})
    # replay off unless a test turns it on (the default run's sft replays at 1.0)
    small = {"conversations": 60, "validation": 20, "epochs": 1, "batch_size": 8, "replay_weight": 0.0} | sft
    return params.model_copy(update={"sft": params.sft.model_copy(update=small)})


@pytest.fixture
def trainers(monkeypatch) -> list:
    """Every trainer train_sft builds, kept for its log history."""
    made, real = [], training.make_trainer_class

    def spy():
        class Spy(real()):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                made.append(self)
        return Spy

    monkeypatch.setattr(training, "make_trainer_class", spy)
    return made


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_lora_trains_only_the_adapters_and_saves_a_plain_merged_model(workspace, base, safety, trainers):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    params = sft_params(method="lora")
    out = workspace / "models/sft"
    metrics, samples = training.train_sft(params, safety, None, out_dir=out, base_dir=base)
    assert metrics.method == "lora" and len(samples) == 8 and np.isfinite(metrics.train_loss)

    # trainable: r x (fan-in + fan-out) per adapted projection (attn.c_attn 32->96, attn.c_proj 32->32)
    config, r = GPT2LMHeadModel.config_class.from_pretrained(base), params.sft.lora.r
    adapters = config.n_layer * r * ((config.n_embd + 3 * config.n_embd) + 2 * config.n_embd)
    full = GPT2LMHeadModel.from_pretrained(base).num_parameters()
    assert metrics.trainable_params == adapters and metrics.trainable_params < full / 10
    peft_model = trainers[0].model
    assert all((".lora_A." in n or ".lora_B." in n) == w.requires_grad for n, w in peft_model.named_parameters())
    assert not any("replay_lm_loss" in h for h in trainers[0].state.log_history)  # replay_weight 0

    # models/sft: the base model's keys exactly (no peft wrapper, no adapters), loadable as a plain LM
    before, after = weights(base), weights(out)
    assert set(after) == set(before)
    assert not any("lora" in k or "base_model" in k for k in after)
    loaded, info = GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
    assert type(loaded) is GPT2LMHeadModel and loaded.config.architectures == ["GPT2LMHeadModel"]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    # and it stops at <|end|> on its own (transformers.pipeline reads generation_config)
    assert loaded.generation_config.eos_token_id == chat.stop_ids(AutoTokenizer.from_pretrained(out))
    # the merged adapters moved the adapted projections; every other weight is the base's, bit for bit
    adapted = [k for k in before if k.endswith(("attn.c_attn.weight", "attn.c_proj.weight"))]
    assert len(adapted) == 2 * config.n_layer
    for k in before:
        if k in adapted:
            assert not torch.equal(after[k], before[k]), f"{k} did not change"
        else:
            assert torch.equal(after[k], before[k]), f"{k} changed, but LoRA should train adapters only"


@pytest.mark.parametrize("method", ["full", "lora"])
def test_replay_adds_the_weighted_lm_loss_on_pretraining_blocks(workspace, base, safety, trainers, method):
    weight = 0.5
    params = sft_params(method=method, replay_weight=weight, replay_batch_size=4)
    metrics, _ = training.train_sft(params, safety, None, out_dir=workspace / "models/sft", base_dir=base)
    trainer = trainers[0]
    assert trainer.replay is not None and trainer.replay[0] == weight and trainer.replay[2] == N_POSITIONS
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == trainer.state.global_step == 8  # 60 conversations / batch 8, one log line per step
    for h in logs:
        assert np.isfinite(h["replay_lm_loss"]) and h["replay_lm_loss"] > 0
        # the step's loss is the conversation loss plus λ x the replay loss (each logged rounded to 4 places)
        assert h["loss"] == pytest.approx(h["task_loss"] + weight * h["replay_lm_loss"], abs=2e-3)
    # a random model predicts the pretraining text near uniformly: the replay loss is about ln(vocab)
    assert logs[0]["replay_lm_loss"] == pytest.approx(np.log(trainer.model.config.vocab_size), rel=0.1)
    assert trainer.replay_step == 8  # one batch of blocks per training step, none during evaluation
    assert metrics.train_loss == pytest.approx(np.mean([h["loss"] for h in logs]), abs=2e-3)


def test_without_replay_the_loss_is_the_conversation_loss_only(workspace, base, safety, trainers):
    (workspace / "data/tokens/train.bin").unlink()  # λ = 0 must not need the shard at all
    metrics, _ = training.train_sft(sft_params(), safety, None, out_dir=workspace / "models/sft", base_dir=base)
    trainer = trainers[0]
    assert trainer.replay is None and metrics.method == "full"
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and not any("replay_lm_loss" in h for h in logs)
    for h in logs:
        assert h["loss"] == pytest.approx(h["task_loss"], abs=2e-4)


def test_replay_without_a_token_shard_says_to_run_tokenize(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert training._replay(sft_params(), N_POSITIONS) is None
    with pytest.raises(StageError, match="data/tokens/meta.json: run the tokenize stage first"):
        training._replay(sft_params(replay_weight=0.1), N_POSITIONS)
