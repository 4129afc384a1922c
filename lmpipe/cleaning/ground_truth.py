"""Cleaning scored against the world's ground truth: each generated document's `noise` column
names the noise injected into it, and every filter and repair is meant to handle some kinds.
Reported as precision and recall per kind, plus the survival of noise-free documents."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import ftfy
import numpy as np

from lmpipe.cleaning.filters import CODE, QUALITY_FILTERS, REPETITION_FILTERS
from lmpipe.cleaning.pii import IPV4, IPV6, is_documentation_email, is_documentation_ip
from lmpipe.cleaning.repairs import CONTROL, HTML_ENTITY, HTML_TAG, REPAIRS
from lmpipe.io import StageError

if TYPE_CHECKING:  # only a type here: the per-document workers (Ray's too) need not import pandas
    import pandas as pd

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
        # addresses reserved for documentation identify nobody: the scrubber leaves them, by design
        text = _PLACEHOLDER.sub(" ", text)
        for pattern, harmless in ((_LOOSE_EMAIL, is_documentation_email), (IPV4, is_documentation_ip),
                                  (IPV6, is_documentation_ip)):
            if any(not harmless(m.group()) for m in pattern.finditer(text)):
                return True
            text = pattern.sub(" ", text)
        return any(sum(ch.isdigit() for ch in m) >= 9 for m in _LOOSE_PHONE.findall(text))
    raise ValueError(f"unknown repair kind {kind!r}")


def score_against_ground_truth(corpus: pd.DataFrame, result) -> dict:
    """Precision and recall of cleaning per injected noise kind, from the world's `noise` column
    and `result.decisions` (a CleanResult of lmpipe.cleaning.streaming.clean_corpus).

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
    return score_flags(noise, code, d["duplicate_of"].to_numpy(np.int64), repairs, shows)


def score_flags(noise: np.ndarray, code: np.ndarray, duplicate_of: np.ndarray, repairs: np.ndarray,
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
