"""Stage 3 — tokenize: train a byte-level BPE on the clean train split and encode the corpus.

Byte-level BPE (GPT-2's scheme, via the `tokenizers` library) can encode any string, so no text
is ever mapped to <unk>, and decode(encode(x)) == x exactly — the gate checks that on a sample.
The tokenizer is saved as a `PreTrainedTokenizerFast` so `AutoTokenizer.from_pretrained(
"models/tokenizer")` and `transformers.pipeline` load it. Documents are joined with the eos token
into flat `.bin` shards (uint16 below 65,536 ids, else uint32) that pretraining memory-maps.

(Named tokenize_corpus, not tokenize, so it never shadows the standard library's `tokenize`.)
"""

from __future__ import annotations

import random
from pathlib import Path

import great_expectations.expectations as gxe
import numpy as np

from stages.artifacts import Progress, atomic_path, read_parquet, run_stage, write_json
from stages.config import TokenizeParams, load_params
from stages.gates import Gate

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
    return np.uint16 if vocab_size <= 65536 else np.uint32


def encode_docs(tokenizer, texts: list[str], batch_size: int, label: str) -> np.ndarray:
    """Encode documents in batches (the Rust tokenizer parallelizes each batch over cores), each
    followed by eos so the model sees document boundaries."""
    eos = tokenizer.eos_token_id
    dtype = shard_dtype(len(tokenizer))
    backend = tokenizer.backend_tokenizer
    chunks, progress = [], Progress(f"tokenize {label}", len(texts))
    for start in range(0, len(texts), batch_size):
        batch = backend.encode_batch(texts[start:start + batch_size], add_special_tokens=False)
        ids = []
        for enc in batch:
            ids.extend(enc.ids)
            ids.append(eos)
        chunks.append(np.asarray(ids, dtype=dtype))
        progress.update(min(start + batch_size, len(texts)))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)


def main() -> None:
    params = load_params()
    p = params.tokenize
    train = read_parquet("data/clean/train.parquet", ["text"])["text"].tolist()
    validation = read_parquet("data/clean/validation.parquet", ["text"])["text"].tolist()

    if p.pretrained:
        tokenizer = load_tokenizer(p.pretrained)
    else:
        print(f"[tokenize] training byte-level BPE (vocab {p.vocab_size}) on {len(train)} docs", flush=True)
        tokenizer = train_tokenizer(train, p)
    with atomic_path(TOKENIZER_DIR) as tmp:
        tokenizer.save_pretrained(tmp)

    shards = {"train": encode_docs(tokenizer, train, p.batch_size, "train"),
              "validation": encode_docs(tokenizer, validation, p.batch_size, "validation")}
    for split, ids in shards.items():
        with atomic_path(TOKENS_DIR / f"{split}.bin") as tmp:
            ids.tofile(tmp)
    chars = {"train": sum(map(len, train)), "validation": sum(map(len, validation))}
    meta = {
        "dtype": np.dtype(shard_dtype(len(tokenizer))).name,
        "vocab_size": len(tokenizer),
        "eos_id": tokenizer.eos_token_id,
        "pad_id": tokenizer.pad_token_id,
        "tokens": {s: int(len(ids)) for s, ids in shards.items()},
        "docs": {"train": len(train), "validation": len(validation)},
    }
    write_json(TOKENS_DIR / "meta.json", meta)
    chars_per_token = chars["train"] / max(1, len(shards["train"]) - len(train))
    write_json("metrics/tokenize.json", {
        "vocab_size": len(tokenizer),
        "tokens": meta["tokens"],
        "chars_per_token": chars_per_token,
    })
    print(f"[tokenize] {meta['tokens']} tokens, {chars_per_token:.2f} chars/token", flush=True)

    # Gate: the tokenizer must be lossless and the shards usable by pretraining.
    import pandas as pd

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
        "train_blocks": len(shards["train"]) // (block + 1),
        "validation_blocks": len(shards["validation"]) // (block + 1),
    }
    gate = Gate("tokenize").table("roundtrip", roundtrip).scalars("shards", facts)
    gate.expect("roundtrip", gxe.ExpectColumnValuesToBeInSet(column="roundtrip_ok", value_set=[True]))
    gate.expect("shards", gxe.ExpectColumnValuesToBeBetween(column="max_id", max_value=len(tokenizer) - 1))
    gate.expect("shards", gxe.ExpectColumnValuesToBeInSet(column="has_eos", value_set=[True]))
    gate.expect("shards", gxe.ExpectColumnValuesToBeInSet(column="has_pad", value_set=[True]))
    gate.expect("shards", gxe.ExpectColumnValuesToBeBetween(
        column="chars_per_token", min_value=p.gate.min_chars_per_token, max_value=p.gate.max_chars_per_token))
    gate.expect("shards", gxe.ExpectColumnValuesToBeBetween(column="train_blocks", min_value=1))
    gate.expect("shards", gxe.ExpectColumnValuesToBeBetween(column="validation_blocks", min_value=1))
    gate.finish()


if __name__ == "__main__":
    run_stage(main)
