"""Shift transforms: string encodings (leet, rot13, reverse, typos) and CheckList-style negation.

`lmpipe.world` renders encoded pretraining documents with `encode`, and every shifted test split
is made with `apply_shift`, so what pretraining showed the model and what evaluation asks of it are
the same transform by construction.

Each shift declares what it does to the label (SHIFT_LABEL_EFFECT). One that `preserves` it only
rewrites the text, so the shifted split is a valid test of any task. One that `maps` it changes the
label by a rule that holds only for some tasks: negation mirrors a label on an ordered
negative..positive scale, which is meaningless for topics or intents, so `apply_shift` refuses it
unless the task declares itself a polarity task.

The encodings are hand-written because each is a few lines and no maintained library provides this
exact set (nlpaug/textattack add heavy dependencies for typos alone). `reverse` is the third
encoding: every word's letters are reversed ("good" -> "doog"). Unlike leet and rot13 it keeps the
letters and moves them, so it is a different kind of shift, and it is an involution a small BPE
model can learn word by word from parallel pairs.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable
from functools import partial
from typing import Literal

import pandas as pd

from lmpipe.io import StageError

# Letters that have a digit look-alike. They cover about half of the letters in English text, so
# leet is a strong surface shift while staying readable to people (and deterministic, so the
# pretraining corpus and the shift split agree on every word).
_LEET = str.maketrans("aeiostAEIOST", "431057431057")

_ROT13 = str.maketrans(
    string.ascii_lowercase + string.ascii_uppercase,
    string.ascii_lowercase[13:] + string.ascii_lowercase[:13]
    + string.ascii_uppercase[13:] + string.ascii_uppercase[:13],
)

_WORD = re.compile(r"[^\W\d_]+")  # a run of letters, accented ones included

# Share of eligible words (4+ ASCII letters) that get one typo. Every changed text has at least one.
TYPO_RATE = 0.15
_TYPO_WORD = re.compile(r"[A-Za-z]{4,}")
_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS = {
    ch: row[max(i - 1, 0):i] + row[i + 1:i + 2]
    for row in _KEYBOARD_ROWS
    for i, ch in enumerate(row)
}


def leet(text: str, rng: random.Random) -> str:
    return text.translate(_LEET)


def rot13(text: str, rng: random.Random) -> str:
    return text.translate(_ROT13)


def reverse(text: str, rng: random.Random) -> str:
    """Reverse the letters of each word but keep the capital where it was ("The" -> "Eht"), so the
    transform is its own inverse and sentence starts stay visible."""

    def flip(m: re.Match) -> str:
        word = m.group()
        backwards = word[::-1].lower()
        return "".join(b.upper() if w.isupper() else b for b, w in zip(backwards, word, strict=True))

    return _WORD.sub(flip, text)


def _typo(word: str, rng: random.Random) -> str:
    """One keyboard slip inside a word; the first letter is kept, as in most real typos."""
    i = rng.randrange(1, len(word))
    op = rng.randrange(4)
    if op == 0:  # dropped letter
        return word[:i] + word[i + 1:]
    if op == 1:  # doubled letter
        return word[:i] + word[i] + word[i:]
    if op == 2 and i + 1 < len(word) and word[i].lower() != word[i + 1].lower():  # swapped neighbours
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    # neighbouring key (also the fallback for a swap of two equal letters, which would change nothing)
    hit = rng.choice(_NEIGHBOURS[word[i].lower()])
    return word[:i] + (hit.upper() if word[i].isupper() else hit) + word[i + 1:]


def typos(text: str, rng: random.Random) -> str:
    """Keyboard typos in about TYPO_RATE of the words with 4+ letters, at least one per text that
    has such a word. Each typo changes the length by at most one character."""
    words = list(_TYPO_WORD.finditer(text))
    if not words:
        return text
    chosen = [m for m in words if rng.random() < TYPO_RATE] or [rng.choice(words)]
    parts, last = [], 0
    for m in chosen:
        parts += [text[last:m.start()], _typo(m.group(), rng)]
        last = m.end()
    parts.append(text[last:])
    return "".join(parts)


ENCODINGS: dict[str, Callable[[str, random.Random], str]] = {
    "leet": leet,
    "rot13": rot13,
    "reverse": reverse,
    "typos": typos,
}


def encode(name: str, text: str, rng: random.Random) -> str:
    """Apply the string transform `name`; `rng` is used only by the random ones (typos)."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding {name!r}; valid encodings: {', '.join(sorted(ENCODINGS))}")
    return ENCODINGS[name](text, rng)


