"""evaluate and generate on the session's micro DAG run (conftest's `micro_repo`): every contract key,
consistent values, batching that does not change predictions; the verdict rule."""

from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
import torch

from stages import evaluate

VERDICTS = {"transfers", "no capability", "capability present, behaviour did not transfer"}


def read(repo, name: str) -> dict:
    return json.loads((repo / "metrics" / f"{name}.json").read_text())


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_evaluate_writes_every_contract_key(micro_repo):
    ev = read(micro_repo, "evaluate")
    task, lm, eff, cap = ev["task"], ev["lm"], ev["efficiency"], ev["capability"]
    for key in ("accuracy", "macro_f1", "ece"):
        assert finite(task["id"][key]), key
    assert len(task["id"]["accuracy_ci"]) == 2
    assert np.array(task["id"]["confusion"]).sum() == task["id"]["n"]
    shifts = set(task["shift"])
    assert shifts >= {"lexical", "domain", "leet", "rot13", "typos", "negation"}
    for name in shifts:
        s = task["shift"][name]
        assert finite(s["accuracy"]) and finite(s["macro_f1"]), name
        lo, hi = s["accuracy_ci"]
        assert lo <= s["accuracy"] + 1e-9 and s["accuracy"] <= hi + 1e-9, name
        assert task["gap"][name] == pytest.approx(task["id"]["accuracy"] - s["accuracy"], abs=1e-5)
        lo, hi = task["gap"][f"{name}_ci"]
        assert lo <= hi
        assert cap[name]["verdict"] in VERDICTS
        assert finite(cap[name]["loss_ratio"]) and cap[name]["loss_ratio"] > 0
    gaps = [task["gap"][n] for n in shifts]
    assert task["gap"]["mean"] == pytest.approx(np.mean(gaps), abs=1e-5)
    assert task["gap"]["max"] == pytest.approx(max(gaps), abs=1e-5)
    for key in ("ppl_base", "ppl_finetuned", "forgetting"):
        assert finite(lm[key]), key
    assert lm["forgetting"] == pytest.approx(lm["ppl_finetuned"] / lm["ppl_base"] - 1, rel=1e-3, abs=1e-4)
    for key in ("params", "trainable_params", "examples_per_s", "latency_ms_p50", "latency_ms_p95", "peak_memory_mb"):
        assert finite(eff[key]) and eff[key] > 0, key
    assert eff["latency_ms_p50"] <= eff["latency_ms_p95"]
    for name in ("confusion.csv", "accuracy.csv"):
        assert (micro_repo / "plots/evaluate" / name).exists()


def test_generate_writes_every_contract_key_and_side_by_side_samples(micro_repo):
    gen = read(micro_repo, "generate")
    assert set(gen) == {"base", "finetuned"}
    for model in gen.values():
        for key in ("distinct_1", "distinct_2", "repeat_4gram", "mean_sentence_words", "readability",
                    "degenerate_share"):
            assert finite(model[key]), key
        assert 0 <= model["distinct_1"] <= 1 and 0 <= model["degenerate_share"] <= 1
    rows = [json.loads(x) for x in (micro_repo / "data/samples/samples.jsonl").read_text().splitlines()]
    assert rows and all({"prompt", "base", "finetuned"} <= set(r) for r in rows)
    md = (micro_repo / "data/samples/samples.md").read_text()
    assert "| domain | prompt | base | finetuned |" in md and "temperature" in md


def test_length_sorted_batches_do_not_change_predictions(micro_repo):
    import pandas as pd
    from transformers import GPT2ForSequenceClassification

    with contextlib.chdir(micro_repo):
        tok = evaluate_tokenizer()
        model = GPT2ForSequenceClassification.from_pretrained("models/finetuned").eval()
        texts = pd.read_parquet("data/raw/task/test.parquet")["text"].tolist()[:24]
    cpu = torch.device("cpu")
    batched = evaluate.predict(model, tok, texts, 16, 48, cpu)
    single = np.concatenate([evaluate.predict(model, tok, [t], 1, 48, cpu) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # per-character loss is the same total surprisal over the characters the model predicted
    ids = evaluate.encode(tok, texts[:3])
    from transformers import GPT2LMHeadModel

    with contextlib.chdir(micro_repo):
        lm = GPT2LMHeadModel.from_pretrained("models/base").eval()
    loss = evaluate.text_lm_loss(lm, tok, ids, 8, 128, cpu)
    chars = sum(len(tok.decode(x[1:128])) for x in ids)
    tokens = sum(len(x[:128]) - 1 for x in ids)
    assert loss["per_char"] == pytest.approx(loss["per_token"] * tokens / chars, rel=1e-6)


def evaluate_tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained("models/finetuned")
    tok.padding_side = "right"
    return tok


def test_verdict_rule():
    from lmpipe.params import EvaluateParams

    p = EvaluateParams()
    assert evaluate.verdict(3.0, 0.01, -0.02, p) == "transfers"  # no gap
    assert evaluate.verdict(3.0, 0.3, -0.01, p) == "transfers"  # gap not significant
    assert evaluate.verdict(3.0, 0.3, 0.2, p) == "no capability"
    assert evaluate.verdict(1.05, 0.3, 0.2, p) == "capability present, behaviour did not transfer"
    # both thresholds are params: a borderline ratio flips with capability_ratio
    assert evaluate.verdict(1.54, 0.3, 0.2, p) == "no capability"
    loose = EvaluateParams(capability_ratio=1.6, gap_threshold=0.4)
    assert evaluate.verdict(1.54, 0.5, 0.2, loose) == "capability present, behaviour did not transfer"
    assert evaluate.verdict(1.54, 0.3, 0.2, loose) == "transfers"
