"""Corpus cleaning: repair each document, drop low-quality ones, deduplicate, scrub PII, split.

The library behind `python -m stages.clean`. One call, `clean_corpus(corpus, params, seed)`, runs

1. per document, in parallel (`datasets.Dataset.map(num_proc=..., batched=True)`, chunked so a
   large corpus streams through Arrow instead of one Python list):
   repairs   ftfy (mojibake) -> HTML to text -> Unicode normalization -> control characters ->
             whitespace -> PII placeholders (<EMAIL>, <PHONE>, <IP>)
   filters   Gopher/C4 quality heuristics and Gopher repetition heuristics, first failure wins
   keys      a hash of the normalized text (exact dedup) and a MinHash signature (near dedup)
2. sequentially, in input order: exact dedup, then MinHash-LSH near dedup; the first document of
   each duplicate cluster is kept, so the result does not depend on how work was sharded;
3. a train/validation split by a hash of (seed, id): stable when documents are added or removed.

Anchors: datatrove's GopherQualityFilter / GopherRepetitionFilter / C4QualityFilter and dolma's
taggers. We reimplement the heuristics instead of calling datatrove because its English word
splitting needs spaCy and its exact dedup is a three-step on-disk pipeline: `bench/clean.py` runs
both on the same documents, and ours is an order of magnitude faster per core while agreeing on
>99% of keep/drop decisions.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from html.parser import HTMLParser
from typing import Literal

import datasets
import ftfy
import numpy as np
import pandas as pd
from datasketch import LeanMinHash, MinHash, MinHashLSH
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stages.artifacts import StageError

# --- parameters ---------------------------------------------------------------------------------


class MinHashParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # estimated Jaccard similarity of shingle sets at or above which a doc is a near-duplicate
    threshold: float = Field(0.85, ge=0.1, le=1.0)
    # more permutations = a tighter Jaccard estimate, linearly more hashing time
    num_perm: int = Field(128, ge=16, le=1024)
    # Characters per shingle. Character shingles, not word shingles: a typo then costs a few
    # shingles and a different word (another name, another adjective) many, which is what tells
    # an edited copy from another document made from the same template. On the world (25-100-word
    # documents) 4 chars at 0.85 finds ~99% of near-duplicates and drops ~1% of clean documents
    # (templated twins); word 2- or 3-grams at their best trade-off found ~97% and dropped ~2%.
    shingle_size: int = Field(4, ge=1, le=64)


class CleanParams(BaseModel):
    """Knobs of the clean stage. A filter whose threshold is at its neutral bound (a minimum of 0,
    a maximum of 1 for shares) never drops anything, which is how a single filter is switched off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # repairs
    fix_unicode: bool = True  # ftfy: mojibake, broken UTF-8, terminal escapes
    normalization: Literal["NFC", "NFKC", "none"] = "NFC"  # NFKC also folds width, ligatures, ...
    strip_html: bool = True
    remove_control: bool = True
    normalize_whitespace: bool = True
    pii: bool = True

    # documents of these domains skip the quality and repetition filters (still repaired,
    # deduplicated and scrubbed, and dropped if empty): the world's "encoded" domain is
    # leetspeak/rot13 on purpose
    keep_domains: list[str] = ["encoded"]

    # quality (Gopher, C4)
    min_words: int = Field(10, ge=0)
    max_words: int = Field(100_000, ge=1)
    max_chars: int = Field(1_000_000, ge=1)  # also the clean gate's ceiling on kept text length
    min_mean_word_len: float = Field(3.0, ge=0, le=100)
    max_mean_word_len: float = Field(10.0, ge=1, le=1000)
    max_symbol_word_ratio: float = Field(0.1, ge=0, le=100)  # "#" and ellipses per word
    min_punct_line_share: float = Field(0.3, ge=0, le=1)  # lines ending in . ! ? " ' (C4)
    min_alpha_share: float = Field(0.8, ge=0, le=1)  # words with a letter in them
    min_stopword_share: float = Field(0.15, ge=0, le=1)  # English heuristic, no model needed

    # repetition (Gopher table A1)
    max_dup_para_share: float = Field(0.3, ge=0, le=1)
    max_dup_para_char_share: float = Field(0.2, ge=0, le=1)
    max_dup_line_share: float = Field(0.3, ge=0, le=1)
    max_dup_line_char_share: float = Field(0.2, ge=0, le=1)
    # Share of characters in the most frequent word 2/3/4-gram (if seen 3+ times). Gopher's
    # 0.20/0.18/0.16 were set for 50+-word web pages; on the world's 25-100-word documents they
    # dropped 2% of clean ones (dialogues whose answers repeat the question), these drop 0.2%.
    max_top_2gram_share: float = Field(0.25, ge=0, le=1)
    max_top_3gram_share: float = Field(0.30, ge=0, le=1)
    max_top_4gram_share: float = Field(0.30, ge=0, le=1)
    # Share of characters in word 10-grams that repeat an earlier one: copied passages, which the
    # top n-grams miss when a long sentence repeats. (Gopher checks 5- to 10-grams at 0.15 to 0.10,
    # again for long pages; on the world that drops 1.4% of clean documents, this 0.01%.)
    max_dup_10gram_share: float = Field(0.30, ge=0, le=1)

    # deduplication
    exact_dedup: bool = True
    minhash: MinHashParams = MinHashParams()

    # output
    validation_share: float = Field(0.05, ge=0, le=0.5)
    dropped_sample: int = Field(20, ge=0, le=10_000)  # dropped docs kept per filter for review

    # execution: per-document work runs in num_proc processes, batch_size docs at a time
    num_proc: int = Field(2, ge=1, le=256)
    batch_size: int = Field(1000, ge=1, le=1_000_000)

    # quality gate (read by stages/clean.py): no single filter may drop more than this share
    max_drop_share: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _bounds_in_order(self) -> CleanParams:
        if self.min_words > self.max_words:
            raise ValueError(f"min_words={self.min_words} exceeds max_words={self.max_words}")
        if self.min_mean_word_len > self.max_mean_word_len:
            raise ValueError(
                f"min_mean_word_len={self.min_mean_word_len} exceeds max_mean_word_len={self.max_mean_word_len}"
            )
        return self


