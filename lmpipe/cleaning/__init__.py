"""Corpus cleaning: repair each document, drop low-quality ones, deduplicate, scrub PII, split.

The library behind `python -m stages.clean`. `clean_parquet(src, out_dir, params, seed)` streams a
parquet corpus of any size through three passes, holding one or two batches of `batch_rows`
documents and a few bytes of state per document, never the corpus:

1. per document, in `num_proc` processes, `batch_size` documents per task:
   repairs   ftfy (mojibake) -> HTML to text -> Unicode normalization -> control characters ->
             whitespace -> PII placeholders (<EMAIL>, <PHONE>, <IP>)
   filters   Gopher/C4 quality heuristics and Gopher repetition heuristics, first failure wins
   keys      an 8-byte hash of the normalized text (exact dedup) and a MinHash signature (near
             dedup), written to disk with one 8-byte key per LSH band;
2. over the whole corpus, on fixed-width arrays: exact dedup (a sort of the keys), then MinHash-LSH
   near dedup (one band at a time, candidates verified on the signatures); the first document of
   each duplicate cluster is kept, so the result depends neither on the batching nor on the
   number of processes;
3. the repaired documents are streamed again and the kept ones written to a train/validation
   split by a hash of (seed, id): stable when documents are added or removed.

`clean_corpus(df, params, seed)` runs the same on an in-memory DataFrame, for tests and notebooks.

Anchors: datatrove's GopherQualityFilter / GopherRepetitionFilter / C4QualityFilter, its MinHash
dedup (signatures and band keys on disk, buckets found by sorting) and dolma's taggers. We
reimplement the heuristics instead of calling datatrove because its English word splitting needs
spaCy and its exact dedup is a three-step on-disk pipeline: `bench/clean.py` runs both on the same
documents, and ours is an order of magnitude faster per core while agreeing on >99% of keep/drop
decisions.
"""

from __future__ import annotations

import contextlib
import html
import multiprocessing
import os
import re
import tempfile
import unicodedata
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path

import ftfy
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasketch import MinHash

from lmpipe.io import StageError, atomic_path
from lmpipe.params import CleanParams, MinHashParams  # noqa: F401  (re-exported)
from lmpipe.runtime import Progress
from lmpipe.text import dedup_words, digest64, unit_interval  # noqa: F401  (re-exported)

# --- parameters ---------------------------------------------------------------------------------


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

def exact_key(words: list[str]) -> int:
    """The exact-dedup key: 8 bytes per document. Two different documents share one with
    probability ~n^2/2^65 (about 1 in 3,700 for a billion documents), the same risk as datatrove's
    64-bit xxhash signatures."""
    return digest64(" ".join(words))


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


