"""Deduplication: exact keys and MinHash signatures per document, then corpus-wide exact and
near-duplicate detection on fixed-width arrays (sorted keys, LSH band buckets verified on the
signatures), keeping the first document of each cluster in input order. Modelled on datatrove's
MinHash dedup: signatures and band keys on disk, buckets found by sorting."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from datasketch import MinHash

from lmpipe.io import StageError
from lmpipe.params import MinHashParams
from lmpipe.text import digest64

# --- per-document keys ---------------------------------------------------------------------------

def exact_key(words: list[str]) -> int:
    """The exact-dedup key: 8 bytes per document. Two of n different documents share one with
    probability ~n^2/2^65, the same risk as datatrove's 64-bit xxhash signatures."""
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
    false candidates; since candidates are verified anyway, misses are what to avoid."""
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


# --- corpus-wide passes ------------------------------------------------------------------------

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
    lives, so near-dedup of a big corpus would look (and be limited) like one held in memory."""

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
