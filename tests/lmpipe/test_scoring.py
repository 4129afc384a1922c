"""Metric functions against hand-computed values (stages/scoring.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmpipe import scoring


def test_accuracy_macro_f1_and_confusion_by_hand():
    y = [0, 0, 1, 1, 1]
    p = [0, 1, 1, 1, 0]
    assert scoring.accuracy(y, p) == pytest.approx(3 / 5)
    # class 0: tp 1, fp 1, fn 1 -> F1 2/4; class 1: tp 2, fp 1, fn 1 -> F1 4/6
    assert scoring.macro_f1(y, p, 2) == pytest.approx((0.5 + 4 / 6) / 2)
    assert scoring.confusion(y, p, 2).tolist() == [[1, 1], [1, 2]]
    # a class neither present nor predicted contributes 0 to the unweighted mean
    assert scoring.macro_f1([0, 1], [0, 1], 3) == pytest.approx(2 / 3)
    assert math.isnan(scoring.accuracy([], []))


def test_ece_by_hand():
    # one sample per bin: ECE = mean |correct - confidence|
    probs = [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]]
    y = [0, 1, 1, 1]  # correct: yes, no, yes, yes
    assert scoring.expected_calibration_error(probs, y, 10) == pytest.approx((0.1 + 0.8 + 0.3 + 0.4) / 4)
    # two bins, everything in (0.5, 1]: |accuracy 2/3 - confidence 0.7|
    probs = [[0.6, 0.4], [0.6, 0.4], [0.1, 0.9]]
    assert scoring.expected_calibration_error(probs, [0, 1, 1], 2) == pytest.approx(abs(2 / 3 - 0.7))
    # perfectly calibrated: confidence 0.75, 3 of 4 right
    probs = [[0.75, 0.25]] * 4
    assert scoring.expected_calibration_error(probs, [0, 0, 0, 1], 10) == pytest.approx(0.0)
    # bins are right-closed: confidence exactly 0.8 falls in (0.7, 0.8] with 0.75, not with 0.85
    probs = [[0.8, 0.2], [0.75, 0.25], [0.85, 0.15]]
    expected = (2 / 3) * abs(1.0 - 0.775) + (1 / 3) * abs(0.0 - 0.85)
    assert scoring.expected_calibration_error(probs, [0, 0, 1], 10) == pytest.approx(expected)


def test_bootstrap_ci_on_known_data():
    assert scoring.bootstrap_ci(np.ones(50), 200, 0) == (1.0, 1.0)
    assert scoring.bootstrap_ci(np.zeros(50), 200, 0) == (0.0, 0.0)
    # half right out of 400: the percentile interval is the normal one, 0.5 ± 1.96·sqrt(0.25/400)
    half = np.array([0, 1] * 200)
    lo, hi = scoring.bootstrap_ci(half, 20_000, 1)
    assert lo == pytest.approx(0.5 - 1.96 * 0.025, abs=0.006) and hi == pytest.approx(0.5 + 1.96 * 0.025, abs=0.006)
    # seeded: the same run reports the same interval
    assert scoring.bootstrap_ci(half, 500, 3) == scoring.bootstrap_ci(half, 500, 3)
    # the binomial shortcut has the distribution of explicit resampling
    rng = np.random.default_rng(5)
    explicit = rng.choice(half, size=(20_000, half.size)).mean(axis=1)
    assert np.quantile(explicit, 0.025) == pytest.approx(lo, abs=0.006)
    # non-0/1 values are resampled the ordinary way
    lo, hi = scoring.bootstrap_ci([2.0, 2.0, 2.0], 100, 0)
    assert lo == hi == 2.0
    assert all(math.isnan(v) for v in scoring.bootstrap_ci([], 100, 0))


def test_bootstrap_gap_ci_on_known_data():
    assert scoring.bootstrap_gap_ci(np.ones(30), np.zeros(40), 300, 0) == (1.0, 1.0)
    # equal accuracy: centred on 0, width 1.96·sqrt(2·0.25/400) each side
    half = np.array([0, 1] * 200)
    lo, hi = scoring.bootstrap_gap_ci(half, half, 20_000, 2)
    width = 1.96 * math.sqrt(2 * 0.25 / 400)
    assert lo == pytest.approx(-width, abs=0.008) and hi == pytest.approx(width, abs=0.008)


def test_gap_summary_by_hand():
    gaps = scoring.gap_summary(0.9, {"leet": 0.5, "typos": 0.85, "domain": 0.95})
    assert gaps["leet"] == pytest.approx(0.4)
    assert gaps["typos"] == pytest.approx(0.05)
    assert gaps["domain"] == pytest.approx(-0.05)
    assert gaps["mean"] == pytest.approx(0.4 / 3)
    assert gaps["max"] == pytest.approx(0.4)
    assert scoring.gap_summary(0.9, {}) == {"mean": 0.0, "max": 0.0}


def test_distinct_n_and_repetition_by_hand():
    # unigrams a b a b -> 2 unique of 4; bigrams ab ba ab -> 2 unique of 3
    assert scoring.distinct_n(["a b a b"], 1) == pytest.approx(0.5)
    assert scoring.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    # n-grams are counted across samples, never across a sample boundary
    assert scoring.distinct_n(["x y", "x y"], 2) == pytest.approx(1 / 2)
    assert scoring.distinct_n([""], 1) == 0.0
    # 4-grams of "a b c d a b c d": abcd bcda cdab dabc abcd -> 1 repeat of 5
    assert scoring.repeat_ngram_share("a b c d a b c d") == pytest.approx(0.2)
    assert scoring.repeat_ngram_share("one two three") == 0.0
    assert scoring.is_degenerate("")
    assert scoring.is_degenerate("go go go go go go go go go go")
    assert not scoring.is_degenerate("The soup was hot and the bread was fresh.")


def test_sentence_length_and_flesch_on_known_sentences():
    assert scoring.mean_sentence_words(["One two three. Four five!", "Six?"]) == pytest.approx(2.0)
    # 6 words, 1 sentence, 6 one-syllable words: 206.835 - 1.015*6 - 84.6*1
    assert scoring.readability(["The cat sat on the mat."]) == pytest.approx(206.835 - 1.015 * 6 - 84.6, abs=1e-9)
    # the(1) hap-py(2) dog(1) runs(1) quick-ly(2): 7 syllables in 5 words
    assert scoring.syllables("happy") == 2 and scoring.syllables("quickly") == 2
    assert scoring.readability(["The happy dog runs quickly."]) == pytest.approx(
        206.835 - 1.015 * 5 - 84.6 * 7 / 5, abs=1e-9)
    assert scoring.readability([""]) == 0.0