def minhash_signature(words: list[str], mp: MinHashParams, seed: int) -> np.ndarray:
    """The document's MinHash hash values (num_perm uint32, datasketch's affine32 scheme)."""
    m = _minhash(mp.num_perm, seed)
    m.clear()
    hashes = shingle_hashes(words, mp.shingle_size)
    # datasketch permutes a whole batch at once (shingles x num_perm values): bound its memory on
    # long documents by feeding at most 8192 shingles per call
    for start in range(0, len(hashes), 8192):
        m.update_batch(hashes[start : start + 8192])
    return m.hashvalues.astype(np.uint32)


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with the most rows per band (fewest chance candidates) that still proposes a
    pair at the threshold with probability >= 0.99. datasketch's own choice balances misses against
    false candidates; since candidates are verified anyway, misses are what to avoid (at 0.85 and
    128 permutations its default misses 31% of the pairs right at the threshold)."""
    def proposed(rows: int) -> float:
        return 1 - (1 - threshold**rows) ** (num_perm // rows)

    rows = max([r for r in range(2, num_perm + 1) if proposed(r) >= 0.99], default=1)
    return num_perm // rows, rows


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise on uint64 (wraps on overflow, as intended)."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) uint64: one 8-byte key per LSH band of each (docs, num_perm) signature. Equal
    bands give equal keys, as datasketch's MinHashLSH buckets do; unequal ones collide with
    probability 2^-64, and candidates are verified on the whole signature anyway."""
    n = len(signatures)
    block = signatures[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    h = np.broadcast_to(np.arange(1, bands + 1, dtype=np.uint64), (n, bands)).copy()
    for r in range(rows):
        h = _mix64(h ^ block[:, :, r])
    return h


# --- per-document pass (parallel, streamed) -----------------------------------------------------

# What the corpus-wide passes keep per document is a few fixed-width codes, never Python objects:
# the filter that dropped it (FILTER_ORDER index + 1; 0 = kept), bit masks of the repairs that
# changed it and (world source) of the noise it carries and still shows after repairs.
CODE = {name: i + 1 for i, name in enumerate(FILTER_ORDER)}


@dataclass
class _Chunk:
    """Per-document results for a run of consecutive documents (one worker task)."""

    text: list[str]  # after repairs
    detail: list[str]  # why a filter dropped it, else ""
    code: np.ndarray  # int8, see CODE
    repairs: np.ndarray  # uint8 bit mask over REPAIRS
    key: np.ndarray  # uint64 exact-dedup key (documents still in the running, else 0)
    signature: np.ndarray | None  # (docs, num_perm) uint32 MinHash values (zeros if dropped)
    bands: np.ndarray | None  # (docs, bands) uint64 LSH band keys
    noise: np.ndarray | None  # uint16 bit mask over NOISE_KINDS (world source)
    shows: np.ndarray | None  # uint8 bit mask over REPAIR_KINDS: noise the repaired text still shows
    pii: np.ndarray  # replacements per PII_KINDS, summed over the chunk
    skipped: int  # documents of keep_domains


def _clean_chunk(texts: list[str], domains: list[str], noise: list[str] | None, p: CleanParams,
                 seed: int) -> _Chunk:
    """Worker task: everything about a document that does not depend on other documents."""
    n, mh = len(texts), p.minhash
    keep_domains = set(p.keep_domains)
    c = _Chunk(
        text=[], detail=[], code=np.zeros(n, np.int8), repairs=np.zeros(n, np.uint8),
        key=np.zeros(n, np.uint64), signature=np.zeros((n, mh.num_perm), np.uint32) if mh.enabled else None,
        bands=None, noise=None if noise is None else np.zeros(n, np.uint16),
        shows=None if noise is None else np.zeros(n, np.uint8), pii=np.zeros(len(PII_KINDS), np.int64), skipped=0,
    )
    for k, (text, domain) in enumerate(zip(texts, domains)):
        text, repairs, pii = repair(text, p)
        if domain not in keep_domains:
            dropped_by, detail = first_failure(quality_signals(text), p)
        else:  # exempt from the filters, but nothing is left to learn from an empty document
            c.skipped += 1
            dropped_by, detail = ("length", "empty after repairs") if not text else ("", "")
        c.text.append(text)
        c.detail.append(detail)
        c.repairs[k] = sum(1 << REPAIRS.index(r) for r in repairs)
        c.pii += [pii[kind] for kind in PII_KINDS]
        if dropped_by:
            c.code[k] = CODE[dropped_by]
        else:  # only documents still in the running need dedup keys
            words = dedup_words(text)
            c.key[k] = exact_key(words)
            if c.signature is not None:
                c.signature[k] = minhash_signature(words, mh, seed)
        if noise is not None:
            c.noise[k] = noise_mask(noise[k])
            c.shows[k] = sum(1 << i for i, kind in enumerate(REPAIR_KINDS) if still_shows(kind, text))
    if c.signature is not None:
        c.bands = band_keys(c.signature, *lsh_bands(mh.threshold, mh.num_perm))
    return c


def _dispatch(batch: pa.RecordBatch, p: CleanParams, seed: int, score: bool, pool) -> list:
    """Split an input batch into worker tasks of p.batch_size documents; with a pool, return
    futures (the work starts now), else the finished chunks."""
    texts = batch.column("text").to_pylist()
    domains = [str(d) for d in batch.column("domain").to_pylist()]
    noise = ["" if x is None else str(x) for x in batch.column("noise").to_pylist()] if score else None
    tasks = [
        (texts[i : i + p.batch_size], domains[i : i + p.batch_size],
         None if noise is None else noise[i : i + p.batch_size], p, seed)
        for i in range(0, len(texts), p.batch_size)
    ]
    if pool is None:
        return [_clean_chunk(*task) for task in tasks]
    return [pool.submit(_clean_chunk, *task) for task in tasks]


def _per_document(batches: Iterator[pa.RecordBatch], p: CleanParams, seed: int, score: bool,
                  pool) -> Iterator[tuple[pa.RecordBatch, list[_Chunk]]]:
    """(batch, its chunks) for each input batch, in input order. With a pool the next batch is
    dispatched before this one is handed back, so the workers keep busy while the caller writes;
    at most two batches are in flight."""
    pending: deque = deque()
    for batch in batches:
        pending.append((batch, _dispatch(batch, p, seed, score, pool)))
        if len(pending) > (0 if pool is None else 1):
            done, parts = pending.popleft()
            yield done, [part if isinstance(part, _Chunk) else part.result() for part in parts]
    while pending:
        done, parts = pending.popleft()
        yield done, [part if isinstance(part, _Chunk) else part.result() for part in parts]


@contextlib.contextmanager
def _workers(p: CleanParams, docs: int):
    """A process pool when it pays: starting workers costs about a second, not worth it for a
    corpus that fits in one task. (datasets.Dataset.map would first copy the whole corpus into its
    Arrow cache and start a new pool on every call, i.e. every batch.) Forked, not spawned: a
    spawned worker would re-import the stage script and Great Expectations with it. A worker
    that dies (out of memory, killed) fails the stage with BrokenProcessPool instead of hanging."""
    if p.num_proc <= 1 or docs <= p.batch_size:
        yield None
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    pool = ProcessPoolExecutor(p.num_proc, mp_context=multiprocessing.get_context(method))
    try:
        yield pool
    finally:  # on an error, queued tasks are dropped instead of run
        pool.shutdown(wait=True, cancel_futures=True)


# --- deduplication (whole corpus, in input order, on fixed-width arrays) ------------------------


def exact_duplicates(keys: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """For each row, the row of the first alive row with the same key, or -1 when it is the first
    (or not alive). A stable sort of the 8-byte keys: no dict of texts or keys."""
    first_of = np.full(len(keys), -1, np.int64)
    rows = np.flatnonzero(alive)
    order = np.argsort(keys[rows], kind="stable")  # equal keys stay in input order
    rows = rows[order]
    sorted_keys = keys[rows]
    new = np.ones(len(rows), bool)
    new[1:] = sorted_keys[1:] != sorted_keys[:-1]
    first = rows[new][np.cumsum(new) - 1]
    first_of[rows[~new]] = first[~new]
    return first_of


class OnDisk:
    """A (rows, ...) array in a raw file whose rows are read on demand: `m[rows]` reads just those
    rows (runs of consecutive ones in one call) with pread. Not np.memmap: the pages a mapping
    touches, and the ones the kernel maps around them, count as the process's memory while it
    lives (measured: +190 MB resident for near-dedup of 400k documents)."""

    def __init__(self, path: Path, dtype, shape: tuple[int, ...]):
        self.path, self.dtype, self.shape = path, np.dtype(dtype), shape
        self.row_bytes = self.dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        buf = np.empty_like(out)  # rows in file order, then put back in the order asked
        runs = np.flatnonzero(np.diff(ordered, prepend=-2) != 1)  # starts of consecutive runs
        ends = np.append(runs[1:], len(rows))
        view = memoryview(buf.view(np.uint8).reshape(len(rows), self.row_bytes))
        with open(self.path, "rb", buffering=0) as f:
            for a, b in zip(runs.tolist(), ends.tolist()):
                want = (b - a) * self.row_bytes
                if os.preadv(f.fileno(), [view[a:b]], int(ordered[a]) * self.row_bytes) != want:
                    raise StageError(f"{self.path} is shorter than expected")
        out[order] = buf
        return out


def jaccard(signatures: np.ndarray | OnDisk, a: np.ndarray, b: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Estimated Jaccard similarity of rows a[k] and b[k] of `signatures` (share of equal MinHash
    values, exactly as datasketch's MinHash.jaccard), in chunks so memory stays bounded."""
    out = np.empty(len(a), np.float64)
    for s in range(0, len(a), chunk):
        equal = np.count_nonzero(signatures[a[s : s + chunk]] == signatures[b[s : s + chunk]], axis=1)
        out[s : s + chunk] = equal / np.float64(signatures.shape[1])
    return out


def near_duplicates(bands, signatures: np.ndarray | OnDisk, alive: np.ndarray, threshold: float,
                    max_rows: int = 1 << 16) -> np.ndarray:
    """For each row, the first (lowest) earlier alive row whose estimated Jaccard with it is at or
    above `threshold`, or -1. Candidates are rows that share an LSH band key; `bands` is one array
    of n keys per band (files on disk in the stage), loaded one at a time, and `signatures`
    (n, num_perm) is only read for rows that share a bucket with another.

    Per band: a stable sort of the alive rows' keys puts each bucket's rows together in input
    order. Buckets of two or more are walked in groups of at most `max_rows` rows, whose
    signatures are read once into memory (a bigger bucket alone, read row by row as compared).
    A row at position q of its bucket is compared with the bucket's rows at positions 0, 1, ... in
    turn (all buckets of the group at once, one numpy round per position) until one matches or
    passes the best match already found in an earlier band: an edited copy of one document costs
    one comparison, a bucket of g documents that resemble each other not at all g^2/2, as with
    datasketch's MinHashLSH."""
    n = len(alive)
    best = np.full(n, n, np.int64)  # n = no match yet
    alive_rows = np.flatnonzero(alive)
    for keys in bands:
        k = keys[alive_rows]
        order = np.argsort(k, kind="stable")
        k = k[order]
        same = k[1:] == k[:-1]
        del k
        shared = np.zeros(len(order), bool)  # in a bucket of two or more
        shared[1:] |= same
        shared[:-1] |= same
        starts = np.ones(len(order), bool)
        starts[1:] = ~same
        del same
        members = alive_rows[order[shared]]
        starts = starts[shared]
        del order, shared
        bounds = np.append(np.flatnonzero(starts), len(members))  # where each bucket starts
        lo = 0
        while lo < len(members):
            hi = bounds[np.searchsorted(bounds, lo + max_rows, side="right") - 1]
            if hi <= lo:  # one bucket bigger than max_rows
                hi = bounds[np.searchsorted(bounds, lo, side="right")]
            _walk_buckets(members[lo:hi], starts[lo:hi], signatures, best, threshold, hi - lo <= max_rows)
            lo = hi
    best[best == n] = -1
    return best


def _walk_buckets(members: np.ndarray, starts: np.ndarray, signatures, best: np.ndarray, threshold: float,
                  load: bool) -> None:
    """near_duplicates for whole buckets: `members` are their rows, bucket by bucket in input
    order, `starts` marks each bucket's first. Lowers best[i] to the first row matching i."""
    first = np.flatnonzero(starts)[np.cumsum(starts) - 1]  # own bucket's first position
    pos = np.arange(len(members)) - first
    if load:  # one read of the group's signatures, in file order
        in_file_order = np.argsort(members)
        local = np.empty((len(members), signatures.shape[1]), np.uint32)
        local[in_file_order] = signatures[members[in_file_order]]
    active = np.flatnonzero(pos > 0)
    t = 0
    while len(active):
        other = first[active] + t
        i, j = members[active], members[other]
        useful = j < best[i]  # later positions hold later rows: no better match in this bucket
        active, other, i, j = active[useful], other[useful], i[useful], j[useful]
        sim = jaccard(local, active, other) if load else jaccard(signatures, i, j)
        hit = sim >= threshold
        best[i[hit]] = j[hit]
        t += 1
        active = active[~hit & (pos[active] > t)]


def cluster_roots(first_match: np.ndarray) -> np.ndarray:
    """Row of each row's cluster root: follow first_match (always to an earlier row) to a row
    without one, by pointer jumping (log of the chain length numpy passes)."""
    root = np.where(first_match >= 0, first_match, np.arange(len(first_match)))
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


# --- split ---------------------------------------------------------------------------------------


def validation_mask(ids: pd.Series, share: float, seed: int) -> pd.Series:
    """A document's side of the split depends only on (seed, id), not on position or neighbours."""
    return ids.map(lambda doc_id: unit_interval(seed, doc_id)) < share


# --- the streamed stage -------------------------------------------------------------------------

REQUIRED_COLUMNS = ["id", "text", "source", "domain"]
_DETAIL = "__clean_detail"  # the work file's column of why a filter dropped a document
# Parquet files are read through a buffer of this many bytes instead of a whole column chunk at a
# time (pyarrow's default), since one row group of a big corpus can hold gigabytes.
READ_BUFFER = 1 << 20


@dataclass
class CleanReport:
    stats: dict  # docs and chars in/out, drops per filter in FILTER_ORDER, PII, repairs, split sizes
    dropped: dict[str, pd.DataFrame]  # filter -> first dropped docs (id, text, detail)
    ground_truth: dict | None  # precision/recall per noise kind, when the input has a `noise` column


@dataclass
class CleanResult(CleanReport):
    """clean_corpus's in-memory result, for tests, notebooks and benchmarks."""

    train: pd.DataFrame = None  # the input columns (id, text, source, domain, ...) with cleaned text
    validation: pd.DataFrame = None
    # one row per input document, in input order: id, text (after repairs), dropped_by ("" when
    # kept), detail, repairs (comma-joined names from REPAIRS), duplicate_of (row of the kept
    # document a dropped duplicate belongs to, else -1)
    decisions: pd.DataFrame = None

    @property
    def kept_ids(self) -> set[str]:
        return set(self.decisions.loc[self.decisions["dropped_by"] == "", "id"])


def _open_corpus(path: Path, batch_rows: int) -> pq.ParquetFile:
    """Open the raw corpus and check what can be checked without cleaning it: columns, size,
    string text, unique ids (one streamed read of the id and text columns)."""
    if not path.exists():
        raise StageError(f"missing input {path}: run the upstream stage first (dvc repro)")
    try:
        corpus = pq.ParquetFile(path, buffer_size=READ_BUFFER, pre_buffer=False)
    except Exception as err:  # pyarrow raises several types for truncated/corrupt files
        raise StageError(f"cannot read {path}: {type(err).__name__}: {err}") from None
    schema = corpus.schema_arrow
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise StageError(f"corpus lacks column(s) {missing}; it has {schema.names}")
    n = corpus.metadata.num_rows
    if n == 0:
        raise StageError("the corpus has no documents: nothing to clean")
    text_type = schema.field("text").type
    stringy = pa.types.is_string(text_type) or pa.types.is_large_string(text_type)
    id_hashes = np.empty(n, np.uint64)
    bad, bad_ids, off = 0, [], 0
    for batch in _batches(corpus, batch_rows, ["id", "text"]):
        ids = batch.column("id").to_pylist()
        id_hashes[off : off + len(ids)] = [digest64(str(i)) for i in ids]
        off += len(ids)
        invalid = np.ones(len(ids), bool) if not stringy else batch.column("text").is_null().to_numpy(False)
        if invalid.any():
            bad += int(invalid.sum())
            bad_ids += [ids[k] for k in np.flatnonzero(invalid)[: 5 - len(bad_ids)]]
    if bad:
        raise StageError(f"{bad} document(s) have non-string text, e.g. ids {bad_ids}")
    sorted_hashes = np.sort(id_hashes)
    del id_hashes
    repeated = sorted_hashes[1:][sorted_hashes[1:] == sorted_hashes[:-1]]
    if len(repeated):  # rare: name them with a second read of the ids
        suspects, seen, dups = set(repeated.tolist()), set(), []
        for batch in _batches(corpus, batch_rows, ["id"]):
            for doc_id in batch.column("id").to_pylist():
                if digest64(str(doc_id)) in suspects:
                    if doc_id in seen:
                        dups.append(doc_id)
                    seen.add(doc_id)
        if dups:
            raise StageError(f"{len(dups)} duplicate document id(s), e.g. {dups[:5]}")
    return corpus


def _batches(f: pq.ParquetFile, rows: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    # One thread: decoding is a sliver of the work, and with threads pyarrow's allocator kept
    # memory that grew with the file (measured: +38 MB resident per 1.2M docs read, vs +10 MB)
    for batch in f.iter_batches(batch_size=rows, columns=columns, use_threads=False):
        if batch.num_rows:
            yield batch


class _RowGroupWriter:
    """A ParquetWriter that cuts a row group every `rows` rows, whatever the sizes of the tables it
    is given: the file depends on the data and `rows` only, not on clean.batch_rows. A corpus
    smaller than `rows` gives the same bytes as DataFrame.to_parquet."""

    def __init__(self, path: Path, schema: pa.Schema, rows: int):
        self.writer = pq.ParquetWriter(path, schema)
        self.rows, self.parts, self.buffered = rows, [], 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.parts.append(table)
            self.buffered += table.num_rows
        while self.buffered >= self.rows:
            self._flush(self.rows)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self.parts)
        self.writer.write_table(table.slice(0, rows).combine_chunks())
        rest = table.slice(rows)
        self.parts, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        if self.buffered:
            self._flush(self.buffered)
        self.writer.close()


@contextlib.contextmanager
def _arrow_allocator():
    """jemalloc for Arrow while the corpus streams through. pyarrow's default allocator (mimalloc)
    held on to freed read buffers: reading 400k documents instead of 100k left 28 MB more
    resident though Arrow's live memory stayed at 17 MB; with jemalloc (or malloc) it stays flat."""
    previous = pa.default_memory_pool()
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:  # a pyarrow built without jemalloc
        pass
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def clean_parquet(src: str | Path, out_dir: str | Path, p: CleanParams, seed: int, *,
                  decisions: str | Path | None = None) -> CleanReport:
    """Clean the corpus at `src` into out_dir/{train,validation}.parquet (written to a temporary
    directory and moved into place together), streaming: memory holds one or two batches of
    p.batch_rows documents, the output row group being filled, and a few fixed-width arrays with
    one entry per document (the drop code, the row a duplicate belongs to, bit masks: ~20 bytes
    per document, ~100 at the peak of near-dedup). Work files (~650 bytes per document: repaired
    text, signatures, band keys) go in a temporary directory next to out_dir.

    Pass 1 streams the corpus through the per-document work (repairs, filters, PII, dedup keys,
    MinHash) in p.num_proc processes and writes the repaired documents, the MinHash signatures and
    one file of 8-byte keys per LSH band to disk. Pass 2 deduplicates on those arrays (exact: a
    sort of the keys; near: one band file at a time, verified on the signatures). Pass 3 streams
    the repaired documents again and writes the kept ones to the split their id hashes to.

    `decisions`: also write one row per input document there (id, text after repairs, dropped_by,
    detail, repairs, duplicate_of) -- for tests and inspection; it keeps every id in memory."""
    with _arrow_allocator():
        return _clean_parquet(Path(src), Path(out_dir), p, seed, decisions)


def _clean_parquet(src: Path, out_dir: Path, p: CleanParams, seed: int, decisions: Path | None) -> CleanReport:
    corpus = _open_corpus(src, p.batch_rows)
    schema, n = corpus.schema_arrow, corpus.metadata.num_rows
    score = "noise" in schema.names
    mh = p.minhash
    stats = {"docs_in": n, "docs_out": 0, "chars_in": 0, "chars_out": 0}
    code = np.zeros(n, np.int8)
    repairs = np.zeros(n, np.uint8)
    keys = np.zeros(n, np.uint64)
    noise = np.zeros(n, np.uint16) if score else None
    shows = np.zeros(n, np.uint8) if score else None
    pii = np.zeros(len(PII_KINDS), np.int64)
    skipped = 0
    n_bands = lsh_bands(mh.threshold, mh.num_perm)[0] if mh.enabled else 0
    progress = Progress("clean", n)

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        work = tmp.parent / "work"  # removed with the temporary directory, whatever happens
        work.mkdir()
        docs_schema = schema.append(pa.field(_DETAIL, pa.large_string()))

        # pass 1: per-document work, streamed
        with contextlib.ExitStack() as files:
            docs_out = files.enter_context(pq.ParquetWriter(work / "docs.parquet", docs_schema))
            sig_out = files.enter_context(open(work / "minhash.u32", "wb")) if mh.enabled else None
            band_out = [files.enter_context(open(work / f"band{b}.u64", "wb")) for b in range(n_bands)]
            pool = files.enter_context(_workers(p, n))
            off = 0
            for batch, parts in _per_document(_batches(corpus, p.batch_rows), p, seed, score, pool):
                rows = slice(off, off + batch.num_rows)
                stats["chars_in"] += pc.sum(pc.utf8_length(batch.column("text"))).as_py() or 0
                code[rows] = np.concatenate([c.code for c in parts])
                repairs[rows] = np.concatenate([c.repairs for c in parts])
                keys[rows] = np.concatenate([c.key for c in parts])
                if score:
                    noise[rows] = np.concatenate([c.noise for c in parts])
                    shows[rows] = np.concatenate([c.shows for c in parts])
                pii += sum(c.pii for c in parts)
                skipped += sum(c.skipped for c in parts)
                for c in parts:
                    if sig_out is not None:
                        sig_out.write(c.signature.tobytes())
                        for b, f in enumerate(band_out):
                            f.write(np.ascontiguousarray(c.bands[:, b]).tobytes())
                text = pa.array([t for c in parts for t in c.text], schema.field("text").type)
                detail = pa.array([d for c in parts for d in c.detail], pa.large_string())
                columns = [text if name == "text" else batch.column(name) for name in schema.names]
                docs_out.write_batch(pa.record_batch([*columns, detail], schema=docs_schema))
                off += batch.num_rows
                progress.update(off, "docs")

        # pass 2: deduplication on fixed-width arrays
        duplicate_of = np.full(n, -1, np.int64)
        if p.exact_dedup:
            first = exact_duplicates(keys, code == 0)
            hit = first >= 0
            code[hit], duplicate_of[hit] = CODE["exact_dup"], first[hit]
        del keys
        like = np.full(n, -1, np.int64)  # the earlier document each near-duplicate matched first
        signatures = None
        if mh.enabled:
            signatures = OnDisk(work / "minhash.u32", np.uint32, (n, mh.num_perm))
            bands = (OnDisk(work / f"band{b}.u64", np.uint64, (n,)) for b in range(n_bands))
            like = near_duplicates(bands, signatures, code == 0, mh.threshold, max_rows=p.batch_rows)
            hit = like >= 0
            code[hit], duplicate_of[hit] = CODE["near_dup"], cluster_roots(like)[hit]

        # pass 3: write the kept documents, sample the dropped ones
        stats.update(_write_splits(work / "docs.parquet", tmp, schema, code, duplicate_of, like, signatures,
                                   repairs, p, seed, decisions))
        dropped = stats.pop("dropped")

    counts = np.bincount(code, minlength=len(FILTER_ORDER) + 1)
    stats.update({
        "drops": {name: int(counts[CODE[name]]) for name in FILTER_ORDER},
        "pii": {kind: int(v) for kind, v in zip(PII_KINDS, pii)},
        "repairs": {name: int(np.count_nonzero(repairs & (1 << i))) for i, name in enumerate(REPAIRS)},
        "quality_skipped": skipped,
    })
    stats = {k: stats[k] for k in ("docs_in", "docs_out", "chars_in", "chars_out", "drops", "pii", "repairs",
                                   "quality_skipped", "train_docs", "validation_docs")}
    truth = _score(noise, code, duplicate_of, repairs, shows) if score and noise.any() else None
    return CleanReport(stats=stats, dropped=dropped, ground_truth=truth)


def _write_splits(docs_path: Path, out: Path, schema: pa.Schema, code, duplicate_of, like, signatures,
                  repairs, p: CleanParams, seed: int, decisions_path) -> dict:
    """Pass 3: stream the repaired documents; kept ones go to out/{train,validation}.parquet, the
    first p.dropped_sample of each filter to the returned samples, and with `decisions_path`
    every document's decision there."""
    n = len(code)
    names = FILTER_ORDER
    # The samples of the dedup filters name the document each duplicate resembles, always an
    # earlier one: collect those ids on the way.
    sample_rows = {name: np.flatnonzero(code == CODE[name])[: p.dropped_sample] for name in names}
    targets = np.unique(np.concatenate([duplicate_of[sample_rows["exact_dup"]], like[sample_rows["near_dup"]]]))
    id_of: dict[int, str] | list[str] = [] if decisions_path else {}  # decisions: every id

    def dedup_detail(rows: np.ndarray) -> list[str]:
        near = rows[code[rows] == CODE["near_dup"]]
        sims = iter(jaccard(signatures, near, like[near]).tolist() if len(near) else [])
        return [f"duplicate of {id_of[duplicate_of[i]]}" if code[i] == CODE["exact_dup"]
                else f"near-duplicate of {id_of[like[i]]} (jaccard~{next(sims):.2f})" for i in rows]

    samples = {name: [] for name in names}
    stats = {"docs_out": 0, "chars_out": 0, "train_docs": 0, "validation_docs": 0}
    docs = pq.ParquetFile(docs_path, buffer_size=READ_BUFFER, pre_buffer=False)
    train = _RowGroupWriter(out / "train.parquet", schema, p.row_group_rows)
    validation = _RowGroupWriter(out / "validation.parquet", schema, p.row_group_rows)
    with contextlib.ExitStack() as stack:
        decisions = None
        if decisions_path:
            decisions = _RowGroupWriter(stack.enter_context(atomic_path(decisions_path)), _DECISIONS_SCHEMA,
                                        p.row_group_rows)
            stack.callback(decisions.close)
        off = 0
        for batch in _batches(docs, p.batch_rows):
            m = batch.num_rows
            c = code[off : off + m]
            ids = [str(x) for x in batch.column("id").to_pylist()]
            if isinstance(id_of, list):
                id_of.extend(ids)
            else:
                lo, hi = np.searchsorted(targets, [off, off + m])
                id_of.update((int(t), ids[t - off]) for t in targets[lo:hi])

            kept = np.flatnonzero(c == 0)
            table = pa.Table.from_arrays([batch.column(name) for name in schema.names], schema=schema).take(kept)
            is_val = np.fromiter((unit_interval(seed, ids[k]) < p.validation_share for k in kept), bool, len(kept))
            train.add(table.filter(pa.array(~is_val)))
            validation.add(table.filter(pa.array(is_val)))
            stats["docs_out"] += len(kept)
            stats["chars_out"] += pc.sum(pc.utf8_length(table.column("text"))).as_py() or 0
            stats["validation_docs"] += int(is_val.sum())

            detail = batch.column(_DETAIL).to_pylist()
            text = batch.column("text")
            for name in names:
                rows = sample_rows[name]
                rows = rows[(rows >= off) & (rows < off + m)]
                if not len(rows):
                    continue
                why = dedup_detail(rows) if name in DEDUP_FILTERS else [detail[i - off] for i in rows]
                samples[name] += [(ids[i - off], text[i - off].as_py(), d) for i, d in zip(rows, why)]
            if decisions is not None:
                dups = np.flatnonzero(duplicate_of[off : off + m] >= 0)
                for k, d in zip(dups, dedup_detail(dups + off)):
                    detail[k] = d
                decisions.add(pa.table({
                    "id": pa.array(ids, pa.large_string()),
                    "text": text,
                    "dropped_by": pa.array([names[x - 1] if x else "" for x in c.tolist()], pa.large_string()),
                    "detail": pa.array(detail, pa.large_string()),
                    "repairs": pa.array([_REPAIR_NAMES[r] for r in repairs[off : off + m].tolist()], pa.large_string()),
                    "duplicate_of": pa.array(duplicate_of[off : off + m], pa.int64()),
                }, schema=_DECISIONS_SCHEMA))
            off += m
    train.close()
    validation.close()
    assert off == n, f"pass 3 read {off} of {n} documents"
    stats["train_docs"] = stats["docs_out"] - stats["validation_docs"]
    stats["dropped"] = {
        name: pd.DataFrame({col: pd.Series([row[k] for row in rows], dtype="str")
                            for k, col in enumerate(("id", "text", "detail"))})
        for name, rows in samples.items()
    }
    return stats


_DECISIONS_SCHEMA = pa.schema([
    ("id", pa.large_string()), ("text", pa.large_string()), ("dropped_by", pa.large_string()),
    ("detail", pa.large_string()), ("repairs", pa.large_string()), ("duplicate_of", pa.int64()),
])
_REPAIR_NAMES = [",".join(r for i, r in enumerate(REPAIRS) if mask & (1 << i)) for mask in range(1 << len(REPAIRS))]


def _check_input(corpus: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in corpus.columns]
    if missing:
        raise StageError(f"corpus lacks column(s) {missing}; it has {list(corpus.columns)}")
    if corpus.empty:
        raise StageError("the corpus has no documents: nothing to clean")
    bad = corpus["text"].map(lambda t: not isinstance(t, str))
    if bad.any():
        raise StageError(f"{int(bad.sum())} document(s) have non-string text, e.g. ids {list(corpus['id'][bad][:5])}")


def clean_corpus(corpus: pd.DataFrame, p: CleanParams, seed: int) -> CleanResult:
    """clean_parquet on an in-memory corpus (through a temporary parquet file, so it is the very
    same code path), with the splits and every document's decision read back into DataFrames."""
    _check_input(corpus)
    with tempfile.TemporaryDirectory(prefix="clean-") as tmp:
        tmp = Path(tmp)
        corpus.reset_index(drop=True).to_parquet(tmp / "corpus.parquet", index=False)
        report = clean_parquet(tmp / "corpus.parquet", tmp / "out", p, seed, decisions=tmp / "decisions.parquet")
        return CleanResult(
            stats=report.stats, dropped=report.dropped, ground_truth=report.ground_truth,
            train=pd.read_parquet(tmp / "out/train.parquet"),
            validation=pd.read_parquet(tmp / "out/validation.parquet"),
            decisions=pd.read_parquet(tmp / "decisions.parquet"),
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
# Bit i of a document's noise mask: it carries NOISE_KINDS[i]; bit 15: some other kind.
NOISE_KINDS = [*REMOVAL_KINDS, *REPAIR_KINDS]
_OTHER_NOISE = 1 << 15


def noise_mask(noise: str) -> int:
    """The world's comma-separated `noise` labels as a bit mask over NOISE_KINDS."""
    mask = 0
    for kind in filter(None, noise.split(",")):
        mask |= 1 << NOISE_KINDS.index(kind) if kind in NOISE_KINDS else _OTHER_NOISE
    return mask


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

    The stage gets the same numbers from clean_parquet (CleanReport.ground_truth), which computes
    the per-document flags in its workers; this recomputes them from `result.decisions`.
    """
    if "noise" not in corpus.columns:
        raise StageError("ground truth needs the corpus's `noise` column (world source only)")
    d = result.decisions.reset_index(drop=True)
    noise = np.array([noise_mask(x) for x in corpus["noise"].fillna("").astype(str)], np.uint16)
    code = np.array([CODE.get(x, 0) for x in d["dropped_by"]], np.int8)
    repairs = np.array([sum(1 << REPAIRS.index(r) for r in filter(None, x.split(","))) for x in d["repairs"]],
                       np.uint8)
    shows = np.array([sum(1 << i for i, kind in enumerate(REPAIR_KINDS) if still_shows(kind, t)) for t in d["text"]],
                     np.uint8)
    return _score(noise, code, d["duplicate_of"].to_numpy(np.int64), repairs, shows)


def _score(noise: np.ndarray, code: np.ndarray, duplicate_of: np.ndarray, repairs: np.ndarray,
           shows: np.ndarray) -> dict:
    """score_against_ground_truth on per-document arrays: noise masks (NOISE_KINDS), drop codes
    (CODE), duplicate_of, repair masks (REPAIRS) and still-shows masks (REPAIR_KINDS)."""
    code = _credit_labelled_copies(code, duplicate_of, noise)
    dropped = code != 0
    scores: dict = {}

    def rates(carries: np.ndarray, fixed: np.ndarray, acted: np.ndarray) -> dict:
        return {
            "precision": float(carries[acted].mean()) if acted.any() else 1.0,
            "recall": float(fixed[carries].mean()) if carries.any() else 1.0,
            "docs": int(carries.sum()),
        }

    for kind, filters in REMOVAL_KINDS.items():
        carries = (noise & (1 << NOISE_KINDS.index(kind))) != 0
        scores[kind] = rates(carries, dropped, np.isin(code, [CODE[f] for f in filters]))
    for i, (kind, repair_name) in enumerate(REPAIR_KINDS.items()):
        carries = (noise & (1 << NOISE_KINDS.index(kind))) != 0
        fixed = (shows & (1 << i)) == 0
        scores[kind] = rates(carries, fixed, (repairs & (1 << REPAIRS.index(repair_name))) != 0)
    clean = noise == 0
    scores["clean_survival"] = float((~dropped[clean]).mean()) if clean.any() else 1.0
    return scores


def _credit_labelled_copies(code: np.ndarray, duplicate_of: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Drop codes, with each noise-free document that was dropped as a duplicate of a kept copy
    labelled exact_dup/near_dup swapped with that copy (once per kept copy: the first such
    document in input order)."""
    code = code.copy()
    dup_bits = (1 << NOISE_KINDS.index("exact_dup")) | (1 << NOISE_KINDS.index("near_dup"))
    rows = np.flatnonzero(duplicate_of >= 0)
    kept = duplicate_of[rows]
    swap = (noise[rows] == 0) & ((noise[kept] & dup_bits) != 0) & (code[kept] == 0)
    rows, kept = rows[swap], kept[swap]
    kept, first = np.unique(kept, return_index=True)  # rows ascend: the first per kept copy
    rows = rows[first]
    code[kept], code[rows] = code[rows], 0
    return code
