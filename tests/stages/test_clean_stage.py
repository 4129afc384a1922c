"""The clean stage: outputs, metrics and dropped samples as the library reports them, the gate
(real GX) passing on a world corpus and failing on a corpus a filter guts, and a missing input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from lmpipe.cleaning.filters import FILTER_ORDER
from lmpipe.cleaning.streaming import clean_parquet
from lmpipe.io import StageError
from lmpipe.params import WorldParams, parse_params
from lmpipe.world import generate_world


def write_params(root, clean: dict) -> None:
    full = parse_params({"clean": {"num_proc": 1, **clean}}).model_dump(mode="json")
    (root / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))


def write_corpus(root, corpus: pd.DataFrame) -> None:
    (root / "data/raw").mkdir(parents=True)
    corpus.to_parquet(root / "data/raw/corpus.parquet", index=False)


@pytest.fixture
def stage(tmp_path, monkeypatch):
    from stages import clean

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LMPIPE_PARAMS", raising=False)
    return clean


def test_stage_end_to_end(tmp_path, stage):
    corpus = generate_world(WorldParams(docs=800), seed=4).corpus
    write_corpus(tmp_path, corpus)
    write_params(tmp_path, {})
    stage.main()

    metrics = json.loads((tmp_path / "metrics/clean.json").read_text())
    p = parse_params({"clean": {"num_proc": 1}})
    direct = clean_parquet(tmp_path / "data/raw/corpus.parquet", tmp_path / "direct", p.clean, p.seed)
    assert {k: v for k, v in metrics.items() if k != "ground_truth"} == direct.stats
    truth = metrics["ground_truth"]
    assert truth.keys() == direct.ground_truth.keys() and truth["clean_survival"] >= 0.98
    for kind, scores in direct.ground_truth.items():
        assert truth[kind] == (pytest.approx(scores) if isinstance(scores, float) else
                               {k: pytest.approx(v) for k, v in scores.items()}), kind
    kept = pd.concat([pd.read_parquet(tmp_path / f"data/clean/{s}.parquet") for s in ("train", "validation")])
    assert len(kept) == metrics["docs_out"] < metrics["docs_in"] == len(corpus)
    assert sorted(p.name for p in (tmp_path / "reports/dropped").iterdir()) == sorted(
        f"{name}.parquet" for name in FILTER_ORDER)
    assert len(pd.read_parquet(tmp_path / "reports/dropped/exact_dup.parquet")) > 0
    gate = json.loads((tmp_path / "reports/quality/clean.json").read_text())
    assert gate["success"] and gate["evaluated"] > 0


def test_gate_fails_when_a_filter_drops_too_much(tmp_path, stage, capsys):
    words = "the river town market bread morning wind rain children maps".split()
    docs = [" ".join(words[(i + k) % len(words)] for k in range(5 + i % 3)) + f" {i}." for i in range(40)]
    write_corpus(tmp_path, pd.DataFrame({"id": [f"d{i}" for i in range(40)], "text": docs, "source": "test",
                                         "domain": "web"}))
    write_params(tmp_path, {"max_drop_share": 0.5})
    with pytest.raises(SystemExit) as err:
        stage.main()
    assert err.value.code == 1
    assert "drop_length" in capsys.readouterr().err  # every document is below min_words
    assert not json.loads((tmp_path / "reports/quality/clean.json").read_text())["success"]


def test_missing_corpus_is_a_clear_error(tmp_path, stage):
    write_params(tmp_path, {})
    with pytest.raises(StageError, match="missing input data/raw/corpus.parquet"):
        stage.main()


@pytest.mark.parametrize("text, left", [
    ("Write to ana@mailbox.org.", True),
    ("Call 415-555-2671 or (415) 555-2671.", True),
    ("Write to ana@example.com or ops@host.example.", False),  # documentation domains are not PII
    ("kill 123 543 2341 3453", False),  # a run of numbers, not a phone
    ("Mail <EMAIL> or call <PHONE>.", False),
])
def test_gate_finds_pii_that_survived(text, left):
    from stages.clean import pii_left

    assert pii_left(text) is left
