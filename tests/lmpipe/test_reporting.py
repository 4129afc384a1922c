"""lmpipe.reporting on hand-made metrics (no DAG run): the thresholds the page states come from
params, missing inputs are named, and every shown number is checked by the gate's facts."""

from __future__ import annotations

import contextlib
import json

import pytest

from lmpipe.io import StageError
from lmpipe.params import parse_params
from lmpipe.reporting.inputs import ReportInputs, collect, numeric_facts
from lmpipe.reporting.page import build_html, verdict_text

GEN = {"distinct_1": 0.5, "distinct_2": 0.8, "repeat_4gram": 0.0, "mean_sentence_words": 7.0,
       "readability": 70.0, "degenerate_share": 0.0}


def metrics() -> dict[str, dict]:
    evaluate = {
        "task": {"id": {"accuracy": 0.9, "macro_f1": 0.9, "ece": 0.05, "accuracy_ci": [0.85, 0.95], "n": 40,
                        "confusion": [[18, 2], [2, 18]]},
                 "shift": {"leet": {"accuracy": 0.6, "macro_f1": 0.55, "accuracy_ci": [0.5, 0.7], "n": 40}},
                 "gap": {"leet": 0.3, "leet_ci": [0.2, 0.4], "mean": 0.3, "max": 0.3}},
        "lm": {"ppl_base": 20.0, "ppl_finetuned": 22.0, "forgetting": 0.1, "bits_per_byte": 1.9,
               "bits_per_byte_finetuned": 2.0},
        "capability": {"leet": {"loss_ratio": 2.4, "verdict": "no capability"}, "ratio_threshold": 1.5},
        "efficiency": {"params": 1000, "examples_per_s": 50.0, "latency_ms_p50": 3.0, "latency_ms_p95": 4.0},
        "labels": ["negative", "positive"],
    }
    return {"evaluate": evaluate, "pretrain": {"val_loss": 3.0, "unigram_loss": 5.0, "tokens_seen": 1000},
            "finetune": {"val_accuracy": 0.9, "method": "full", "trainable_params": 1000},
            "generate": {"base": GEN, "finetuned": GEN}, "clean": {"docs_in": 100, "docs_out": 90}}


def inputs(**thresholds) -> ReportInputs:
    m = metrics()
    return ReportInputs(title="t", samples=[{"prompt": "p", "base": "b", "finetuned": "f"}],
                        gap_threshold=thresholds.get("gap", 0.05), capability_ratio=thresholds.get("ratio", 1.5), **m)


def test_page_states_the_thresholds_from_params(tmp_path):
    with contextlib.chdir(tmp_path):
        page = build_html(inputs(gap=0.2, ratio=1.8), tmp_path)
    assert "(at most 1.8: the text looks familiar)" in page and "untrained" in page
    assert "reaches down to 0.2 or below" in verdict_text("transfers", 0.2)
    assert all(verdict_text(v, 0.05) for v in ("transfers", "mismatched generalization", "no capability"))
    assert "<b>leet</b>: no capability" in page
    assert "pretraining loss: not available" in page  # no curves in this folder
    assert {p.name for p in tmp_path.glob("*.png")} == {"shift_accuracy.png", "capability.png", "confusion.png"}


def test_collect_reads_thresholds_from_params_and_names_a_missing_stage(tmp_path):
    params = parse_params({"evaluate": {"gap_threshold": 0.12, "capability_ratio": 1.7}})
    with contextlib.chdir(tmp_path):
        (tmp_path / "metrics").mkdir()
        for name, m in metrics().items():
            (tmp_path / "metrics" / f"{name}.json").write_text(json.dumps(m))
        d = collect(params)
        assert (d.gap_threshold, d.capability_ratio, d.samples) == (0.12, 1.7, [])
        (tmp_path / "metrics/generate.json").unlink()
        with pytest.raises(StageError, match="run the generate stage"):
            collect(params)


def test_numeric_facts_flag_non_finite_values_but_not_optional_ones():
    d = inputs()
    d.evaluate["lm"]["ppl_finetuned"] = None
    d.finetune["replay_lm_loss"] = None  # legitimately absent when replay is off
    facts = numeric_facts(d)
    assert facts["evaluate.lm.ppl_finetuned"] is None
    assert "finetune.replay_lm_loss" not in facts
    assert facts["evaluate.lm.bits_per_byte"] == 1.9
