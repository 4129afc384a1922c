"""Metric functions shared by evaluate, generate and the cross-experiment view.

Pure functions over NumPy arrays and lists of strings, so each is unit-tested against hand-computed
values. Bootstrap intervals use a generator seeded from the pipeline seed: the same run reports
the same interval.
"""

from __future__ import annotations

import functools
import re
from collections import Counter

import numpy as np
import pandas as pd


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else float("nan")


def macro_f1(y_true, y_pred, n_classes: int) -> float:
    """Unweighted mean of per-class F1; a class never predicted nor present contributes 0."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scores = []
    for k in range(n_classes):
        tp = np.sum((y_pred == k) & (y_true == k))
        fp = np.sum((y_pred == k) & (y_true != k))
        fn = np.sum((y_pred != k) & (y_true == k))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def expected_calibration_error(probs, y_true, bins: int = 10) -> float:
    """ECE with equal-width confidence bins: Σ_b |B_b|/N · |accuracy(B_b) − confidence(B_b)|."""
    probs, y_true = np.asarray(probs, dtype=np.float64), np.asarray(y_true)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    # right-closed bins, with confidence exactly 0 falling in the first bin
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def _resampled_means(values, n: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `n` bootstrap resamples (same size, with replacement) of `values`.

    For a 0/1 vector the number of ones in a resample is Binomial(len, mean), exactly, so we draw
    that instead of materializing an n × len index matrix: the same distribution in O(n) time and
    memory, whatever the test-set size. Other values are resampled the ordinary way."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return np.full(n, np.nan)
    if np.isin(values, (0.0, 1.0)).all():
        return rng.binomial(values.size, values.mean(), size=n) / values.size
    return rng.choice(values, size=(n, values.size), replace=True).mean(axis=1)


def bootstrap_ci(correct, n: int, seed: int, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of `correct` (a 0/1 vector: accuracy)."""
    means = _resampled_means(correct, n, np.random.default_rng(seed))
    if np.isnan(means).any():
        return float("nan"), float("nan")
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def bootstrap_gap_ci(correct_id, correct_shift, n: int, seed: int, alpha: float = 0.05) -> tuple[float, float]:
    """Interval for accuracy(id) − accuracy(shift), resampling the two test sets independently.
    (Several shifts are row-aligned copies of the test set, where a paired bootstrap would be
    narrower; independent resampling is valid for every shift, aligned or not, and conservative.)"""
    rng = np.random.default_rng(seed)
    gaps = _resampled_means(correct_id, n, rng) - _resampled_means(correct_shift, n, rng)
    if np.isnan(gaps).any():
        return float("nan"), float("nan")
    return float(np.quantile(gaps, alpha / 2)), float(np.quantile(gaps, 1 - alpha / 2))


def gap_summary(id_accuracy: float, shift_accuracy: dict[str, float]) -> dict[str, float]:
    """Accuracy gap per shift (id − shift; positive = worse on the shift) and their mean and max
    (0 when there are no shifts)."""
    gaps = {name: id_accuracy - acc for name, acc in shift_accuracy.items()}
    values = list(gaps.values())
    return gaps | {"mean": float(np.mean(values)) if values else 0.0, "max": float(np.max(values)) if values else 0.0}


# --- generation quality -------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z0-9']+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams / all n-grams over the samples (Li et al. 2016); 0 when there are none."""
    grams = [tuple(w[i:i + n]) for w in map(_words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeat_ngram_share(text: str, n: int = 4) -> float:
    """Share of a sample's n-grams that are repeats of an earlier n-gram in the same sample."""
    w = _words(text)
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(c - 1 for c in counts.values()) / len(grams)


def mean_sentence_words(texts: list[str]) -> float:
    sentences = [s for t in texts for s in re.split(r"[.!?]+", t) if _words(s)]
    return float(np.mean([len(_words(s)) for s in sentences])) if sentences else 0.0


@functools.lru_cache(maxsize=65536)
def syllables(word: str) -> int:
    """Syllables from pyphen's hyphenation points (what textstat falls back to). We do not use
    textstat itself: its current releases download the CMU dictionary through nltk at run time,
    which an offline pipeline cannot do, and 0.7.7 (which ships it) crashes on unknown words."""
    from pyphen import Pyphen

    global _PYPHEN
    if _PYPHEN is None:
        _PYPHEN = Pyphen(lang="en_US")
    return len(_PYPHEN.positions(word)) + 1


_PYPHEN = None


def readability(texts: list[str]) -> float:
    """Flesch reading ease of the samples: 206.835 − 1.015·words/sentence − 84.6·syllables/word.
    Higher reads easier (60–70 is plain English); 0 when there are no words."""
    sentences = [s for t in texts for s in re.split(r"[.!?]+", t) if _words(s)]
    words = [w for s in sentences for w in _words(s)]
    if not words:
        return 0.0
    return 206.835 - 1.015 * len(words) / len(sentences) - 84.6 * sum(map(syllables, words)) / len(words)


def is_degenerate(text: str, max_repeat_share: float = 0.5) -> bool:
    """Empty, or looping: more than half of its 4-grams repeat earlier ones."""
    return not _words(text) or repeat_ngram_share(text, 4) > max_repeat_share


# --- experiments --------------------------------------------------------------------------------


def pareto_front(table: pd.DataFrame, maximize: list[str], minimize: list[str]) -> pd.Series:
    """True for rows not dominated by any other row: no row is at least as good on every
    objective and strictly better on one. Rows with a missing objective are never optimal."""
    signs = {c: 1.0 for c in maximize} | {c: -1.0 for c in minimize}
    values = np.column_stack([table[c].astype(float).to_numpy() * s for c, s in signs.items()])
    valid = ~np.isnan(values).any(axis=1)
    optimal = np.zeros(len(table), dtype=bool)
    for i in np.flatnonzero(valid):
        others = values[valid]
        dominated = np.any(np.all(others >= values[i], axis=1) & np.any(others > values[i], axis=1))
        optimal[i] = not dominated
    return pd.Series(optimal, index=table.index)
