"""Stage 3 — tokenize: train a byte-level BPE on the clean train split and encode the corpus.

Byte-level BPE (GPT-2's scheme, via the `tokenizers` library) can encode any string, so no text
is ever mapped to <unk>, and decode(encode(x)) == x exactly — the gate checks that on a sample.
The tokenizer is saved as a `PreTrainedTokenizerFast` so `AutoTokenizer.from_pretrained(
"models/tokenizer")` and `transformers.pipeline` load it. Documents are joined with the eos token
into flat `.bin` shards (uint16 below 65,536 ids, else uint32) that pretraining memory-maps.

(Named tokenize_corpus, not tokenize, so it never shadows the standard library's `tokenize`.)
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import numpy as np

from lmpipe.gates import Gate
from lmpipe.io import StageError, atomic_path, read_parquet, run_stage, write_json
from lmpipe.params import TokenizeParams, load_params
from lmpipe.runtime import Progress

EOS = "<|endoftext|>"
PAD = "<|pad|>"
TOKENIZER_DIR = Path("models/tokenizer")
TOKENS_DIR = Path("data/tokens")


def train_tokenizer(texts: list[str], p: TokenizeParams):
    """Train byte-level BPE on `texts`; return a PreTrainedTokenizerFast with eos/bos and pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=p.vocab_size,
        min_frequency=p.min_frequency,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
        show_progress=False,
    )
    with rust_parallelism():
        tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD, model_max_length=1 << 30
    )


def load_tokenizer(name_or_path: str):
    """A pretrained tokenizer instead of training one (a local path, or a hub name with a network)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": EOS})
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": PAD})
    return tok


def shard_dtype(vocab_size: int):
    """uint16 while every id (< vocab_size) fits below 65,536, else uint32: half the disk and
    page-cache footprint for every vocabulary up to GPT-2's."""
    return np.uint16 if vocab_size <= 65536 else np.uint32


@contextlib.contextmanager
def rust_parallelism():
    """Let the Rust tokenizer use every core for training and batch encoding in this process.

    The Makefile and the test suite export TOKENIZERS_PARALLELISM=false so that processes which
    fork after tokenizing (DataLoader workers, Prefect, pytest) neither warn nor deadlock; this
    stage forks nothing while it tokenizes, so it turns parallelism on for that span only (the
    library reads the variable on every call) and restores the caller's setting afterwards."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def encode_docs(tokenizer, texts: list[str], batch_size: int, label: str) -> np.ndarray:
    """Encode documents in batches (the Rust tokenizer parallelizes each batch over cores), each
    followed by eos so the model sees document boundaries.

    `encode_batch_fast` skips the character offsets that `encode_batch` computes and we never
    use; `bench/tokenize.py` holds this function to >= 0.9x raw `encode_batch` on the same text."""
    eos = tokenizer.eos_token_id
    dtype = shard_dtype(len(tokenizer))
    backend = tokenizer.backend_tokenizer
    chunks, progress = [], Progress(f"tokenize {label}", len(texts))
    with rust_parallelism():
        for start in range(0, len(texts), batch_size):
            ids: list[int] = []
            for enc in backend.encode_batch_fast(texts[start:start + batch_size], add_special_tokens=False):
                ids += enc.ids
                ids.append(eos)
            chunks.append(np.array(ids, dtype=dtype))
            progress.update(min(start + batch_size, len(texts)))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)


def main() -> None:
    from transformers import AutoTokenizer

    params = load_params()
    p = params.tokenize
    train = read_parquet("data/clean/train.parquet", ["text"])["text"].tolist()
    validation = read_parquet("data/clean/validation.parquet", ["text"])["text"].tolist()
    if not train or not validation:
        raise StageError(f"empty clean split (train {len(train)}, validation {len(validation)} docs)")

    if p.pretrained:
        tokenizer = load_tokenizer(p.pretrained)
    else:  # trained on the train split only: validation stays unseen, like the model's
        print(f"[tokenize] training byte-level BPE (vocab {p.vocab_size}) on {len(train)} docs", flush=True)
        tokenizer = train_tokenizer(train, p)
    with atomic_path(TOKENIZER_DIR) as tmp:
        tokenizer.save_pretrained(tmp)
    # Encode and gate with the tokenizer as saved: what every later stage will load.
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)

    shards = {"train": encode_docs(tokenizer, train, p.batch_size, "train"),
              "validation": encode_docs(tokenizer, validation, p.batch_size, "validation")}
    for split, ids in shards.items():
        with atomic_path(TOKENS_DIR / f"{split}.bin") as tmp:
            ids.tofile(tmp)
    docs = {"train": len(train), "validation": len(validation)}
    chars = {"train": sum(map(len, train)), "validation": sum(map(len, validation))}
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
    write_json(TOKENS_DIR / "meta.json", meta)
    write_json("metrics/tokenize.json", {
        "vocab_size": len(tokenizer),
        "tokens": meta["tokens"],
        "chars_per_token": chars_per_token,
    })
    print(f"[tokenize] {meta['tokens']} tokens, {chars_per_token:.2f} chars/token", flush=True)
    gate(tokenizer, shards, validation, chars_per_token, params)


def gate(tokenizer, shards: dict[str, np.ndarray], validation: list[str], chars_per_token: float,
         params) -> None:
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
    for split in ("train", "validation"):
        g.expect("shards", gxe.ExpectColumnValuesToBeBetween(
            column=f"{split}_tokens", min_value=block + 2))
    g.finish()


if __name__ == "__main__":
    run_stage(main)
