"""Parquet in and out for the streamed clean: the corpus opened and checked without reading its
text into memory, batches read one at a time, and splits written in row groups of a fixed size."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmpipe.io import StageError
from lmpipe.text import digest64

REQUIRED_COLUMNS = ["id", "text", "source", "domain"]
# Parquet files are read through a buffer of this many bytes instead of a whole column chunk at a
# time (pyarrow's default), since one row group of a big corpus can hold gigabytes.
READ_BUFFER = 1 << 20


def parquet_file(path: Path) -> pq.ParquetFile:
    """`path` opened for streaming reads through READ_BUFFER."""
    return pq.ParquetFile(path, buffer_size=READ_BUFFER, pre_buffer=False)


def read_batches(f: pq.ParquetFile, rows: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    # One thread: decoding is a sliver of the work, and with threads pyarrow's allocator kept
    # memory that grew with the size of the file.
    for batch in f.iter_batches(batch_size=rows, columns=columns, use_threads=False):
        if batch.num_rows:
            yield batch


def open_corpus(path: Path, batch_rows: int) -> pq.ParquetFile:
    """Open the raw corpus and check what can be checked without cleaning it: columns, size,
    string text, unique ids (one streamed read of the id and text columns)."""
    if not path.exists():
        raise StageError(f"missing input {path}: run the upstream stage first (dvc repro)")
    try:
        corpus = parquet_file(path)
    except Exception as err:  # pyarrow raises several types for truncated/corrupt files
        raise StageError(f"cannot read {path}: {type(err).__name__}: {err}") from None
    schema = corpus.schema_arrow
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise StageError(f"corpus lacks column(s) {missing}; it has {schema.names}")
    if corpus.metadata.num_rows == 0:
        raise StageError("the corpus has no documents: nothing to clean")
    sorted_hashes = np.sort(_id_hashes_of_string_texts(corpus, batch_rows))
    repeated = sorted_hashes[1:][sorted_hashes[1:] == sorted_hashes[:-1]]
    del sorted_hashes
    if len(repeated):  # rare: name them with a second read of the ids
        _fail_on_duplicate_ids(corpus, batch_rows, set(repeated.tolist()))
    return corpus


def _id_hashes_of_string_texts(corpus: pq.ParquetFile, batch_rows: int) -> np.ndarray:
    """digest64 of every document id, after checking that every text is a string."""
    text_type = corpus.schema_arrow.field("text").type
    stringy = pa.types.is_string(text_type) or pa.types.is_large_string(text_type)
    id_hashes = np.empty(corpus.metadata.num_rows, np.uint64)
    bad, bad_ids, off = 0, [], 0
    for batch in read_batches(corpus, batch_rows, ["id", "text"]):
        ids = batch.column("id").to_pylist()
        id_hashes[off : off + len(ids)] = [digest64(str(i)) for i in ids]
        off += len(ids)
        invalid = np.ones(len(ids), bool) if not stringy else batch.column("text").is_null().to_numpy(False)
        if invalid.any():
            bad += int(invalid.sum())
            bad_ids += [ids[k] for k in np.flatnonzero(invalid)[: 5 - len(bad_ids)]]
    if bad:
        raise StageError(f"{bad} document(s) have non-string text, e.g. ids {bad_ids}")
    return id_hashes


def _fail_on_duplicate_ids(corpus: pq.ParquetFile, batch_rows: int, suspects: set[int]) -> None:
    """Raise naming the ids that occur twice among those whose hashes do (a hash can collide)."""
    seen, dups = set(), []
    for batch in read_batches(corpus, batch_rows, ["id"]):
        for doc_id in batch.column("id").to_pylist():
            if digest64(str(doc_id)) in suspects:
                if doc_id in seen:
                    dups.append(doc_id)
                seen.add(doc_id)
    if dups:
        raise StageError(f"{len(dups)} duplicate document id(s), e.g. {dups[:5]}")


class RowGroupWriter:
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
def arrow_allocator():
    """jemalloc for Arrow while the corpus streams through: pyarrow's default allocator (mimalloc)
    held on to freed read buffers, so resident memory grew with the corpus though Arrow's live
    memory did not; with jemalloc (or malloc) it stays flat."""
    previous = pa.default_memory_pool()
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:  # a pyarrow built without jemalloc
        pass
    try:
        yield
    finally:
        pa.set_memory_pool(previous)
