"""Document quality filters: Gopher/C4 quality heuristics and Gopher repetition heuristics for
prose, The Stack's heuristics for code documents, computed from one tokenization
(`quality_signals`) and applied in order (`first_failure`).

Real technical text is hard-wrapped and mixes prose with code, so the prose rules look at the
prose lines only (lmpipe.cleaning.code tells the code lines apart), and C4's line-punctuation
rule weighs each line by its words, the lines of a wrapped paragraph counting with its last.
"""

from __future__ import annotations

import re
from collections import Counter

from lmpipe.chat import without_chat_tokens
from lmpipe.cleaning.code import code_block_lines, is_code_document
from lmpipe.params import CleanParams

# Repetition runs before the other quality filters, as in FineWeb's pipeline: spam made of one
# repeated line fails several filters, and the most specific one should get the blame.
REPETITION_FILTERS = ["dup_paras", "dup_lines", "top_ngrams", "dup_ngrams"]
QUALITY_FILTERS = ["code", "word_len", "symbols", "punct_lines", "alpha", "english"]
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
# Gopher's symbols (hash, ellipsis), and U+FFFD, which stands for bytes that were not text
_SYMBOLS = ("#", "...", "\u2026", "\ufffd")
# Lines without a letter or digit (" ." between the paragraphs of a Debian copyright field, "}",
# "----") hold no content, so their repeats are not repeated content.
_CONTENT = re.compile(r"[^\W_]")

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


def quality_signals(text: str, min_code_share: float = 0.5) -> dict[str, float]:
    """Every number the filters look at. "code" is 1.0 for a code document, which also gets the
    code signals; the prose signals of a prose document leave out its code blocks. Chat tokens
    (a chat transcript in the corpus) count as line breaks: markup, not words."""
    text = without_chat_tokens(text)
    lines = text.split("\n")
    words = _WORD.findall(text)
    signals = {"chars": len(text), "words": len(words), "code": 0.0}
    prose, prose_words = text, words
    if is_code_document(lines, min_code_share):
        signals |= {"code": 1.0} | _code_signals(text, lines)
    else:
        code = code_block_lines(lines, min_code_share)
        if any(code):
            prose = "\n".join(line for line, c in zip(lines, code) if not c)
            prose_words = _WORD.findall(prose)
    lower = [w.lower() for w in words]
    return signals | _prose_signals(prose, prose_words) | _repetition_signals(text, lower)


def _prose_signals(prose: str, words: list[str]) -> dict[str, float]:
    n = len(words)
    return {
        "mean_word_len": sum(map(len, words)) / n if n else 0.0,
        "symbol_ratio": sum(map(prose.count, _SYMBOLS)) / max(n, 1),
        "punct_line_share": _punct_word_share(prose),
        "alpha_share": len(_LETTER_TOKEN.findall(prose)) / max(len(prose.split()), 1),
        "stopword_share": sum(w.lower() in STOP_WORDS for w in words) / max(n, 1),
    }


def logical_lines(text: str) -> list[str]:
    """The lines of `text` with hard wraps undone: a line that does not end a sentence continues on
    the next line of its paragraph (a blank line ends a paragraph)."""
    out: list[str] = []
    current: list[str] = []
    for line in text.split("\n"):
        line = line.strip()
        if line:
            current.append(line)
        if current and (not line or line.endswith(_TERMINAL)):
            out.append(" ".join(current))
            current = []
    if current:
        out.append(" ".join(current))
    return out


def _punct_word_share(text: str) -> float:
    """C4's line rule after unwrapping, weighted by words: the share of words in logical lines
    that end in terminal punctuation."""
    total = punctuated = 0
    for line in logical_lines(text):
        n = len(line.split())
        total += n
        punctuated += n if line.endswith(_TERMINAL) else 0
    return punctuated / max(total, 1)


def _repetition_signals(text: str, lower: list[str]) -> dict[str, float]:
    # Gopher's duplicate lines, on logical lines: the wrapped lines of two similar paragraphs (two
    # licence notices) repeat one another without the paragraphs repeating
    content = [line for line in logical_lines(text) if _CONTENT.search(line)]
    paragraphs = [para for para in _PARAGRAPH_BREAK.split(text) if para.strip()]
    chars = max(len(text), 1)
    signals = {}
    for name, units in (("line", content), ("para", paragraphs)):
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


def _code_signals(text: str, lines: list[str]) -> dict[str, float]:
    """The Stack's code filters: minified or generated files have very long lines, data files
    (hex dumps, base64) few letters and digits."""
    lengths = [len(line) for line in lines if line.strip()]
    return {
        "max_line_chars": max(lengths, default=0),
        "mean_line_chars": sum(lengths) / max(len(lengths), 1),
        "alnum_share": sum(ch.isalnum() for ch in text) / max(len(text), 1),
    }


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
    ("code", "max_line_chars", "max", "max_code_line_chars"),
    ("code", "mean_line_chars", "max", "max_code_mean_line_chars"),
    ("code", "alnum_share", "min", "min_code_alnum_share"),
    ("word_len", "mean_word_len", "min", "min_mean_word_len"),
    ("word_len", "mean_word_len", "max", "max_mean_word_len"),
    ("symbols", "symbol_ratio", "max", "max_symbol_word_ratio"),
    ("punct_lines", "punct_line_share", "min", "min_punct_line_share"),
    ("alpha", "alpha_share", "min", "min_alpha_share"),
    ("english", "stopword_share", "min", "min_stopword_share"),
]
# The checks a code document gets under clean.keep_code; every other document gets the rest.
CODE_RULES = ("length", "code")


def first_failure(s: dict[str, float], p: CleanParams) -> tuple[str, str]:
    """(filter name, detail) of the first check the signals fail, else ("", "")."""
    code_rules = bool(s["code"]) and p.keep_code
    for name, signal, bound, param in CHECKS:
        if not (name == "length" or (name in CODE_RULES) == code_rules):
            continue
        value, limit = s[signal], getattr(p, param)
        if value < limit if bound == "min" else value > limit:
            return name, f"{signal}={value:.3g} {'<' if bound == 'min' else '>'} {param}={limit}"
    return "", ""
