"""The per-document pass: everything about a document that does not depend on other documents
(repairs, filters, dedup keys, MinHash, ground-truth flags), run in worker processes over chunks
of consecutive documents, and handed back in input order."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lmpipe.cleaning.dedup import band_keys, exact_key, lsh_bands, minhash_signature
from lmpipe.cleaning.filters import CODE, first_failure, quality_signals
from lmpipe.cleaning.ground_truth import REPAIR_KINDS, noise_mask, still_shows
from lmpipe.cleaning.pii import PII_KINDS
from lmpipe.cleaning.repairs import REPAIRS, repair
from lmpipe.params import CleanParams
from lmpipe.text import dedup_words


@dataclass
class Chunk:
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


def clean_chunk(texts: list[str], domains: list[str], noise: list[str] | None, p: CleanParams,
                seed: int) -> Chunk:
    """Worker task: everything about a document that does not depend on other documents."""
    n, mh = len(texts), p.minhash
    keep_domains = set(p.keep_domains)
    c = Chunk(
        text=[], detail=[], code=np.zeros(n, np.int8), repairs=np.zeros(n, np.uint8),
        key=np.zeros(n, np.uint64), signature=np.zeros((n, mh.num_perm), np.uint32) if mh.enabled else None,
        bands=None, noise=None if noise is None else np.zeros(n, np.uint16),
        shows=None if noise is None else np.zeros(n, np.uint8), pii=np.zeros(len(PII_KINDS), np.int64), skipped=0,
    )
    for k, (text, domain) in enumerate(zip(texts, domains)):
        text, repairs, pii = repair(text, p)
        if domain not in keep_domains:
            dropped_by, detail = first_failure(quality_signals(text, p.min_code_line_share), p)
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


def dispatch(batch: pa.RecordBatch, p: CleanParams, seed: int, score: bool, pool) -> list:
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
        return [clean_chunk(*task) for task in tasks]
    return [pool.submit(clean_chunk, *task) for task in tasks]


def per_document(batches: Iterator[pa.RecordBatch], p: CleanParams, seed: int, score: bool,
                 pool) -> Iterator[tuple[pa.RecordBatch, list[Chunk]]]:
    """(batch, its chunks) for each input batch, in input order. With a pool the next batch is
    dispatched before this one is handed back, so the workers keep busy while the caller writes;
    at most two batches are in flight."""
    pending: deque = deque()
    for batch in batches:
        pending.append((batch, dispatch(batch, p, seed, score, pool)))
        if len(pending) > (0 if pool is None else 1):
            done, parts = pending.popleft()
            yield done, [part if isinstance(part, Chunk) else part.result() for part in parts]
    while pending:
        done, parts = pending.popleft()
        yield done, [part if isinstance(part, Chunk) else part.result() for part in parts]


@contextlib.contextmanager
def workers(p: CleanParams, docs: int):
    """A process pool when it pays: starting workers costs more than cleaning a corpus that fits
    in one task. (datasets.Dataset.map would first copy the whole corpus into its
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
