"""Stage 3 — tokenize: train a byte-level BPE on the clean train split and encode the corpus.

The tokenizer is trained on the train split only (validation stays unseen, like the model's), or
`tokenize.pretrained` names one to use instead; it is saved to models/tokenizer and the shards
are encoded with the tokenizer as saved, which is what every later stage loads (`tokenize.engine:
ray` encodes them on Ray tasks, lmpipe.cleaning.ray_session, into the same shards). Outputs:
models/tokenizer, data/tokens/{train,validation}.bin and meta.json, metrics/tokenize.json; then
the tokenize gate (lossless round trip, special tokens, ids in range, shards long enough).

(Named tokenize_corpus, not tokenize, so it never shadows the standard library's `tokenize`.)
"""

from __future__ import annotations

import os
import random

import numpy as np

from lmpipe import paths
from lmpipe.gates import Gate
from lmpipe.io import StageError, atomic_path, read_parquet, run_stage, write_json
from lmpipe.outputs import check_writable
from lmpipe.params import Params, load_params
from lmpipe.tokenizer import encode_docs, load_tokenizer, shard_dtype, train_tokenizer

SPLITS = ("train", "validation")


def read_splits() -> dict[str, list[str]]:
    texts = {s: read_parquet(paths.CLEAN / f"{s}.parquet", ["text"])["text"].tolist() for s in SPLITS}
    for split, docs in texts.items():
        if not docs:
            raise StageError(f"{paths.CLEAN / f'{split}.parquet'} has no documents: the clean stage kept none"
                             f" for it (see {paths.metrics_file('clean')})")
    return texts


def saved_tokenizer(train: list[str], params: Params, pretrained=None):
    """Save `pretrained`, or train one on `train`; return it as reloaded from disk."""
    from transformers import AutoTokenizer

    p = params.tokenize
    tokenizer = pretrained
    if tokenizer is None:
        print(f"[tokenize] training byte-level BPE (vocab {p.vocab_size}) on {len(train)} docs", flush=True)
        tokenizer = train_tokenizer(train, p)
    with atomic_path(paths.TOKENIZER) as tmp:
        tokenizer.save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(paths.TOKENIZER)


def encode_splits(tokenizer, texts: dict[str, list[str]], params: Params) -> dict[str, np.ndarray]:
    """Each split encoded into one shard, by this process (engine local) or by Ray tasks."""
    p = params.tokenize
    if p.engine == "local":
        return {s: encode_docs(tokenizer, t, p.batch_size, s) for s, t in texts.items()}
    from lmpipe.cleaning.ray_session import encode_docs_ray, ray_session

    with ray_session(p.ray_address, os.cpu_count() or 1, "tokenize"):
        return {s: encode_docs_ray(tokenizer, t, p.batch_size, s, shard_dtype(len(tokenizer))) for s, t in texts.items()}


def write_shards(tokenizer, texts: dict[str, list[str]], shards: dict[str, np.ndarray]) -> dict:
    """The shards, data/tokens/meta.json (what pretraining reads) and metrics/tokenize.json."""
    for split, ids in shards.items():
        with atomic_path(paths.TOKENS / f"{split}.bin") as tmp:
            ids.tofile(tmp)
    docs = {s: len(t) for s, t in texts.items()}
    chars = {s: sum(map(len, t)) for s, t in texts.items()}
    # eos separators are not text: chars per token counts content tokens only
    chars_per_token = chars["train"] / max(1, len(shards["train"]) - docs["train"])
    meta = {
        "dtype": np.dtype(shard_dtype(len(tokenizer))).name,
        "vocab_size": len(tokenizer),
        "eos_id": tokenizer.eos_token_id,
        "pad_id": tokenizer.pad_token_id,
        "tokens": {s: int(len(ids)) for s, ids in shards.items()},
        "docs": docs,
        "chars": chars,
        "chars_per_token": chars_per_token,
    }
    write_json(paths.TOKENS / "meta.json", meta)
    write_json(paths.metrics_file("tokenize"), {
        "vocab_size": len(tokenizer),
        "tokens": meta["tokens"],
        "chars_per_token": chars_per_token,
    })
    return meta


def gate(tokenizer, shards: dict[str, np.ndarray], validation: list[str], chars_per_token: float,
         params: Params) -> None:
    """The tokenizer must be lossless and the shards usable by pretraining."""
    import great_expectations.expectations as gxe
    import pandas as pd

    p = params.tokenize
    rng = random.Random(params.seed)
    sample = rng.sample(validation, min(p.gate.roundtrip_sample, len(validation)))
    roundtrip = pd.DataFrame({
        "text": sample,
        "roundtrip_ok": [tokenizer.decode(tokenizer.encode(t, add_special_tokens=False)) == t for t in sample],
    })
    block = params.pretrain.model.block_size
    facts = {
        "max_id": int(max(ids.max(initial=0) for ids in shards.values())),
        "has_eos": tokenizer.eos_token_id is not None,
        "has_pad": tokenizer.pad_token_id is not None,
        "chars_per_token": chars_per_token,
        # sample_blocks draws windows of block_size + 1 tokens from a shard longer than that
        "train_tokens": len(shards["train"]),
        "validation_tokens": len(shards["validation"]),
    }
    g = Gate("tokenize").table("roundtrip", roundtrip).scalars("shards", facts)
    g.expect("roundtrip", gxe.ExpectColumnValuesToBeInSet(column="roundtrip_ok", value_set=[True]))
    g.expect("shards", gxe.ExpectColumnValuesToBeBetween(column="max_id", max_value=len(tokenizer) - 1))
    g.expect("shards", gxe.ExpectColumnValuesToBeInSet(column="has_eos", value_set=[True]))
    g.expect("shards", gxe.ExpectColumnValuesToBeInSet(column="has_pad", value_set=[True]))
    g.expect("shards", gxe.ExpectColumnValuesToBeBetween(
        column="chars_per_token", min_value=p.gate.min_chars_per_token, max_value=p.gate.max_chars_per_token))
    for split in SPLITS:
        g.expect("shards", gxe.ExpectColumnValuesToBeBetween(
            column=f"{split}_tokens", min_value=block + 2))
    g.finish()


def main() -> None:
    params = load_params()
    check_writable(dirs=[paths.TOKENIZER, paths.TOKENS], files=[paths.metrics_file("tokenize"), paths.quality_file("tokenize")])  # before any work: a file where a folder goes fails now, not at the end
    # a pretrained tokenizer that cannot be loaded fails before any input is read
    pretrained = load_tokenizer(params.tokenize.pretrained) if params.tokenize.pretrained else None
    texts = read_splits()
    tokenizer = saved_tokenizer(texts["train"], params, pretrained)
    shards = encode_splits(tokenizer, texts, params)
    meta = write_shards(tokenizer, texts, shards)
    print(f"[tokenize] {meta['tokens']} tokens, {meta['chars_per_token']:.2f} chars/token", flush=True)
    gate(tokenizer, shards, texts["validation"], meta["chars_per_token"], params)


if __name__ == "__main__":
    run_stage(main)
