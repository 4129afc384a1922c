"""The streamed clean: `clean_parquet(src, out_dir, params, seed)` runs a parquet corpus of any
size through three passes, holding one or two batches of `batch_rows` documents and a few bytes
of state per document, never the corpus:

1. per document, in `num_proc` processes (lmpipe.cleaning.per_document): repairs, filters, an
   exact-dedup key and a MinHash signature, written to disk with one 8-byte key per LSH band;
2. over the whole corpus, on fixed-width arrays (lmpipe.cleaning.dedup): exact dedup, then
   MinHash-LSH near dedup; the first document of each duplicate cluster is kept, so the result
   depends neither on the batching nor on the number of processes;
3. the repaired documents are streamed again and the kept ones written to a train/validation
   split (lmpipe.cleaning.splits).

`clean.engine: ray` runs passes 1 and 2 on Ray tasks instead (lmpipe.cleaning.ray_engine), with
the same decisions and outputs.

`clean_corpus(df, params, seed)` runs the same on an in-memory DataFrame, for tests and notebooks.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmpipe.cleaning import ray_engine, ray_session
from lmpipe.cleaning.dedup import OnDisk, cluster_roots, exact_duplicates, lsh_bands, near_duplicates
from lmpipe.cleaning.filters import CODE, FILTER_ORDER
from lmpipe.cleaning.ground_truth import score_flags
from lmpipe.cleaning.parquet_io import REQUIRED_COLUMNS, arrow_allocator, open_corpus, read_batches
from lmpipe.cleaning.per_document import Chunk, per_document, workers
from lmpipe.cleaning.pii import PII_KINDS
from lmpipe.cleaning.repairs import REPAIRS
from lmpipe.cleaning.splits import DETAIL, Decided, write_splits
from lmpipe.io import StageError, atomic_path
from lmpipe.params import CleanParams
from lmpipe.runtime import Progress

_STATS_KEYS = ("docs_in", "docs_out", "chars_in", "chars_out", "drops", "pii", "repairs", "quality_skipped",
               "train_docs", "validation_docs")


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


@dataclass
class _PassOne:
    """Pass 1's fixed-width results, one entry per input document: the drop code (CODE), bit masks
    of the repairs that changed it and (world source) of the noise it carries and still shows
    after repairs, and its exact-dedup key; plus counts over the corpus."""

    code: np.ndarray
    repairs: np.ndarray
    keys: np.ndarray | None
    noise: np.ndarray | None
    shows: np.ndarray | None
    pii: np.ndarray
    skipped: int = 0
    chars_in: int = 0

    @classmethod
    def empty(cls, n: int, score: bool) -> _PassOne:
        return cls(code=np.zeros(n, np.int8), repairs=np.zeros(n, np.uint8), keys=np.zeros(n, np.uint64),
                   noise=np.zeros(n, np.uint16) if score else None, shows=np.zeros(n, np.uint8) if score else None,
                   pii=np.zeros(len(PII_KINDS), np.int64))

    def add(self, rows: slice, batch: pa.RecordBatch, parts: list[Chunk]) -> None:
        self.chars_in += pc.sum(pc.utf8_length(batch.column("text"))).as_py() or 0
        self.code[rows] = np.concatenate([c.code for c in parts])
        self.repairs[rows] = np.concatenate([c.repairs for c in parts])
        self.keys[rows] = np.concatenate([c.key for c in parts])
        if self.noise is not None:
            self.noise[rows] = np.concatenate([c.noise for c in parts])
            self.shows[rows] = np.concatenate([c.shows for c in parts])
        self.pii += sum(c.pii for c in parts)
        self.skipped += sum(c.skipped for c in parts)


def clean_parquet(src: str | Path, out_dir: str | Path, p: CleanParams, seed: int, *,
                  decisions: str | Path | None = None) -> CleanReport:
    """Clean the corpus at `src` into out_dir/{train,validation}.parquet (written to a temporary
    directory and moved into place together), streaming: memory holds one or two batches of
    p.batch_rows documents, the output row group being filled, and a few fixed-width arrays with
    one entry per document (the drop code, the row a duplicate belongs to, bit masks: ~20 bytes
    per document, ~100 at the peak of near-dedup). Work files (repaired text, signatures, band
    keys) go in a temporary directory next to out_dir.

    `decisions`: also write one row per input document there (id, text after repairs, dropped_by,
    detail, repairs, duplicate_of) -- for tests and inspection; it keeps every id in memory."""
    with arrow_allocator():
        return _clean_parquet(Path(src), Path(out_dir), p, seed, decisions)


def _clean_parquet(src: Path, out_dir: Path, p: CleanParams, seed: int, decisions: Path | None) -> CleanReport:
    corpus = open_corpus(src, p.batch_rows)
    first = _PassOne.empty(corpus.metadata.num_rows, score="noise" in corpus.schema_arrow.names)
    with _engine(p, corpus.metadata.num_rows) as ray_pool, atomic_path(out_dir) as tmp:
        tmp.mkdir()
        work = tmp.parent / "work"  # removed with the temporary directory, whatever happens
        work.mkdir()
        _per_document_pass(corpus, work, p, seed, first, ray_pool)
        if ray_pool is not None:
            ray_pool.start.wait()  # pass 2 runs on Ray whether or not pass 1 did
        decided = _deduplicate(first, work, p)
        if ray_pool is not None:
            ray_pool.start.stop_soon()  # pass 3 needs no Ray: it shuts down while the splits are written
        split = write_splits(work / "docs.parquet", tmp, corpus.schema_arrow, decided, p, seed, decisions)
    return _report(first, decided, split)


def _per_document_pass(corpus: pq.ParquetFile, work: Path, p: CleanParams, seed: int, first: _PassOne,
                       ray_pool) -> None:
    """Pass 1: stream the corpus through the per-document work in p.num_proc processes (or on
    Ray: `ray_pool`); write the repaired documents, the MinHash signatures and one file of 8-byte
    keys per LSH band to `work`."""
    schema, n, mh = corpus.schema_arrow, corpus.metadata.num_rows, p.minhash
    docs_schema = schema.append(pa.field(DETAIL, pa.large_string()))
    n_bands = lsh_bands(mh.threshold, mh.num_perm)[0] if mh.enabled else 0
    progress = Progress("clean", n)
    with contextlib.ExitStack() as files:
        docs_out = files.enter_context(pq.ParquetWriter(work / "docs.parquet", docs_schema))
        sig_out = files.enter_context(open(work / "minhash.u32", "wb")) if mh.enabled else None
        band_out = [files.enter_context(open(work / f"band{b}.u64", "wb")) for b in range(n_bands)]
        pool = ray_pool if ray_pool is not None else files.enter_context(workers(p, n))
        off = 0
        for batch, parts in per_document(read_batches(corpus, p.batch_rows), p, seed, first.noise is not None,
                                         pool):
            first.add(slice(off, off + batch.num_rows), batch, parts)
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
    if ray_pool is not None:
        ray_pool.report("clean")


def _deduplicate(first: _PassOne, work: Path, p: CleanParams) -> Decided:
    """Pass 2: exact dedup (a sort of the keys), then near dedup (one band file at a time, verified
    on the signatures); marks the drops in first.code."""
    code, n, mh = first.code, len(first.code), p.minhash
    duplicate_of = np.full(n, -1, np.int64)
    if p.exact_dedup:
        earlier = (ray_engine.exact_duplicates_ray(first.keys, code == 0, ray_session.cluster_cpus())
                   if p.engine == "ray" else exact_duplicates(first.keys, code == 0))
        hit = earlier >= 0
        code[hit], duplicate_of[hit] = CODE["exact_dup"], earlier[hit]
    first.keys = None  # not needed any more: free it before near dedup's peak
    like = np.full(n, -1, np.int64)  # the earlier document each near-duplicate matched first
    signatures = None
    if mh.enabled:
        n_bands = lsh_bands(mh.threshold, mh.num_perm)[0]
        signatures = OnDisk(work / "minhash.u32", np.uint32, (n, mh.num_perm))
        bands = (OnDisk(work / f"band{b}.u64", np.uint64, (n,)) for b in range(n_bands))
        if p.engine == "ray":
            like = ray_engine.near_duplicates_ray(bands, signatures, code == 0, mh.threshold,
                                                  ray_session.cluster_cpus(), max_rows=p.batch_rows)
        else:
            like = near_duplicates(bands, signatures, code == 0, mh.threshold, max_rows=p.batch_rows)
        hit = like >= 0
        code[hit], duplicate_of[hit] = CODE["near_dup"], cluster_roots(like)[hit]
    return Decided(code=code, duplicate_of=duplicate_of, like=like, signatures=signatures, repairs=first.repairs)


def _engine(p: CleanParams, docs: int):
    """The ray engine's RayPool (lmpipe.cleaning.ray_engine.engine), None for the local engine."""
    if p.engine != "ray":
        return contextlib.nullcontext()
    return ray_engine.engine(p, docs)


def _report(first: _PassOne, d: Decided, split: dict) -> CleanReport:
    counts = np.bincount(d.code, minlength=len(FILTER_ORDER) + 1)
    stats = {
        "docs_in": len(d.code),
        "chars_in": first.chars_in,
        **split,
        "drops": {name: int(counts[CODE[name]]) for name in FILTER_ORDER},
        "pii": {kind: int(v) for kind, v in zip(PII_KINDS, first.pii)},
        "repairs": {name: int(np.count_nonzero(d.repairs & (1 << i))) for i, name in enumerate(REPAIRS)},
        "quality_skipped": first.skipped,
    }
    dropped = stats.pop("dropped")
    truth = None
    if first.noise is not None and first.noise.any():
        truth = score_flags(first.noise, d.code, d.duplicate_of, d.repairs, first.shows)
    return CleanReport(stats={k: stats[k] for k in _STATS_KEYS}, dropped=dropped, ground_truth=truth)


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
