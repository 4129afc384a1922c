"""Tiny pretraining inputs shared by the pretraining tests: a toy language with strong context,
its tokenizer and shards (as the tokenize stage writes them), and a 2-layer, 32-wide config."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np

from lmpipe.params import TokenizeParams, parse_params
from lmpipe.tokenizer import encode_docs, shard_dtype, train_tokenizer

TINY = {
    "seed": 3,
    "pretrain": {
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
        "device": "cpu", "threads": 1, "batch_size": 8, "max_steps": 20, "warmup_steps": 4,
        "lr": 0.01, "eval_every": 10, "eval_batches": 2, "checkpoint_every": 5, "log_every": 5,
    },
    "finetune": {"max_length": 32},
}


def tiny_raw(**pretrain) -> dict:
    raw = json.loads(json.dumps(TINY))
    raw["pretrain"].update(pretrain)
    return raw


def tiny_params(**pretrain):
    return parse_params(tiny_raw(**pretrain))


def sentences(n: int, seed: int) -> list[str]:
    """Subject -> verb -> object agreement: something a 2-layer model can learn in 20 steps."""
    rng = random.Random(seed)
    frames = [("the cat", "chases", "a mouse"), ("my dog", "fetches", "the ball"),
              ("a bird", "sings", "at dawn"), ("the farmer", "plants", "green seeds")]
    return [" ".join(" ".join(rng.choice(frames)) + "." for _ in range(rng.randint(2, 6))) for _ in range(n)]


def write_shards(root: Path) -> Path:
    """models/tokenizer, data/tokens and data/clean/validation.parquet under `root`."""
    import pandas as pd

    train_docs, val_docs = sentences(400, 0), sentences(60, 1)
    tok = train_tokenizer(train_docs, TokenizeParams(vocab_size=300))
    tok.save_pretrained(root / "models/tokenizer")
    (root / "data/tokens").mkdir(parents=True)
    tokens = {}
    for split, docs in (("train", train_docs), ("validation", val_docs)):
        ids = encode_docs(tok, docs, 100, split)
        ids.tofile(root / f"data/tokens/{split}.bin")
        tokens[split] = len(ids)
    meta = {"dtype": np.dtype(shard_dtype(len(tok))).name, "vocab_size": len(tok),
            "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id, "tokens": tokens}
    (root / "data/tokens/meta.json").write_text(json.dumps(meta))
    (root / "data/clean").mkdir(parents=True)
    pd.DataFrame({"text": val_docs}).to_parquet(root / "data/clean/validation.parquet")
    return root


def workspace(shards: Path, dest: Path) -> Path:
    """A fresh working directory holding a copy of the shards."""
    for sub in ("models/tokenizer", "data/tokens", "data/clean"):
        shutil.copytree(shards / sub, dest / sub)
    return dest
