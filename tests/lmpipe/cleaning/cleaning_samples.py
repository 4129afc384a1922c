"""Texts and corpora the cleaning tests share."""

from __future__ import annotations

import random

import pandas as pd

PROSE = [
    "The harbour town woke slowly on winter mornings. Fishing boats rocked against the pier while "
    "gulls argued over the remains of yesterday's catch. Down by the market, the baker opened his "
    "shutters and the smell of warm bread drifted along the narrow streets. Children ran past on "
    "their way to school, their scarves trailing behind them like flags. Old Marta, who had sold "
    "flowers on the same corner for forty years, arranged her buckets of tulips and waited for the "
    "first customers. Nobody in the town could remember a morning when she had not been there.",
    "Our new kettle arrived on Tuesday and it has been a pleasure to use. It boils a full litre in "
    "under three minutes, the handle stays cool, and the lid opens with one press of a button. The "
    "only thing I would change is the cable, which is a little short for my kitchen. For the price "
    "it is an excellent choice, and I would happily buy it again.",
    "The committee met in the library to discuss the budget for the coming year. Most members agreed "
    "that the roof needed repairs before the rains, but there was a long debate about whether the "
    "garden should be replanted as well. In the end they decided to ask the town for a small grant "
    "and to hold a vote at the next meeting in March.",
    "When the train finally left the station, she opened her notebook and began to write. The "
    "fields outside were still covered with frost, and the sun was low over the hills. She wrote "
    "about her grandmother, about the house by the river, and about the summer they had spent "
    "building a boat that never sailed. By the time they reached the city, she had filled ten pages.",
]


def corpus_of(texts: list[str], domain: str = "web") -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"d{i:04d}" for i in range(len(texts))],
        "text": texts,
        "source": "test",
        "domain": domain,
    })


def edit_words(text: str, share: float, rng: random.Random) -> str:
    """`share` of the words edited as scraped copies differ: a swapped-letter typo, a deletion or
    a repeated word. (Whole-word substitutions look like another document from the same template:
    5% of them give an estimated Jaccard of 0.88 +- 0.03, at the 0.85 threshold's edge.)"""
    words = text.split()
    for i in sorted(rng.sample(range(len(words)), round(share * len(words))), reverse=True):
        op = rng.randrange(3)
        if op == 0 and len(words[i]) > 3:
            words[i] = words[i][0] + words[i][2] + words[i][1] + words[i][3:]
        elif op == 1:
            del words[i]
        else:
            words.insert(i, words[i])
    return " ".join(words)


def mixed_corpus(n: int) -> pd.DataFrame:
    """n documents: prose variants (distinct enough to survive dedup) with some noise mixed in."""
    rng = random.Random(0)
    texts = []
    for i in range(n):
        words = rng.choice(PROSE).split()
        rng.shuffle(words)  # distinct documents that still read as English to the filters
        text = f"Entry {i}. " + " ".join(words) + "."
        texts.append(rng.choice([text, text, f"<p>{text}</p>", f"{text} Mail x{i}@mailbox.org.", "Too short."]))
    return corpus_of(texts)
