"""The tokenize stage: train-split-only training, shards and meta as pretraining reads them, the
data-quality gate (real GX, tiny corpus), a pretrained tokenizer by path, and its input errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import yaml

from lmpipe.io import StageError
from lmpipe.params import parse_params
from lmpipe.tokenizer import EOS, train_tokenizer

WORDS = ("the a river stone quiet market sells bread every morning north wind brings rain "
         "children read old maps while merchants count silver coins near harbor gates").split()


def corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) + "." for _ in range(n)]


def write_stage_inputs(root, train: list[str], validation: list[str], tokenize: dict | None = None):
    (root / "data/clean").mkdir(parents=True)
    pd.DataFrame({"text": train}).to_parquet(root / "data/clean/train.parquet")
    pd.DataFrame({"text": validation}).to_parquet(root / "data/clean/validation.parquet")
    params = {"tokenize": {"vocab_size": 320, **(tokenize or {})},
              "pretrain": {"model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32}},
              "finetune": {"max_length": 32}}
    full = parse_params(params).model_dump(mode="json")  # a params file names every section
    (root / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))


@pytest.fixture
def stage(tmp_path, monkeypatch):
    from stages import tokenize_corpus

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LMPIPE_PARAMS", raising=False)
    return tokenize_corpus


def test_stage_end_to_end(tmp_path, stage):
    from transformers import AutoTokenizer

    train = corpus(400, 2)
    # a word frequent only in validation: a tokenizer trained on train must not have learned it
    validation = corpus(40, 3) + ["zyxwvq zyxwvq zyxwvq zyxwvq."] * 200
    write_stage_inputs(tmp_path, train, validation)
    stage.main()

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


def test_gate_fails_on_out_of_bounds_chars_per_token(tmp_path, stage, capsys):
    # ~3+ chars per token on this corpus; a ceiling of 1.6 must stop the stage
    write_stage_inputs(tmp_path, corpus(200, 4), corpus(20, 5),
                       {"gate": {"min_chars_per_token": 1.5, "max_chars_per_token": 1.6}})
    with pytest.raises(SystemExit) as exc:
        stage.main()
    assert exc.value.code == 1
    report = json.loads((tmp_path / "reports/quality/tokenize.json").read_text())
    failed = [r for r in report["expectations"] if not r["success"]]
    assert [r["kwargs"].get("column") for r in failed] == ["chars_per_token"]
    assert "DATA GATE FAILED" in capsys.readouterr().err


def test_pretrained_tokenizer_by_path_gets_a_pad_token(tmp_path, stage):
    """`tokenize.pretrained: <path>` uses that tokenizer instead of training one; one without a
    pad token (GPT-2's own has none) gets `<|pad|>` added, and the shards use its ids."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    trained = train_tokenizer(corpus(300, 0), parse_params({"tokenize": {"vocab_size": 320}}).tokenize)
    no_pad = PreTrainedTokenizerFast(tokenizer_object=trained.backend_tokenizer, eos_token=EOS)  # no pad_token
    no_pad.save_pretrained(tmp_path / "gpt2like")
    assert AutoTokenizer.from_pretrained(tmp_path / "gpt2like").pad_token is None
    write_stage_inputs(tmp_path, corpus(100, 6), corpus(20, 7),
                       {"vocab_size": 1000, "pretrained": str(tmp_path / "gpt2like")})
    stage.main()
    meta = json.loads((tmp_path / "data/tokens/meta.json").read_text())
    saved = AutoTokenizer.from_pretrained("models/tokenizer")
    assert meta["vocab_size"] == len(saved) == len(trained)  # not retrained to 1000
    assert saved.pad_token is not None and meta["pad_id"] == saved.pad_token_id
    assert saved.encode("the river", add_special_tokens=False) == trained.encode("the river", add_special_tokens=False)


@pytest.mark.parametrize(("setup", "needles"), [
    # a pretrained tokenizer that cannot be loaded fails before the clean splits are even read
    (lambda root: {"pretrained": "models/nope"}, ("tokenize.pretrained", "models/nope", "not a local path")),
    (lambda root: (root / "tok.json").write_text("{}") and {"pretrained": "tok.json"}, ("tok.json", "is a file")),
    (lambda root: (root / "emptydir").mkdir() or {"pretrained": "emptydir"}, ("emptydir", "no loadable tokenizer")),
])
def test_unloadable_pretrained_tokenizer_is_one_line_before_any_work(tmp_path, stage, setup, needles):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        parse_params({"tokenize": setup(tmp_path)}).model_dump(mode="json"), sort_keys=False))
    with pytest.raises(StageError) as err:
        stage.main()  # no data/clean exists: the error must be about the tokenizer, not the inputs
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in needles), message
    assert not (tmp_path / "models").exists() and not (tmp_path / "data").exists()


def test_an_empty_clean_split_names_its_file(tmp_path, stage):
    write_stage_inputs(tmp_path, corpus(50, 1), [])
    with pytest.raises(StageError, match=r"data/clean/validation.parquet has no documents"):
        stage.main()
    assert not (tmp_path / "models").exists()
