"""Tokenize stage: byte-level BPE round trip and special tokens, train-split-only training,
shard dtype and document boundaries, and the data-quality gate (real GX, tiny corpus)."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pandas as pd
import pytest
import yaml

from lmpipe.params import TokenizeParams
from stages.tokenize_corpus import EOS, PAD, encode_docs, rust_parallelism, shard_dtype, train_tokenizer

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


def write_stage_inputs(root, train: list[str], validation: list[str], tokenize: dict | None = None):
    (root / "data/clean").mkdir(parents=True)
    pd.DataFrame({"text": train}).to_parquet(root / "data/clean/train.parquet")
    pd.DataFrame({"text": validation}).to_parquet(root / "data/clean/validation.parquet")
    params = {"tokenize": {"vocab_size": 320, **(tokenize or {})},
              "pretrain": {"model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32}},
              "finetune": {"max_length": 32}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def test_stage_end_to_end(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from stages import tokenize_corpus

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LMPIPE_PARAMS", raising=False)
    train = corpus(400, 2)
    # a word frequent only in validation: a tokenizer trained on train must not have learned it
    validation = corpus(40, 3) + ["zyxwvq zyxwvq zyxwvq zyxwvq."] * 200
    write_stage_inputs(tmp_path, train, validation)
    tokenize_corpus.main()

    tok = AutoTokenizer.from_pretrained("models/tokenizer")
    assert len(tok.encode("zyxwvq", add_special_tokens=False)) > 1
    meta = json.loads((tmp_path / "data/tokens/meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == len(tok) == 320
    assert (meta["eos_id"], meta["pad_id"]) == (tok.eos_token_id, tok.pad_token_id)
    for split, docs in (("train", train), ("validation", validation)):
        ids = np.fromfile(tmp_path / f"data/tokens/{split}.bin", dtype=np.uint16)
        assert len(ids) == meta["tokens"][split]
        assert (ids == tok.eos_token_id).sum() == len(docs) == meta["docs"][split]
        assert ids.max() < len(tok)
    first = tok.encode(train[0], add_special_tokens=False)
    shard = np.fromfile(tmp_path / "data/tokens/train.bin", dtype=np.uint16)
    assert shard[:len(first) + 1].tolist() == first + [tok.eos_token_id]
    content_tokens = meta["tokens"]["train"] - len(train)
    assert meta["chars_per_token"] == pytest.approx(sum(map(len, train)) / content_tokens, rel=1e-5)
    metrics = json.loads((tmp_path / "metrics/tokenize.json").read_text())
    assert metrics["chars_per_token"] == pytest.approx(meta["chars_per_token"], rel=1e-5)
    report = json.loads((tmp_path / "reports/quality/tokenize.json").read_text())
    assert report["success"] and report["evaluated"] >= 7


def test_gate_fails_on_out_of_bounds_chars_per_token(tmp_path, monkeypatch, capsys):
    from stages import tokenize_corpus

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LMPIPE_PARAMS", raising=False)
    # ~3+ chars per token on this corpus; a ceiling of 1.6 must stop the stage
    write_stage_inputs(tmp_path, corpus(200, 4), corpus(20, 5),
                       {"gate": {"min_chars_per_token": 1.5, "max_chars_per_token": 1.6}})
    with pytest.raises(SystemExit) as exc:
        tokenize_corpus.main()
    assert exc.value.code == 1
    report = json.loads((tmp_path / "reports/quality/tokenize.json").read_text())
    failed = [r for r in report["expectations"] if not r["success"]]
    assert [r["kwargs"].get("column") for r in failed] == ["chars_per_token"]
    assert "DATA GATE FAILED" in capsys.readouterr().err


def test_pretrained_tokenizer_by_path_gets_a_pad_token(tokenizer, tmp_path, monkeypatch):
    """`tokenize.pretrained: <path>` uses that tokenizer instead of training one; one without a
    pad token (GPT-2's own has none) gets `<|pad|>` added, and the shards use its ids."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from stages import tokenize_corpus

    no_pad = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token=EOS)  # no pad_token
    no_pad.save_pretrained(tmp_path / "gpt2like")
    assert AutoTokenizer.from_pretrained(tmp_path / "gpt2like").pad_token is None
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LMPIPE_PARAMS", raising=False)
    write_stage_inputs(tmp_path, corpus(100, 6), corpus(20, 7),
                       {"vocab_size": 1000, "pretrained": str(tmp_path / "gpt2like")})
    tokenize_corpus.main()
    meta = json.loads((tmp_path / "data/tokens/meta.json").read_text())
    saved = AutoTokenizer.from_pretrained("models/tokenizer")
    assert meta["vocab_size"] == len(saved) == len(tokenizer)  # not retrained to 1000
    assert saved.pad_token is not None and meta["pad_id"] == saved.pad_token_id
    assert saved.encode("the river", add_special_tokens=False) == tokenizer.encode("the river", add_special_tokens=False)
