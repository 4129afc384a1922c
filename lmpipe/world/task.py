"""The world's sentiment task: train/validation/test reviews in one domain with lexicon A only,
the shifted copies of the test split, and the generation prompts.

Shifts made here: `lexical` (lexicon B only) and `domain` (another review domain) are new texts;
the encodings, `typos` and `negation` are made from the test split with `lmpipe.shifts`, exactly
as for any other polarity task.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pandas as pd

from lmpipe.params import WorldParams
from lmpipe.shifts import apply_shift, encode
from lmpipe.text import text_key
from lmpipe.world.documents import DOMAIN_WEIGHTS, DOMAINS, OPINIONS, document, opinion, review_slots
from lmpipe.world.facts import Facts
from lmpipe.world.vocabulary import LEXICON_A, LEXICON_B

# Shifts derived from the test split, in the order they are made (each draws from its own seed).
DERIVED_SHIFTS = ("leet", "rot13", "reverse", "typos", "negation")


def label_names(classes: int) -> list[str]:
    return ["negative", "positive"] if classes == 2 else ["negative", "neutral", "positive"]


def _task_text(rng: random.Random, domain: str, lexicon: dict[str, list[str]], label: int, classes: int) -> str:
    """A short review (at most ~40 words) whose sentiment lives only in `lexicon` adjectives after a
    copula: no rating, no other opinion words. With 3 classes the middle label is a mixed review."""
    d = DOMAINS[domain]
    k = rng.choice((2, 3))
    if classes == 3 and label == 1:
        polarities = ["positive", "negative", rng.choice(("positive", "negative"))][:k]
        rng.shuffle(polarities)
    else:
        polarities = [("negative", "positive")[label > 0]] * k
    sentences = [rng.choice(d.openings).format(**review_slots(rng))] if rng.random() < 0.7 else []
    for aspect, pol in zip(rng.sample(d.aspects, k), polarities, strict=True):
        sentences.append(opinion(rng, OPINIONS, aspect, lexicon, pol))
    return " ".join(sentences)


def _split(rng: random.Random, n: int, classes: int, make: Callable[[int], str], seen: set[str]) -> pd.DataFrame:
    """n balanced rows whose texts are new to `seen` (texts of every earlier split)."""
    labels = [i % classes for i in range(n)]
    rng.shuffle(labels)
    texts = []
    for label in labels:
        for _ in range(1000):
            text = make(label)
            key = text_key(text)
            if key not in seen:
                break
        else:
            raise ValueError(f"could not draw {n} distinct task texts; lower the task sizes")
        seen.add(key)
        texts.append(text)
    return pd.DataFrame({"text": texts, "label": pd.Series(labels, dtype="int64")})


def task_and_shifts(p: WorldParams, seed: int,
                    rng: random.Random) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """The task splits and every shift split, each shift the size of test."""
    t, classes = p.task, p.task.classes
    seen: set[str] = set()

    def texts(domain: str, lexicon: dict[str, list[str]]) -> Callable[[int], str]:
        return lambda label: _task_text(rng, domain, lexicon, label, classes)

    task = {
        split: _split(rng, n, classes, texts(p.task_domain, LEXICON_A), seen)
        for split, n in (("train", t.train), ("validation", t.validation), ("test", t.test))
    }
    shifts = {
        "lexical": _split(rng, t.test, classes, texts(p.task_domain, LEXICON_B), seen),
        "domain": _split(rng, t.test, classes, texts(p.shift_domain, LEXICON_A), seen),
    }
    # Sentiment on a negative..positive scale is a polarity task, so negation's label mirror holds.
    for name in DERIVED_SHIFTS:
        shifts[name] = apply_shift(name, task["test"], seed, classes=classes, task_kind="polarity")
    _check_no_leaks(task, shifts, t.test)
    return task, shifts


def _check_no_leaks(task: dict[str, pd.DataFrame], shifts: dict[str, pd.DataFrame], size: int) -> None:
    """Generated splits are distinct by construction; the derived ones cannot meet a train text
    (encodings leave no plain word, train has no negation), and this check makes sure."""
    fitted = {text_key(x) for s in ("train", "validation") for x in task[s]["text"]}
    for name, df in {"test": task["test"], **shifts}.items():
        leaks = int(df["text"].map(text_key).isin(fitted).sum())
        if leaks or len(df) != size:
            raise RuntimeError(f"world split {name!r}: {leaks} texts shared with train/validation, {len(df)} rows")


def generation_prompts(p: WorldParams, facts: Facts, rng: random.Random) -> list[dict]:
    """Three prompts per domain: the opening words of a fresh document of that domain."""
    def opening(domain: str) -> str:
        return " ".join(document(rng, facts, domain).split()[:rng.randint(4, 7)])

    out = [{"domain": d, "prompt": opening(d)} for d in DOMAIN_WEIGHTS for _ in range(3)]
    if p.encodings and round(p.encoded_share * p.docs):
        out += [{"domain": "encoded", "prompt": encode(p.encodings[i % len(p.encodings)], opening("story"), rng)}
                for i in range(3)]
    return out