# Repetition runs before the other quality filters, as in FineWeb's pipeline: spam made of one
# repeated line fails several filters, and the most specific one should get the blame.
REPETITION_FILTERS = ["dup_paras", "dup_lines", "top_ngrams", "dup_ngrams"]
QUALITY_FILTERS = ["word_len", "symbols", "punct_lines", "alpha", "english"]
DEDUP_FILTERS = ["exact_dup", "near_dup"]
FILTER_ORDER = ["length", *REPETITION_FILTERS, *QUALITY_FILTERS, *DEDUP_FILTERS]
REPAIRS = ["unicode", "html", "control", "whitespace", "pii"]
PII_KINDS = ["email", "phone", "ip"]


# --- repairs ------------------------------------------------------------------------------------

# ftfy does only the repairs here; HTML entities, control characters and normalization are our
# own steps, so each repair is counted (and scored against ground truth) on its own, and
# legitimate typography (curly quotes, full-width forms) is left alone.
_FTFY = ftfy.TextFixerConfig(
    unescape_html=False, remove_control_chars=False, normalization=None, uncurl_quotes=False,
    fix_character_width=False, fix_latin_ligatures=False, fix_line_breaks=False, explain=False,
)
# Printable ASCII cannot hold mojibake or terminal escapes: skip ftfy, the slowest step, for it.
_NEEDS_FTFY = re.compile(r"[^\x20-\x7e\n\t]")

_HTML_TAG_NAMES = (
    "a|abbr|article|aside|b|blockquote|body|br|button|caption|center|code|dd|div|dl|dt|em|"
    "footer|font|form|h[1-6]|head|header|hr|html|i|iframe|img|input|label|li|link|main|meta|nav|"
    "noscript|ol|option|p|pre|script|section|select|small|span|strong|style|sub|sup|table|tbody|"
    "td|th|thead|title|tr|u|ul"
)
# Only known tag names count as HTML, so "a <b and c> d" in prose and our own <EMAIL> survive.
_ATTRIBUTES = r"""(?:\s+[\w:.-]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'<>=`]+))?)*\s*"""
HTML_TAG = re.compile(
    rf"<(?:(?:{_HTML_TAG_NAMES}){_ATTRIBUTES}/?|/(?:{_HTML_TAG_NAMES})\s*|!--.*?--|!doctype[^<>]*)>", re.I | re.S
)
HTML_ENTITY = re.compile(r"&(?:#\d{1,7}|#x[0-9a-f]{1,6}|[a-z][a-z0-9]{1,31});", re.I)
_BLOCK_TAGS = frozenset(
    "address article aside blockquote br dd div dl dt footer form h1 h2 h3 h4 h5 h6 header hr li "
    "main nav ol p pre section table tr ul".split()
)
_VOID_TAGS = frozenset("area base br col embed hr img input link meta param source track wbr".split())
# Not page text: code, metadata, and the chrome around the main text (navigation, footers, forms,
# cookie banners), recognised by tag or by class/id names, the cues boilerplate removers such as
# jusText and trafilatura use. Left in, "Home | About | Contact" would repeat across thousands
# of pages.
_HIDDEN_TAGS = frozenset("script style head title noscript iframe template svg nav footer aside form select".split())
_BOILERPLATE_NAME = re.compile(r"nav|menu|footer|cookie|consent|banner|sidebar|breadcrumb|advert", re.I)


