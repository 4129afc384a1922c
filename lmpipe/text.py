"""Text normalization and hashing: the one place that decides when two texts are "the same".

Every hash here is blake2b through hashlib, never Python's `hash()`, which is salted per process
and would make splits, dedup and leakage checks differ from run to run.
"""

from __future__ import annotations

import hashlib
import re

_NON_WORD = re.compile(r"[\W_]+")
_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


def digest64(text: str, *, signed: bool = False) -> int:
    """A 64-bit hash of `text` (signed: fits an int64 column)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=signed)


def unit_interval(seed: int, key: str) -> float:
    """A number in [0, 1) that depends only on (seed, key): a row's side of a split never depends
    on its position or its neighbours."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def dedup_words(text: str) -> list[str]:
    """Case-folded words without punctuation, so trivial variants of a document collide (dedup)."""
    return _NON_WORD.sub(" ", text.casefold()).split()


def text_key(text: str) -> str:
    """Key for leakage checks between task splits: case, punctuation and spacing do not count."""
    return format(digest64(" ".join(_PUNCT.sub(" ", text.lower()).split())), "016x")


def spacing_key(text: str) -> int:
    """Key for "the same text up to case and whitespace" (the clean gate's uniqueness check)."""
    return digest64(_SPACE.sub(" ", text.lower()), signed=True)
