"""Document quality filters: Gopher/C4 quality heuristics and Gopher repetition heuristics,
computed from one tokenization (`quality_signals`) and applied in order (`first_failure`)."""

from __future__ import annotations

import re
from collections import Counter

from lmpipe.params import CleanParams

# Repetition runs before the other quality filters, as in FineWeb's pipeline: spam made of one
# repeated line fails several filters, and the most specific one should get the blame.
REPETITION_FILTERS = ["dup_paras", "dup_lines", "top_ngrams", "dup_ngrams"]
QUALITY_FILTERS = ["word_len", "symbols", "punct_lines", "alpha", "english"]
DEDUP_FILTERS = ["exact_dup", "near_dup"]
FILTER_ORDER = ["length", *REPETITION_FILTERS, *QUALITY_FILTERS, *DEDUP_FILTERS]
# What the corpus-wide passes keep per document is a few fixed-width codes, never Python objects:
# the filter that dropped it is its FILTER_ORDER index + 1 (0 = kept).
CODE = {name: i + 1 for i, name in enumerate(FILTER_ORDER)}

# A word is a whitespace-delimited token trimmed of leading and trailing punctuation; tokens that
# are punctuation or symbols only are not words (Gopher's rule).
_WORD = re.compile(r"\w(?:\S*\w)?")
_LETTER_TOKEN = re.compile(r"\S*?[^\W\d_]\S*")  # a token with at least one letter
_TERMINAL = (".", "!", "?", '"', "'", "\u201d", "\u2019", "\u2026")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")

# The most frequent English function words. Their share of a document's words is ~0.4-0.5 for
# English prose and near 0 for other languages, gibberish and keyword lists (cf. dolma's and
# Gopher's stop-word rules); unlike a language-ID model it needs nothing downloaded.
STOP_WORDS = frozenset(
    """a about after all also an and any are as at be because been but by can could did do does
    for from had has have he her him his how i if in into is it its just me more most my no not
    now of on one only or other our out over she so some such than that the their them then there
    these they this those through to too up us very was we were what when where which while who
    will with would you your""".split()
)


def quality_signals(text: str) -> dict[str, float]:
    """Every number the quality and repetition filters look at, from one tokenization."""
    tokens = len(text.split())
    words = _WORD.findall(text)
    n = len(words)
    lower = [w.lower() for w in words]
    lines = [line for line in text.split("\n") if line.strip()]
    paragraphs = [para for para in _PARAGRAPH_BREAK.split(text) if para.strip()]
    chars = max(len(text), 1)
    signals = {
        "chars": len(text),
        "words": n,
        "mean_word_len": sum(map(len, words)) / n if n else 0.0,
        "symbol_ratio": (text.count("#") + text.count("...") + text.count("\u2026")) / max(n, 1),
        "punct_line_share": sum(line.rstrip().endswith(_TERMINAL) for line in lines) / max(len(lines), 1),
        "alpha_share": len(_LETTER_TOKEN.findall(text)) / max(tokens, 1),
        "stopword_share": sum(w in STOP_WORDS for w in lower) / max(n, 1),
    }
    for name, units in (("line", lines), ("para", paragraphs)):
        dup, dup_chars = _duplicates(units)
        signals[f"dup_{name}_share"] = dup / max(len(units), 1)
        signals[f"dup_{name}_char_share"] = dup_chars / chars
    for k in (2, 3, 4):
        top = _top_ngram_chars(lower, k)
        signals[f"top_{k}gram_share"] = top / chars
        if not top:  # a k-gram seen 3 times means its first (k-1)-gram was too
            signals.update({f"top_{j}gram_share": 0.0 for j in range(k + 1, 5)})
            break
    signals["dup_10gram_share"] = _duplicate_ngram_chars(lower, 10) / chars
    return signals


def _duplicates(units: list[str]) -> tuple[int, int]:
    """How many units repeat an earlier one, and how many characters those repeats hold."""
    seen: set[str] = set()
    dup = dup_chars = 0
    for unit in units:
        if unit in seen:
            dup += 1
            dup_chars += len(unit)
        else:
            seen.add(unit)
    return dup, dup_chars


def _top_ngram_chars(words: list[str], k: int) -> int:
    """Characters covered by the most frequent word k-gram (Gopher's top n-gram share), counted
    only when it occurs at least three times: Gopher's thresholds assume documents of 50+ words,
    and in a short one a phrase said twice ("What is the capital of X? The capital of X is Y.")
    already covers a fifth of the text without being repetitive."""
    if len(words) < 3 * k:
        return 0
    gram, count = Counter(zip(*(words[i:] for i in range(k)))).most_common(1)[0]
    return (sum(map(len, gram)) + k - 1) * count if count >= 3 else 0


def _duplicate_ngram_chars(words: list[str], k: int) -> int:
    """Characters of the words in k-grams that repeat an earlier k-gram, each word counted once
    (Gopher's duplicate n-gram fraction: after a repeat, skip past it)."""
    seen: set[tuple[str, ...]] = set()
    repeated = i = 0
    while i <= len(words) - k:
        gram = tuple(words[i : i + k])
        if gram in seen:
            repeated += sum(map(len, gram))
            i += k
        else:
            seen.add(gram)
            i += 1
    return repeated


# (filter, signal, bound, param), in the order applied: a document fails a "min" check when the
# signal is below the param and a "max" check when it is above.
CHECKS = [
    ("length", "words", "min", "min_words"),
    ("length", "words", "max", "max_words"),
    ("length", "chars", "max", "max_chars"),
    ("dup_paras", "dup_para_share", "max", "max_dup_para_share"),
    ("dup_paras", "dup_para_char_share", "max", "max_dup_para_char_share"),
    ("dup_lines", "dup_line_share", "max", "max_dup_line_share"),
    ("dup_lines", "dup_line_char_share", "max", "max_dup_line_char_share"),
    ("top_ngrams", "top_2gram_share", "max", "max_top_2gram_share"),
    ("top_ngrams", "top_3gram_share", "max", "max_top_3gram_share"),
    ("top_ngrams", "top_4gram_share", "max", "max_top_4gram_share"),
    ("dup_ngrams", "dup_10gram_share", "max", "max_dup_10gram_share"),
    ("word_len", "mean_word_len", "min", "min_mean_word_len"),
    ("word_len", "mean_word_len", "max", "max_mean_word_len"),
    ("symbols", "symbol_ratio", "max", "max_symbol_word_ratio"),
    ("punct_lines", "punct_line_share", "min", "min_punct_line_share"),
    ("alpha", "alpha_share", "min", "min_alpha_share"),
    ("english", "stopword_share", "min", "min_stopword_share"),
]


def first_failure(s: dict[str, float], p: CleanParams) -> tuple[str, str]:
    """(filter name, detail) of the first check the signals fail, else ("", "")."""
    for name, signal, bound, param in CHECKS:
        value, limit = s[signal], getattr(p, param)
        if value < limit if bound == "min" else value > limit:
            return name, f"{signal}={value:.3g} {'<' if bound == 'min' else '>'} {param}={limit}"
    return "", ""