class _HTMLText(HTMLParser):
    """Visible main text of an HTML page: block elements become line breaks, chrome vanishes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.open: list[tuple[str, bool]] = []  # open elements and whether each hides its content
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")
        if tag in _VOID_TAGS:
            return
        hides = tag in _HIDDEN_TAGS or any(
            name in ("class", "id") and value and _BOILERPLATE_NAME.search(value) for name, value in attrs
        )
        self.open.append((tag, hides))
        self.hidden += hides

    def handle_startendtag(self, tag: str, attrs) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")
        # Close everything up to the matching open element (browsers do the same with unclosed
        # <p> or <li>); an end tag that matches nothing is ignored.
        for depth in range(len(self.open) - 1, -1, -1):
            if self.open[depth][0] == tag:
                self.hidden -= sum(hides for _, hides in self.open[depth:])
                del self.open[depth:]
                break

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def html_to_text(text: str) -> str:
    if HTML_TAG.search(text):
        parser = _HTMLText()
        parser.feed(text)
        parser.close()
        return "".join(parser.parts)
    if "&" in text and HTML_ENTITY.search(text):
        return html.unescape(text)
    return text


# C0/C1 controls except tab and newlines, plus invisible format characters that are used to hide
# or reorder text (zero-width space, bidi overrides, BOM, soft hyphen). ZWJ/ZWNJ stay: scripts
# and emoji need them.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
# Whitespace other than a lone space or newline (matching every single space would make this the
# slowest step), spaces next to a newline, and runs of blank lines.
_ODD_SPACE = re.compile(r"[^\S\n]{2,}|[^\S \n]")
_SPACE_AROUND_NEWLINE = re.compile(r" \n ?|\n ")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    text = _ODD_SPACE.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


# PII, replaced in this order: emails, IPs, phones (so that "10.0.0.12" is not read as a phone).
EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w.]\w)")
IPV6 = re.compile(
    r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])"  # full form
    r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:?){1,6}(?<!:)(?![\w:])"  # a::b form
)
# Phone candidates: optional +country code, optional (area), then 2-4 digit groups joined by one
# separator. _is_phone then asks for enough digits, so years and prices stay.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,5}){1,4}(?![\w-]|\.\d)"
)
_DIGIT = re.compile(r"\d")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")


def _is_phone(candidate: str) -> bool:
    digits = sum(ch.isdigit() for ch in candidate)
    if not 7 <= digits <= 15 or _DATE.fullmatch(candidate):
        return False
    marked = candidate.startswith("+") or "(" in candidate
    return digits >= 10 or marked or re.fullmatch(r"\d{3}[ .-]\d{4}", candidate) is not None


def scrub_pii(text: str) -> tuple[str, dict[str, int]]:
    counts = dict.fromkeys(PII_KINDS, 0)

    def sub(kind: str, placeholder: str):
        def replace(m: re.Match) -> str:
            if kind == "phone" and not _is_phone(m.group()):
                return m.group()
            counts[kind] += 1
            return placeholder

        return replace

    # cheap guards first: most documents hold no "@", no ":" and no digit, and the patterns are
    # tried at every position of those that do
    if "@" in text:
        text = EMAIL.sub(sub("email", "<EMAIL>"), text)
    if _DIGIT.search(text):
        text = IPV4.sub(sub("ip", "<IP>"), text)
        if ":" in text:
            text = IPV6.sub(sub("ip", "<IP>"), text)
        text = _PHONE.sub(sub("phone", "<PHONE>"), text)
    return text, counts


def repair(text: str, p: CleanParams) -> tuple[str, list[str], dict[str, int]]:
    """Repaired text, the repairs that changed it (names from REPAIRS), and PII counts by kind."""
    done = []

    def step(name: str, new: str) -> str:
        if new != text:
            done.append(name)
        return new

    if p.fix_unicode and _NEEDS_FTFY.search(text):
        text = step("unicode", ftfy.fix_text(text, _FTFY))
    if p.strip_html:
        text = step("html", html_to_text(text))
    if p.normalization != "none" and not text.isascii():
        text = step("unicode", unicodedata.normalize(p.normalization, text))
    if p.remove_control:
        text = step("control", CONTROL.sub("", text))
    if p.normalize_whitespace:
        text = step("whitespace", normalize_whitespace(text))
    counts = dict.fromkeys(PII_KINDS, 0)
    if p.pii:
        scrubbed, counts = scrub_pii(text)
        text = step("pii", scrubbed)
    return text, sorted(set(done), key=REPAIRS.index), counts


# --- quality and repetition filters -------------------------------------------------------------

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


# --- dedup keys ---------------------------------------------------------------------------------

_NON_WORD = re.compile(r"[\W_]+")


def dedup_words(text: str) -> list[str]:
    """Case-folded words without punctuation, so trivial variants of a document collide."""
    return _NON_WORD.sub(" ", text.casefold()).split()


def exact_key(words: list[str]) -> str:
    # hashlib, never hash(): Python salts str hashes per process, which would break determinism
    return hashlib.blake2b(" ".join(words).encode(), digest_size=16).hexdigest()


# Odd 64-bit multipliers, one per position in a shingle (Fibonacci hashing): a shingle's hash is
# the wrapped sum of its characters' codes times these, computed for all shingles at once in numpy
# instead of hashing each shingle string in Python.
_POSITION_MIX = (np.arange(1, 65, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)


def shingle_hashes(words: list[str], k: int) -> list[int]:
    """32-bit hashes of the character k-grams of the normalized text (one shingle if it is shorter)."""
    codes = np.frombuffer(" ".join(words).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if not len(codes):
        return []
    k = min(k, len(codes))
    n = len(codes) - k + 1
    mixed = np.zeros(n, dtype=np.uint64)
    for j in range(k):
        mixed += codes[j : j + n] * _POSITION_MIX[j]
    mixed ^= mixed >> np.uint64(29)
    return ((mixed >> np.uint64(32)) ^ (mixed & np.uint64(0xFFFFFFFF))).tolist()


@lru_cache(maxsize=4)
def _minhash(num_perm: int, seed: int) -> MinHash:
    # One MinHash per process, cleared for each document: drawing (or even validating) the
    # permutations costs more than hashing a short document. Shingles arrive hashed, so its hash
    # function is int().
    return MinHash(num_perm=num_perm, seed=seed, hashfunc=int, scheme="affine32")


def minhash_signature(words: list[str], mp: MinHashParams, seed: int) -> bytes:
    """The document's MinHash hash values (uint32, datasketch's affine32 scheme) as bytes, which
    Arrow stores as one value instead of num_perm list items."""
    m = _minhash(mp.num_perm, seed)
    m.clear()
    hashes = shingle_hashes(words, mp.shingle_size)
    # datasketch permutes a whole batch at once (shingles x num_perm values): bound its memory on
    # long documents by feeding at most 8192 shingles per call
    for start in range(0, len(hashes), 8192):
        m.update_batch(hashes[start : start + 8192])
    return m.hashvalues.tobytes()


# --- per-document pass --------------------------------------------------------------------------


def _clean_batch(batch: dict[str, list], p: CleanParams, seed: int) -> dict[str, list]:
    """datasets.map function: repaired text, drop decision and dedup keys for each document."""
    out: dict[str, list] = {k: [] for k in ("text", "dropped_by", "detail", "repairs", "dedup_key", "minhash")}
    out.update({f"pii_{k}": [] for k in PII_KINDS})
    keep_domains = set(p.keep_domains)
    for text, domain in zip(batch["text"], batch["domain"]):
        text, repairs, pii = repair(text, p)
        if domain not in keep_domains:
            dropped_by, detail = first_failure(quality_signals(text), p)
        else:  # exempt from the filters, but nothing is left to learn from an empty document
            dropped_by, detail = ("length", "empty after repairs") if not text else ("", "")
        words = dedup_words(text)
        out["text"].append(text)
        out["dropped_by"].append(dropped_by)
        out["detail"].append(detail)
        out["repairs"].append(",".join(repairs))
        # only documents still in the running need dedup keys
        out["dedup_key"].append("" if dropped_by else exact_key(words))
        sign = p.minhash.enabled and not dropped_by
        out["minhash"].append(minhash_signature(words, p.minhash, seed) if sign else b"")
        for kind in PII_KINDS:
            out[f"pii_{kind}"].append(pii[kind])
    return out


def _per_document(corpus: pd.DataFrame, p: CleanParams, seed: int) -> pd.DataFrame:
    ds = datasets.Dataset.from_pandas(corpus[["text", "domain"]].astype(str), preserve_index=False)
    # Forking workers costs about a second: not worth it for a corpus that fits in one batch.
    num_proc = p.num_proc if p.num_proc > 1 and len(ds) > p.batch_size else None
    ds = ds.map(
        _clean_batch, batched=True, batch_size=p.batch_size, num_proc=num_proc,
        fn_kwargs={"p": p, "seed": seed}, remove_columns=["text", "domain"],
        load_from_cache_file=False, desc="clean",
    )
    return ds.to_pandas()


# --- deduplication (sequential, in input order) -------------------------------------------------


def exact_duplicates(keys: list[str], alive: list[bool]) -> dict[int, int]:
    """Row of each later copy -> row of the first document with the same key."""
    first: dict[str, int] = {}
    copies = {}
    for i, (key, ok) in enumerate(zip(keys, alive)):
        if ok and (j := first.setdefault(key, i)) != i:
            copies[i] = j
    return copies


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with the most rows per band (fewest chance candidates) that still proposes a
    pair at the threshold with probability >= 0.99. datasketch's own choice balances misses against
    false candidates; since candidates are verified anyway, misses are what to avoid (at 0.85 and
    128 permutations its default misses 31% of the pairs right at the threshold)."""
    def proposed(rows: int) -> float:
        return 1 - (1 - threshold**rows) ** (num_perm // rows)

    rows = max([r for r in range(2, num_perm + 1) if proposed(r) >= 0.99], default=1)
    return num_perm // rows, rows


def near_duplicates(signatures: list[bytes], alive: list[bool], mp: MinHashParams, seed: int) -> dict:
    """Row of each near-duplicate -> (row of its cluster's kept document, row of the earlier
    document it resembles most directly, estimated Jaccard with that one).

    Clusters are connected components of "estimated Jaccard >= threshold", built in input order:
    a document that resembles any earlier one (kept or already dropped) joins that one's cluster,
    whose first document is the one kept. Matching dropped documents too catches chains (an edited
    copy of a copy). LSH only proposes candidates; each is confirmed on the signatures."""
    lsh = MinHashLSH(num_perm=mp.num_perm, params=lsh_bands(mp.threshold, mp.num_perm))
    seen: dict[int, LeanMinHash] = {}
    root: dict[int, int] = {}
    found = {}
    for i, (raw, ok) in enumerate(zip(signatures, alive)):
        if not ok:
            continue
        sig = LeanMinHash(seed=seed, hashvalues=np.frombuffer(raw, dtype=np.uint32), scheme="affine32")
        matches = sorted((j, sim) for j in lsh.query(sig) if (sim := sig.jaccard(seen[j])) >= mp.threshold)
        root[i] = root[matches[0][0]] if matches else i
        if matches:
            found[i] = (root[i], *matches[0])
        lsh.insert(i, sig)
        seen[i] = sig
    return found


# --- split and entry point ----------------------------------------------------------------------


def validation_mask(ids: pd.Series, share: float, seed: int) -> pd.Series:
    """A document's side of the split depends only on (seed, id), not on position or neighbours."""

    def unit(doc_id: str) -> float:
        digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    return ids.map(unit) < share


@dataclass
class CleanResult:
    train: pd.DataFrame  # the input columns (id, text, source, domain, ...) with cleaned text
    validation: pd.DataFrame
    stats: dict
    dropped: dict[str, pd.DataFrame]  # filter -> first dropped docs (id, text, detail)
    # one row per input document, in input order: id, text (after repairs), dropped_by ("" when
    # kept), detail, repairs (comma-joined names from REPAIRS), duplicate_of (row of the kept
    # document a dropped duplicate belongs to, else -1)
    decisions: pd.DataFrame

    @property
    def kept_ids(self) -> set[str]:
        return set(self.decisions.loc[self.decisions["dropped_by"] == "", "id"])


REQUIRED_COLUMNS = ["id", "text", "source", "domain"]


def _check_input(corpus: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in corpus.columns]
    if missing:
        raise StageError(f"corpus lacks column(s) {missing}; it has {list(corpus.columns)}")
    if corpus.empty:
        raise StageError("the corpus has no documents: nothing to clean")
    bad = corpus["text"].map(lambda t: not isinstance(t, str))
    if bad.any():
        raise StageError(f"{int(bad.sum())} document(s) have non-string text, e.g. ids {list(corpus['id'][bad][:5])}")
    dup = corpus["id"].duplicated()
    if dup.any():
        raise StageError(f"{int(dup.sum())} duplicate document id(s), e.g. {list(corpus['id'][dup][:5])}")


def clean_corpus(corpus: pd.DataFrame, p: CleanParams, seed: int) -> CleanResult:
    _check_input(corpus)
    corpus = corpus.reset_index(drop=True)
    ids = corpus["id"].astype(str)
    docs = _per_document(corpus, p, seed)
    dropped_by, detail = docs["dropped_by"].tolist(), docs["detail"].tolist()
    duplicate_of = [-1] * len(docs)  # row of the kept document a dropped duplicate belongs to
    if p.exact_dedup:
        alive = [not d for d in dropped_by]
        for i, j in exact_duplicates(docs["dedup_key"].tolist(), alive).items():
            dropped_by[i], detail[i], duplicate_of[i] = "exact_dup", f"duplicate of {ids[j]}", j
    if p.minhash.enabled:
        alive = [not d for d in dropped_by]
        for i, (j, like, sim) in near_duplicates(docs["minhash"].tolist(), alive, p.minhash, seed).items():
            dropped_by[i], duplicate_of[i] = "near_dup", j
            detail[i] = f"near-duplicate of {ids[like]} (jaccard~{sim:.2f})"
    docs = docs.assign(dropped_by=dropped_by, detail=detail, duplicate_of=duplicate_of)

    kept = docs["dropped_by"] == ""
    out = corpus[kept].assign(text=docs.loc[kept, "text"])
    is_val = validation_mask(out["id"].astype(str), p.validation_share, seed)
    decisions = pd.DataFrame({"id": ids, "text": docs["text"], "dropped_by": docs["dropped_by"],
                              "detail": docs["detail"], "repairs": docs["repairs"],
                              "duplicate_of": docs["duplicate_of"]})
    dropped = {
        name: decisions.loc[decisions["dropped_by"] == name, ["id", "text", "detail"]]
        .head(p.dropped_sample).reset_index(drop=True)
        for name in FILTER_ORDER
    }
    repaired = docs["repairs"].str.split(",").explode()
    stats = {
        "docs_in": len(corpus),
        "docs_out": int(kept.sum()),
        "chars_in": int(corpus["text"].str.len().sum()),
        "chars_out": int(out["text"].str.len().sum()),
        "drops": {name: int((docs["dropped_by"] == name).sum()) for name in FILTER_ORDER},
        "pii": {kind: int(docs[f"pii_{kind}"].sum()) for kind in PII_KINDS},
        "repairs": {name: int((repaired == name).sum()) for name in REPAIRS},
        "quality_skipped": int(corpus["domain"].isin(p.keep_domains).sum()),
        "train_docs": int((~is_val).sum()),
        "validation_docs": int(is_val.sum()),
    }
    return CleanResult(
        train=out[~is_val].reset_index(drop=True),
        validation=out[is_val].reset_index(drop=True),
        stats=stats,
        dropped=dropped,
        decisions=decisions,
    )


# --- ground truth (world source) ----------------------------------------------------------------

# Which filters or repairs are meant to handle each kind of injected noise.
REMOVAL_KINDS = {
    "exact_dup": ["exact_dup"],
    "near_dup": ["near_dup"],
    "short": ["length"],
    "gibberish": QUALITY_FILTERS,
    "spam": REPETITION_FILTERS,
}
REPAIR_KINDS = {"html": "html", "mojibake": "unicode", "control": "control", "pii": "pii"}

# Leak detectors for scoring, deliberately looser than the scrubber's patterns so that a format
# the scrubber misses shows up as a miss instead of passing by construction.
_LOOSE_EMAIL = re.compile(r"\S@\S+\.[A-Za-z]{2,}")
_LOOSE_PHONE = re.compile(r"(?:\+|\(\d|\b\d)[\d ().-]{6,}\d")
_PLACEHOLDER = re.compile(r"<(?:EMAIL|PHONE|IP)>")


def still_shows(kind: str, text: str) -> bool:
    """Whether `text` still carries repair noise of `kind`."""
    if kind == "html":
        return HTML_TAG.search(text) is not None or HTML_ENTITY.search(text) is not None
    if kind == "mojibake":
        return ftfy.fix_encoding(text) != text
    if kind == "control":
        return CONTROL.search(text) is not None or "\r" in text
    if kind == "pii":
        text = _PLACEHOLDER.sub(" ", text)
        long_numbers = (m for m in _LOOSE_PHONE.findall(text) if sum(ch.isdigit() for ch in m) >= 9)
        return any(pattern.search(text) for pattern in (_LOOSE_EMAIL, IPV4, IPV6)) or any(long_numbers)
    raise ValueError(f"unknown repair kind {kind!r}")


def score_against_ground_truth(corpus: pd.DataFrame, result: CleanResult) -> dict:
    """Precision and recall of cleaning per injected noise kind, from the world's `noise` column.

    For a removal kind (exact_dup, near_dup, short, gibberish, spam):
      recall    = share of docs carrying the kind that were dropped (by any filter);
      precision = of the docs dropped by the filters meant for the kind (REMOVAL_KINDS), the share
                  that carry it.
    For a repair kind (html, mojibake, control, pii), on the repaired text of every doc:
      recall    = share of docs carrying the kind whose repaired text no longer shows it
                  (`still_shows`: no HTML tags or entities, ftfy.fix_encoding finds nothing,
                  no control characters, no email/phone/IP left);
      precision = of the docs the matching repair changed (REPAIR_KINDS), the share that carry it.
    A filter or repair that never acted has precision 1.0 (it made no false positive).
    Also: "clean_survival", the share of noise-free docs that were kept.

    Which copy of a duplicate pair carries the label is arbitrary (the world shuffles documents)
    while dedup keeps the first in input order; dropping either copy removes the duplication, so
    when dedup kept the labelled copy and dropped its noise-free twin, the drop is credited to the
    labelled copy (`_credit_labelled_copies`).
    """
    if "noise" not in corpus.columns:
        raise StageError("ground truth needs the corpus's `noise` column (world source only)")
    d = result.decisions.reset_index(drop=True)
    noise = corpus["noise"].fillna("").astype(str).reset_index(drop=True)
    kinds = noise.str.split(",").map(lambda ks: {k for k in ks if k})
    dropped_by = _credit_labelled_copies(d, kinds)
    dropped = dropped_by != ""
    repairs = d["repairs"].str.split(",").map(set)
    scores: dict = {}

    def rates(carries: pd.Series, fixed: pd.Series, acted: pd.Series) -> dict:
        return {
            "precision": float(carries[acted].mean()) if acted.any() else 1.0,
            "recall": float(fixed[carries].mean()) if carries.any() else 1.0,
            "docs": int(carries.sum()),
        }

    for kind, filters in REMOVAL_KINDS.items():
        carries = kinds.map(lambda ks, kind=kind: kind in ks)
        scores[kind] = rates(carries, dropped, dropped_by.isin(filters))
    for kind, repair_name in REPAIR_KINDS.items():
        carries = kinds.map(lambda ks, kind=kind: kind in ks)
        fixed = ~d["text"].map(lambda t, kind=kind: still_shows(kind, t))
        scores[kind] = rates(carries, fixed, repairs.map(lambda rs, r=repair_name: r in rs))
    clean = kinds.map(len) == 0
    scores["clean_survival"] = float((~dropped[clean]).mean()) if clean.any() else 1.0
    return scores


def _credit_labelled_copies(d: pd.DataFrame, kinds: pd.Series) -> pd.Series:
    """dropped_by, with each noise-free document that was dropped as a duplicate of a kept copy
    labelled exact_dup/near_dup swapped with that copy (once per kept copy)."""
    dropped_by = d["dropped_by"].copy()
    dup_kinds = {"exact_dup", "near_dup"}
    for i in d.index[d["duplicate_of"] >= 0]:
        j = d.at[i, "duplicate_of"]
        if not kinds[i] and kinds[j] & dup_kinds and dropped_by[j] == "":
            dropped_by[j], dropped_by[i] = dropped_by[i], ""
    return dropped_by
