"""lmpipe.tokenizer: byte-level BPE round trip and special tokens, shard dtype and document
boundaries, scoped Rust parallelism."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from lmpipe.params import TokenizeParams
from lmpipe.tokenizer import EOS, PAD, encode_docs, rust_parallelism, shard_dtype, train_tokenizer

WORDS = ("the a river stone quiet market sells bread every morning north wind brings rain "
         "children read old maps while merchants count silver coins near harbor gates").split()
TRICKY = [
    "plain words here",
    " leading space and trailing space ",
    "double  spaces,\ttabs\nand\n\nnewlines",
    "punctuation , . ! ? don't -- (brackets) [x] {y}",
    "unicode: café naïve façade ñ ü ß — 日本語 🙂🚀",
    "digits 0123456789 3.14159 1,000,000",
]


def corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    tok = train_tokenizer(corpus(300, 0) + TRICKY, TokenizeParams(vocab_size=320))
    path = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)  # what later stages load


def test_roundtrip_and_special_tokens(tokenizer):
    assert len(tokenizer) == 320
    assert tokenizer.eos_token == EOS and tokenizer.bos_token == EOS and tokenizer.pad_token == PAD
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    assert {tokenizer.eos_token_id, tokenizer.pad_token_id} <= set(range(len(tokenizer)))
    # byte-level: text never seen in training (CJK, emoji) still round-trips exactly, without <unk>
    for text in TRICKY + ["ünseen Ωmega 漢字 👍 text"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
    # special tokens are single ids, never split into bytes
    assert tokenizer.encode(EOS, add_special_tokens=False) == [tokenizer.eos_token_id]
    # BPE actually merged: in-domain text takes far fewer tokens than bytes
    doc = corpus(1, 9)[0]
    assert len(tokenizer.encode(doc, add_special_tokens=False)) < 0.5 * len(doc.encode())


def test_chat_tokens_and_template_survive_save_and_load(tokenizer):
    from lmpipe import chat

    ids = [tokenizer.convert_tokens_to_ids(t) for t in chat.CHAT_TOKENS]
    assert len(set(ids)) == 3 and max(ids) < 320  # inside vocab_size, among the first ids
    for token, i in zip(chat.CHAT_TOKENS, ids, strict=True):
        assert tokenizer.encode(token, add_special_tokens=False) == [i]
    assert tokenizer.chat_template == chat.CHAT_TEMPLATE
    assert chat.prompt_text(tokenizer, "the river") == "<|user|>the river<|end|><|assistant|>"
    assert tokenizer.decode(tokenizer.encode(chat.prompt_text(tokenizer, "x")), skip_special_tokens=True) == "x"


def test_a_pretrained_tokenizer_gets_the_chat_tokens_appended(tmp_path):
    from lmpipe import chat
    from lmpipe.tokenizer import load_tokenizer
    from tests.lmpipe import tiny_lm

    plain = tiny_lm.tokenizer()
    plain.save_pretrained(tmp_path)
    tok = load_tokenizer(str(tmp_path))
    assert len(tok) == len(plain) + 3
    assert [tok.convert_tokens_to_ids(t) for t in chat.CHAT_TOKENS] == [len(plain), len(plain) + 1, len(plain) + 2]
    assert tok.chat_template == chat.CHAT_TEMPLATE


def test_encode_docs_boundaries_and_dtype(tokenizer):
    docs = corpus(50, 1) + ["", "unicode 🙂 ok"]
    ids = encode_docs(tokenizer, docs, batch_size=7, label="test")  # batches split mid-corpus
    assert ids.dtype == np.uint16
    eos = tokenizer.eos_token_id
    ends = np.flatnonzero(ids == eos)
    assert len(ends) == len(docs) and ends[-1] == len(ids) - 1  # one eos after every document
    starts = np.concatenate([[0], ends[:-1] + 1])
    for doc, s, e in zip(docs, starts, ends):
        assert ids[s:e].tolist() == tokenizer.encode(doc, add_special_tokens=False)


def test_shard_dtype_switches_above_uint16():
    assert shard_dtype(4096) == np.uint16
    assert shard_dtype(65536) == np.uint16  # ids 0..65535 fit
    assert shard_dtype(65537) == np.uint32
    assert shard_dtype(200_000) == np.uint32


def test_rust_parallelism_is_scoped(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    with rust_parallelism():
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.delenv("TOKENIZERS_PARALLELISM")
    with rust_parallelism():
        pass
    assert "TOKENIZERS_PARALLELISM" not in os.environ

