"""lmpipe.cleaning.dedup: exact keys and MinHash near dedup; near dedup on sorted band keys
decides exactly as datasketch's MinHashLSH does."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
from cleaning_samples import PROSE, corpus_of, edit_words
from datasketch import LeanMinHash, MinHashLSH

from lmpipe.cleaning.dedup import (
    band_keys,
    cluster_roots,
    exact_duplicates,
    exact_key,
    lsh_bands,
    minhash_signature,
    near_duplicates,
)
from lmpipe.cleaning.filters import first_failure, quality_signals
from lmpipe.cleaning.repairs import repair
from lmpipe.cleaning.streaming import clean_corpus
from lmpipe.params import CleanParams, MinHashParams, WorldParams
from lmpipe.text import dedup_words
from lmpipe.world import generate_world

P = CleanParams(num_proc=1)


@pytest.fixture(scope="module")
def world() -> pd.DataFrame:
    """~2,400 generated documents with every kind of noise, near-duplicates included."""
    return generate_world(WorldParams(docs=2000, encoded_share=0.03), seed=5).corpus.reset_index(drop=True)


def test_exact_dedup_normalizes_case_punctuation_and_space_and_keeps_the_first():
    variant = PROSE[0].upper().replace(",", "").replace(" ", "  ")
    result = clean_corpus(corpus_of([PROSE[1], variant, PROSE[0], PROSE[2]]), P, seed=0)
    d = result.decisions
    assert d["dropped_by"].tolist() == ["", "", "exact_dup", ""]
    assert d.at[2, "detail"] == "duplicate of d0001"
    # hashlib, not the per-process salted hash(): the key is the same in every run
    assert exact_key(["a", "b"]) == 2952434739088078779  # 8 bytes of blake2b


@pytest.mark.parametrize("seed", range(5))
def test_minhash_finds_a_near_duplicate_with_5_percent_word_edits(seed):
    edited = edit_words(PROSE[0], 0.05, random.Random(seed))
    result = clean_corpus(corpus_of([PROSE[0], PROSE[1], edited, PROSE[2], PROSE[3]]), P, seed=seed)
    assert result.decisions["dropped_by"].tolist() == ["", "", "near_dup", "", ""]
    assert result.decisions.at[2, "duplicate_of"] == 0
    assert result.kept_ids == {"d0000", "d0001", "d0003", "d0004"}


def test_minhash_keeps_unrelated_documents_and_can_be_disabled():
    edited = edit_words(PROSE[0], 0.05, random.Random(0))
    docs = corpus_of([*PROSE, edited])
    assert clean_corpus(docs, P, seed=0).stats["drops"]["near_dup"] == 1
    off = P.model_copy(update={"minhash": MinHashParams(enabled=False)})
    assert clean_corpus(docs, off, seed=0).stats["docs_out"] == 5


def _datasketch_near_duplicates(signatures: np.ndarray, alive: np.ndarray, mp: MinHashParams, seed: int) -> dict:
    """Reference near-dedup: a MinHashLSH index in memory, queried in input order (what the
    band-key sort must agree with)."""
    lsh = MinHashLSH(num_perm=mp.num_perm, params=lsh_bands(mp.threshold, mp.num_perm))
    seen, root, found = {}, {}, {}
    for i in np.flatnonzero(alive):
        sig = LeanMinHash(seed=seed, hashvalues=signatures[i], scheme="affine32")
        matches = sorted((j, s) for j in lsh.query(sig) if (s := sig.jaccard(seen[j])) >= mp.threshold)
        root[i] = root[matches[0][0]] if matches else i
        if matches:
            found[int(i)] = (int(root[i]), int(matches[0][0]))
        lsh.insert(i, sig)
        seen[i] = sig
    return found


def _ours(signatures: np.ndarray, alive: np.ndarray, mp: MinHashParams) -> dict:
    bands = band_keys(signatures, *lsh_bands(mp.threshold, mp.num_perm))
    like = near_duplicates(list(bands.T), signatures, alive, mp.threshold)
    # buckets walked in groups of at most 3 rows' signatures in memory, bigger ones read as compared
    assert np.array_equal(near_duplicates(list(bands.T), signatures, alive, mp.threshold, max_rows=3), like)
    roots = cluster_roots(like)
    return {int(i): (int(roots[i]), int(like[i])) for i in np.flatnonzero(like >= 0)}


def test_near_dedup_decides_as_datasketch_lsh_on_the_world(world):
    mp, seed = MinHashParams(), 5
    texts = [repair(t, P)[0] for t in world["text"]]
    alive = np.array([first_failure(quality_signals(t), P)[0] == "" for t in texts])
    signatures = np.zeros((len(texts), mp.num_perm), np.uint32)
    for i in np.flatnonzero(alive):
        signatures[i] = minhash_signature(dedup_words(texts[i]), mp, seed)
    expected = _datasketch_near_duplicates(signatures, alive, mp, seed)
    assert len(expected) > 100
    assert _ours(signatures, alive, mp) == expected


def test_near_dedup_walks_big_buckets_and_keeps_the_earliest_match():
    """Planted cases random text rarely has: a match deep in a big bucket of unrelated rows (one
    numpy round per bucket position), a row matching an earlier row in an early band and a later
    row in the last band (the earliest must win), copies around a dead row."""
    rng = np.random.default_rng(0)
    mp = MinHashParams(threshold=0.85, num_perm=128)
    bands, rows = lsh_bands(mp.threshold, mp.num_perm)
    sig = rng.integers(0, 2**32, (300, mp.num_perm), dtype=np.uint32)

    def perturb(row: int, band_list) -> None:  # change one value in each of these bands
        for b in band_list:
            sig[row, b * rows] ^= 1

    sig[20:60, :rows] = sig[19, :rows]  # rows 19-59 share band 0 and nothing else
    sig[55] = sig[45]
    perturb(55, range(1, bands))  # 55 resembles 45 (jaccard 0.88) through band 0 only
    sig[150] = sig[160] = sig[170]  # 170 matches 150 via band 0 and 160 via the last band
    perturb(150, [bands - 1])
    perturb(160, [0])
    sig[100] = sig[200] = sig[250] = sig[80]  # copies of 80; 200 is dead (dropped by a filter)
    alive = np.ones(len(sig), bool)
    alive[200] = False
    got = _ours(sig, alive, mp)
    assert got == _datasketch_near_duplicates(sig, alive, mp, seed=1)
    assert got[55] == (45, 45)
    assert got[160] == (150, 150) and got[170] == (150, 150)
    assert got[100] == (80, 80) and got[250] == (80, 80) and 200 not in got
    assert set(got) == {55, 100, 160, 170, 250}


def test_exact_duplicates_keep_the_first_alive_copy():
    keys = np.array([5, 7, 5, 5, 9, 7, 9], np.uint64)
    alive = np.array([False, True, True, True, True, True, False])
    assert exact_duplicates(keys, alive).tolist() == [-1, -1, -1, 2, -1, 1, -1]
