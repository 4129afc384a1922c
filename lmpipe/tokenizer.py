"""Byte-level BPE: training one, loading a pretrained one, encoding documents into flat shards.

Byte-level BPE (GPT-2's scheme, via the `tokenizers` library) can encode any string, so no text
is ever mapped to <unk>, and decode(encode(x)) == x exactly. Tokenizers are handled as
`PreTrainedTokenizerFast`, so `AutoTokenizer.from_pretrained("models/tokenizer")` and
`transformers.pipeline` load what the tokenize stage saves. Documents are joined with the eos
token into flat shards (uint16 below 65,536 ids, else uint32) that pretraining memory-maps.

Every tokenizer also carries the chat format's special tokens and template (lmpipe/chat.py), so
the sft and redteam stages use the very ids pretraining reserved: a trained BPE gets them among
its first ids, a pretrained one gets them appended.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from lmpipe.chat import CHAT_TOKENS, add_chat_tokens
from lmpipe.io import StageError
from lmpipe.params import TokenizeParams
from lmpipe.runtime import Progress

EOS = "<|endoftext|>"
PAD = "<|pad|>"


@contextlib.contextmanager
def rust_parallelism():
    """Let the Rust tokenizer use every core for training and batch encoding in this process.

    The Makefile and the test suite export TOKENIZERS_PARALLELISM=false so that processes which
    fork after tokenizing (DataLoader workers, Prefect, pytest) neither warn nor deadlock; the
    tokenize stage forks nothing while it tokenizes, so it turns parallelism on for that span only
    (the library reads the variable on every call) and restores the caller's setting afterwards."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def train_tokenizer(texts: list[str], p: TokenizeParams):
    """Train byte-level BPE on `texts`; return a PreTrainedTokenizerFast with eos/bos, pad and the
    chat tokens (all within `vocab_size`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=p.vocab_size,
        min_frequency=p.min_frequency,
        special_tokens=[EOS, PAD, *CHAT_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
        show_progress=False,
    )
    with rust_parallelism():
        tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD, model_max_length=1 << 30
    )
    add_chat_tokens(fast)
    return fast


def load_tokenizer(name_or_path: str, key: str = "tokenize.pretrained"):
    """A pretrained tokenizer instead of training one (a local path, or a hub name with a network),
    with eos, pad and the chat tokens added where it lacks them, and the chat template set. A path that does not hold one, or a name that
    cannot be fetched, is a StageError naming `key` and what was given."""
    from transformers import AutoTokenizer

    path = Path(name_or_path)
    if path.is_file():
        raise StageError(f"{key}: {name_or_path} is a file; give the directory a tokenizer was saved to")
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except Exception as err:  # transformers raises OSError, ValueError, hub errors...: one line for all
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200].rstrip(": ")
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        where = (f"{name_or_path} holds no loadable tokenizer" if path.exists() else
                 f"{name_or_path} is not a local path, and loading it as a hub name failed"
                 + (" (HF_HUB_OFFLINE=1: only local paths work)" if offline else ""))
        raise StageError(f"{key}: {where}: {detail}") from None
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": EOS})
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": PAD})
    add_chat_tokens(tok)
    return tok


def shard_dtype(vocab_size: int):
    """uint16 while every id (< vocab_size) fits below 65,536, else uint32: half the disk and
    page-cache footprint for every vocabulary up to GPT-2's."""
    return np.uint16 if vocab_size <= 65536 else np.uint32


def encode_docs(tokenizer, texts: list[str], batch_size: int, label: str) -> np.ndarray:
    """Encode documents in batches (the Rust tokenizer parallelizes each batch over cores), each
    followed by eos so the model sees document boundaries.

    `encode_batch_fast` skips the character offsets that `encode_batch` computes and we never
    use; `bench/tokenize_corpus.py` holds this function to >= 0.9x raw `encode_batch` on the same text."""
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
