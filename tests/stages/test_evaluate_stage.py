"""The evaluate stage on the session's micro DAG run (conftest's `micro_repo`): every contract key of
metrics/evaluate.json, with consistent values, and the plot CSVs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from lmpipe.capability import VERDICTS


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
        assert cap[name]["verdict"] in VERDICTS and cap[name]["reason"], name
        assert finite(cap[name]["loss_ratio"]) and cap[name]["loss_ratio"] > 0
        lo, hi = cap[name]["probe_accuracy_ci"]
        assert 0 <= lo <= cap[name]["probe_accuracy"] <= hi <= 1, name
        assert cap[name]["probe_reference_accuracy"] == cap["probe_reference_accuracy"]
        # the micro test split (60 rows) caps probe_k (64) at half the rows: fit and scored rows disjoint
        # (negation's probe fits on plain rows too, and scores on the shifted rows it did not fit)
        if name == "negation":
            assert cap[name]["probe_scored_rows"] == s["n"] // 2, name
        else:
            assert cap[name]["probe_fit_rows"] + cap[name]["probe_scored_rows"] == s["n"], name
    gaps = [task["gap"][n] for n in shifts]
    assert task["gap"]["mean"] == pytest.approx(np.mean(gaps), abs=1e-5)
    assert task["gap"]["max"] == pytest.approx(max(gaps), abs=1e-5)
    for key in ("ppl_base", "ppl_finetuned", "forgetting", "bits_per_byte", "bits_per_byte_finetuned"):
        assert finite(lm[key]), key
    # whole validation documents, in bits per UTF-8 byte: a trained model is far below 8 (raw bytes)
    assert 0 < lm["bits_per_byte"] < 8 and lm["bits_per_byte_docs"] > 0
    assert lm["bits_per_byte_docs"] == len(pd.read_parquet(micro_repo / "data/clean/validation.parquet"))
    assert lm["forgetting"] == pytest.approx(lm["ppl_finetuned"] / lm["ppl_base"] - 1, rel=1e-3, abs=1e-4)
    for key in ("params", "trainable_params", "examples_per_s", "latency_ms_p50", "latency_ms_p95", "peak_memory_mb"):
        assert finite(eff[key]) and eff[key] > 0, key
    assert eff["latency_ms_p50"] <= eff["latency_ms_p95"]
    for name in ("confusion.csv", "accuracy.csv"):
        assert (micro_repo / "plots/evaluate" / name).exists()
