import random
import re

import pandas as pd
import pytest

from lmpipe import params
from lmpipe.io import StageError
from lmpipe.shifts import ENCODINGS, SHIFT_LABEL_EFFECT, SHIFTS, TASK_KINDS, apply_shift, encode, negate

SENTENCES = [
    "The soup was really good and the waiter was friendly.",
    "I thought the fries were terrible.",
    "In my opinion the lasagna was delightful, and the staff were lovely.",
    "My sister and I tried Café Zoë last Sunday. The music was awful.",
    "Honestly, the plot was superb — the ending was not bad at all.",
]


def frame(texts, labels):
    return pd.DataFrame({"text": texts, "label": labels})


def test_rot13_and_reverse_are_involutions():
    rng = random.Random(0)
    for text in SENTENCES:
        for name in ("rot13", "reverse"):
            once = encode(name, text, rng)
            assert once != text
            assert encode(name, once, rng) == text


def test_reverse_reverses_letters_and_keeps_capitals_in_place():
    assert encode("reverse", "The soup, Zoë!", random.Random(0)) == "Eht puos, Ëoz!"


def test_leet_changes_at_least_a_third_of_letters():
    for text in SENTENCES:
        out = encode("leet", text, random.Random(0))
        letters = [i for i, ch in enumerate(text) if ch.isalpha()]
        changed = sum(out[i] != text[i] for i in letters)
        assert len(out) == len(text)
        assert changed >= len(letters) / 3, (text, out)


def test_typos_change_text_and_keep_length_within_bounds():
    rng = random.Random(1)
    for _ in range(50):
        for text in SENTENCES:
            out = encode("typos", text, rng)
            long_words = len(re.findall(r"[A-Za-z]{4,}", text))
            assert out != text
            # One typo per word at most, each moving the length by at most one character.
            assert abs(len(out) - len(text)) <= long_words
            assert 0.9 * len(text) <= len(out) <= 1.1 * len(text)
            assert out.split()[0][0] == text.split()[0][0]  # first letters survive


def test_typos_leave_texts_without_long_words_alone():
    assert encode("typos", "A cat sat on a mat.", random.Random(0)) == "A cat sat on a mat."


def test_negate_every_copula_and_undo_existing_negation():
    assert negate("The soup was good and the fries were bad.") == "The soup was not good and the fries were not bad."
    assert negate("The plot was not bad, and it isn't long.") == "The plot was bad, and it is long."
    assert negate("I loved every minute.") is None


def test_negation_flips_binary_labels_and_drops_rows_it_cannot_negate():
    df = frame(["The soup was good.", "I loved it.", "The fries were awful."], [1, 1, 0])
    out = apply_shift("negation", df, seed=0, task_kind="polarity")
    assert out["text"].tolist() == ["The soup was not good.", "The fries were not awful."]
    assert out["label"].tolist() == [0, 1]
    assert out["label"].dtype == "int64"


def test_negation_mirrors_three_class_labels_and_keeps_neutral():
    df = frame(["The soup was good.", "The soup was good but the tea was bad.", "The fries were awful."], [2, 1, 0])
    out = apply_shift("negation", df, seed=0, task_kind="polarity")
    assert out["label"].tolist() == [0, 1, 2]
    # Told the label set explicitly, a binary subset of a 3-class task mirrors on the 3-class scale.
    assert apply_shift("negation", df.iloc[[2]], seed=0, classes=3, task_kind="polarity")["label"].tolist() == [2]


def test_encoding_shifts_keep_labels_and_rows_and_do_not_mutate_input():
    df = frame(SENTENCES, [1, 0, 1, 0, 1]).set_index(pd.Index([10, 11, 12, 13, 14]))
    before = df.copy()
    for name in ENCODINGS:
        out = apply_shift(name, df, seed=3)
        assert list(out.index) == [0, 1, 2, 3, 4]
        assert out["label"].tolist() == df["label"].tolist()
        assert (out["text"] != df["text"].to_numpy()).all()
    pd.testing.assert_frame_equal(df, before)


def test_apply_shift_is_deterministic_per_seed():
    df = frame(SENTENCES * 4, [0, 1, 0, 1, 0] * 4)
    assert apply_shift("typos", df, 7).equals(apply_shift("typos", df, 7))
    assert not apply_shift("typos", df, 7).equals(apply_shift("typos", df, 8))


def test_unknown_names_are_rejected_with_the_valid_ones_listed():
    with pytest.raises(ValueError, match=r"unknown shift 'base64'.*leet.*negation.*rot13") as err:
        apply_shift("base64", frame(["x"], [0]), seed=0)
    assert all(name in str(err.value) for name in SHIFTS)
    with pytest.raises(ValueError, match=r"unknown encoding 'negation'.*reverse"):
        encode("negation", "text", random.Random(0))


def test_apply_shift_rejects_bad_frames():
    with pytest.raises(ValueError, match="missing: label"):
        apply_shift("leet", pd.DataFrame({"text": ["a"]}), seed=0)
    with pytest.raises(ValueError, match="must not be missing"):
        apply_shift("rot13", frame(["fine", None], [0, 1]), seed=0)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1; found \[2\]"):
        apply_shift("negation", frame(["The soup was good."], [2]), seed=0, classes=2, task_kind="polarity")


def test_every_shift_declares_its_label_effect():
    assert set(SHIFT_LABEL_EFFECT) == set(SHIFTS) | {"lexical", "domain"}
    assert set(SHIFT_LABEL_EFFECT.values()) == {"preserves", "maps"}
    assert {n for n, e in SHIFT_LABEL_EFFECT.items() if e == "preserves"} == {*ENCODINGS, "lexical", "domain"}
    # the schema refuses the same shifts on a non-polarity task before any stage runs
    assert set(params.LABEL_MAPPING_SHIFTS) == {n for n, e in SHIFT_LABEL_EFFECT.items() if e == "maps"}
    assert set(TASK_KINDS) == {"polarity", "categorical"}


@pytest.mark.parametrize("kwargs", [{}, {"task_kind": "categorical"}])
def test_a_label_mapping_shift_on_a_non_polarity_task_is_refused_in_one_line(kwargs):
    df = frame(["The soup was good.", "The fries were awful."], [1, 0])
    with pytest.raises(StageError) as err:
        apply_shift("negation", df, seed=0, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    assert "'negation'" in message and "categorical" in message and "polarity" in message


def test_an_unknown_task_kind_is_rejected_even_for_a_label_preserving_shift():
    with pytest.raises(ValueError, match=r"unknown task kind 'sentiment'.*polarity, categorical"):
        apply_shift("leet", frame(["good"], [0]), seed=0, task_kind="sentiment")


@pytest.mark.parametrize("task_kind", TASK_KINDS)
@pytest.mark.parametrize("classes", [2, 3])
def test_every_label_preserving_shift_keeps_every_label(task_kind, classes):
    texts = SENTENCES * 6
    labels = [i % classes for i in range(len(texts))]
    df = frame(texts, labels)
    preserving = [n for n in SHIFTS if SHIFT_LABEL_EFFECT[n] == "preserves"]
    assert preserving
    for name in preserving:
        out = apply_shift(name, df, seed=5, classes=classes, task_kind=task_kind)
        assert out["label"].tolist() == labels, name
        assert len(out) == len(df) and (out["text"] != df["text"]).any(), name

