"""pipelines/efficiency.py: latencies measured side by side in one process, and what counts as noise."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from tiny_dag import save_tiny_classifier, sentences

from pipelines import tradeoffs
from pipelines.efficiency import Latency, latency_tie, measure_side_by_side, summarize

pytestmark = pytest.mark.timeout(300)


def test_noise_band_and_ties():
    a = summarize([2.0, 2.1, 1.9, 2.3, 2.0])
    assert (a.median_ms, a.lo_ms, a.hi_ms, a.rounds) == (2.0, 1.9, 2.3, 5)
    assert latency_tie(a, Latency(2.2, 2.15, 2.6, 5))  # bands overlap
    assert latency_tie(Latency(2.0, 2.0, 2.0, 5), Latency(2.08, 2.08, 2.08, 5))  # < 5% apart
    assert not latency_tie(a, Latency(3.0, 2.8, 3.2, 5))


def _front(latency: dict[str, Latency]) -> list[bool]:
    """The id-accuracy-vs-latency front of candidates that are equally accurate."""
    table = pd.DataFrame({"experiment": list(latency), "id_accuracy": [0.9] * len(latency)})
    return tradeoffs.pareto_flags(tradeoffs.add_latency(table, latency), ["id_accuracy"], ["latency_ms"])


def test_two_identical_models_never_dominate_each_other_on_latency(tmp_path):
    model = save_tiny_classifier(tmp_path / "a")
    shutil.copytree(model, tmp_path / "b")
    texts = sentences()
    for _ in range(3):  # three independent measurements, each must call it a tie
        latency = measure_side_by_side({"a": model, "b": tmp_path / "b"}, texts)
        assert latency_tie(latency["a"], latency["b"]), latency
        assert _front(latency) == [True, True]


def test_a_clearly_slower_model_is_ranked(tmp_path):
    small = save_tiny_classifier(tmp_path / "small", n_layer=1, n_embd=16)
    large = save_tiny_classifier(tmp_path / "large", n_layer=8, n_embd=256)
    latency = measure_side_by_side({"small": small, "large": large}, sentences())
    assert latency["large"].median_ms > 2 * latency["small"].median_ms, latency
    assert _front(latency) == [True, False]