# Negation works on copulas, the construction reviews use to state an opinion ("the soup was good").
# Each "is/are/was/were" gains a "not", and an existing "not"/"n't" is removed, so every clause
# flips. Lower case only: a sentence-initial "Was" is almost always a question.
_COPULA = re.compile(r"\b(is|are|was|were)(n't| not)?\b")


def negate(text: str) -> str | None:
    """The text with every copula negated (or un-negated), or None when it has no copula."""
    if not _COPULA.search(text):
        return None
    return _COPULA.sub(lambda m: m.group(1) if m.group(2) else f"{m.group(1)} not", text)


def _encode_rows(name: str, df: pd.DataFrame, rng: random.Random, classes: int) -> pd.DataFrame:
    return df.assign(text=[encode(name, t, rng) for t in df["text"]])


def _negation(df: pd.DataFrame, rng: random.Random, classes: int) -> pd.DataFrame:
    """Negate each text and mirror its label on the class scale (negative <-> positive; the middle
    class of three, mixed sentiment, stays). Rows without a copula are dropped: left unchanged they
    would keep their label and dilute the shift, so the result can be shorter than the input."""
    negated = df["text"].map(negate)
    kept = negated.notna().to_numpy()
    return pd.DataFrame({"text": negated[kept].to_list(), "label": (classes - 1 - df["label"][kept]).to_list()})


SHIFTS: dict[str, Callable[[pd.DataFrame, random.Random, int], pd.DataFrame]] = {
    **{name: partial(_encode_rows, name) for name in ENCODINGS},
    "negation": _negation,
}

LabelEffect = Literal["preserves", "maps"]
# Every shift name the pipeline knows. `lexical` and `domain` are new texts the world generates
# (lmpipe.world.task), not transforms of a test split, so they have no entry in SHIFTS.
SHIFT_LABEL_EFFECT: dict[str, LabelEffect] = {
    **dict.fromkeys(ENCODINGS, "preserves"),
    "lexical": "preserves",
    "domain": "preserves",
    "negation": "maps",
}
# polarity: labels are ordered opposites (negative..positive, optionally a middle class);
# categorical: any other label set, where only label-preserving shifts are defined.
TASK_KINDS = ("polarity", "categorical")


def _check_task_kind(name: str, task_kind: str) -> None:
    if task_kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {task_kind!r}; valid task kinds: {', '.join(TASK_KINDS)}")
    if SHIFT_LABEL_EFFECT[name] == "maps" and task_kind != "polarity":
        raise StageError(f"shift {name!r} maps labels and is defined only for a polarity task"
                         f" (data.task_kind: polarity); this task is {task_kind}")


def apply_shift(name: str, df: pd.DataFrame, seed: int, *, classes: int | None = None,
                task_kind: str = "categorical") -> pd.DataFrame:
    """A shifted copy of `df` (columns text, label) with a fresh 0..n-1 index.

    `classes` is the size of the label set, used by negation to mirror labels; by default it is
    inferred as max(label) + 1, which is right whenever the top class occurs in `df`. `task_kind`
    (TASK_KINDS) defaults to categorical, so a label-mapping shift runs only where the caller
    states that the task is a polarity task.
    """
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; valid shifts: {', '.join(sorted(SHIFTS))}")
    _check_task_kind(name, task_kind)
    missing = {"text", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"shift {name!r} needs columns text and label; missing: {', '.join(sorted(missing))}")
    if df["text"].isna().any() or df["label"].isna().any():
        raise ValueError(f"shift {name!r}: text and label must not be missing")
    rows = df[["text", "label"]].reset_index(drop=True).astype({"label": "int64"})
    if classes is None:
        classes = int(rows["label"].max()) + 1 if len(rows) else 2
    bad = rows["label"][(rows["label"] < 0) | (rows["label"] >= classes)]
    if len(bad):
        raise ValueError(f"shift {name!r}: labels must lie in 0..{classes - 1}; found {sorted(set(bad.tolist()))[:5]}")
    out = SHIFTS[name](rows, random.Random(f"{name}:{seed}"), classes)
    return out.reset_index(drop=True).astype({"label": "int64"})
