"""Pass 3 of the streamed clean: the kept documents written to a train/validation split by a hash
of (seed, id), which is stable when documents are added or removed; samples of what each filter
dropped, and optionally every document's decision."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lmpipe.cleaning.dedup import OnDisk, jaccard
from lmpipe.cleaning.filters import CODE, DEDUP_FILTERS, FILTER_ORDER
from lmpipe.cleaning.parquet_io import RowGroupWriter, parquet_file, read_batches
from lmpipe.cleaning.repairs import REPAIRS
from lmpipe.io import atomic_path
from lmpipe.params import CleanParams
from lmpipe.text import unit_interval

DETAIL = "__clean_detail"  # the work file's column of why a filter dropped a document
DECISIONS_SCHEMA = pa.schema([
    ("id", pa.large_string()), ("text", pa.large_string()), ("dropped_by", pa.large_string()),
    ("detail", pa.large_string()), ("repairs", pa.large_string()), ("duplicate_of", pa.int64()),
])
_REPAIR_NAMES = [",".join(r for i, r in enumerate(REPAIRS) if mask & (1 << i)) for mask in range(1 << len(REPAIRS))]


def validation_mask(ids: pd.Series, share: float, seed: int) -> pd.Series:
    """A document's side of the split depends only on (seed, id), not on position or neighbours."""
    return ids.map(lambda doc_id: unit_interval(seed, doc_id)) < share


@dataclass
class Decided:
    """What passes 1 and 2 decided, one entry per input document."""

    code: np.ndarray  # int8 drop code (CODE; 0 = kept)
    duplicate_of: np.ndarray  # int64 row of the kept document a duplicate belongs to, else -1
    like: np.ndarray  # int64 row of the earlier document a near-duplicate matched first, else -1
    signatures: OnDisk | None  # (docs, num_perm) MinHash values, when near dedup ran
    repairs: np.ndarray  # uint8 bit mask over REPAIRS


class _Samples:
    """The first `per_filter` documents each filter dropped (id, text, detail). The samples of the
    dedup filters name the document each duplicate resembles, always an earlier one: its id is
    collected on the way (every id with `every_id`, for the decisions file)."""

    def __init__(self, d: Decided, per_filter: int, every_id: bool):
        self.d = d
        self.rows = {name: np.flatnonzero(d.code == CODE[name])[:per_filter] for name in FILTER_ORDER}
        self.targets = np.unique(np.concatenate([d.duplicate_of[self.rows["exact_dup"]],
                                                 d.like[self.rows["near_dup"]]]))
        self.id_of: dict[int, str] | list[str] = [] if every_id else {}
        self.found: dict[str, list] = {name: [] for name in FILTER_ORDER}

    def see_ids(self, off: int, ids: list[str]) -> None:
        if isinstance(self.id_of, list):
            self.id_of.extend(ids)
        else:
            lo, hi = np.searchsorted(self.targets, [off, off + len(ids)])
            self.id_of.update((int(t), ids[t - off]) for t in self.targets[lo:hi])

    def dedup_detail(self, rows: np.ndarray) -> list[str]:
        d, id_of = self.d, self.id_of
        near = rows[d.code[rows] == CODE["near_dup"]]
        sims = iter(jaccard(d.signatures, near, d.like[near]).tolist() if len(near) else [])
        return [f"duplicate of {id_of[d.duplicate_of[i]]}" if d.code[i] == CODE["exact_dup"]
                else f"near-duplicate of {id_of[d.like[i]]} (jaccard~{next(sims):.2f})" for i in rows]

    def collect(self, off: int, ids: list[str], text: pa.ChunkedArray, detail: list[str]) -> None:
        for name in FILTER_ORDER:
            rows = self.rows[name]
            rows = rows[(rows >= off) & (rows < off + len(ids))]
            if not len(rows):
                continue
            why = self.dedup_detail(rows) if name in DEDUP_FILTERS else [detail[i - off] for i in rows]
            self.found[name] += [(ids[i - off], text[i - off].as_py(), w) for i, w in zip(rows, why)]

    def frames(self) -> dict[str, pd.DataFrame]:
        return {
            name: pd.DataFrame({col: pd.Series([row[k] for row in rows], dtype="str")
                                for k, col in enumerate(("id", "text", "detail"))})
            for name, rows in self.found.items()
        }


def write_splits(docs_path: Path, out: Path, schema: pa.Schema, d: Decided, p: CleanParams, seed: int,
                 decisions_path: Path | None) -> dict:
    """Stream the repaired documents at `docs_path`: kept ones go to out/{train,validation}.parquet,
    the first p.dropped_sample of each filter to stats["dropped"], and with `decisions_path` every
    document's decision there. Returns the split's stats."""
    stats = {"docs_out": 0, "chars_out": 0, "train_docs": 0, "validation_docs": 0}
    samples = _Samples(d, p.dropped_sample, every_id=bool(decisions_path))
    train = RowGroupWriter(out / "train.parquet", schema, p.row_group_rows)
    validation = RowGroupWriter(out / "validation.parquet", schema, p.row_group_rows)
    with contextlib.ExitStack() as stack:
        decisions = None
        if decisions_path:
            decisions = RowGroupWriter(stack.enter_context(atomic_path(decisions_path)), DECISIONS_SCHEMA,
                                       p.row_group_rows)
            stack.callback(decisions.close)
        off = 0
        for batch in read_batches(parquet_file(docs_path), p.batch_rows):
            m = batch.num_rows
            ids = [str(x) for x in batch.column("id").to_pylist()]
            samples.see_ids(off, ids)
            kept = _write_kept(batch, d.code[off : off + m], ids, schema, (train, validation), p, seed)
            for key, value in zip(("docs_out", "chars_out", "validation_docs"), kept):
                stats[key] += value
            detail = batch.column(DETAIL).to_pylist()
            samples.collect(off, ids, batch.column("text"), detail)
            if decisions is not None:
                decisions.add(_decisions(batch, ids, detail, off, d, samples))
            off += m
    train.close()
    validation.close()
    assert off == len(d.code), f"pass 3 read {off} of {len(d.code)} documents"
    stats["train_docs"] = stats["docs_out"] - stats["validation_docs"]
    stats["dropped"] = samples.frames()
    return stats


def _write_kept(batch: pa.RecordBatch, code: np.ndarray, ids: list[str], schema: pa.Schema,
                writers: tuple[RowGroupWriter, RowGroupWriter], p: CleanParams, seed: int) -> tuple[int, int, int]:
    """Write the batch's kept documents to (train, validation); (docs, chars, validation docs)."""
    kept = np.flatnonzero(code == 0)
    table = pa.Table.from_arrays([batch.column(name) for name in schema.names], schema=schema).take(kept)
    is_val = np.fromiter((unit_interval(seed, ids[k]) < p.validation_share for k in kept), bool, len(kept))
    writers[0].add(table.filter(pa.array(~is_val)))
    writers[1].add(table.filter(pa.array(is_val)))
    chars = pc.sum(pc.utf8_length(table.column("text"))).as_py() or 0
    return len(kept), chars, int(is_val.sum())


def _decisions(batch: pa.RecordBatch, ids: list[str], detail: list[str], off: int, d: Decided,
               samples: _Samples) -> pa.Table:
    """One row per document of the batch: its decision, with the detail of a duplicate naming the
    document it duplicates."""
    m = batch.num_rows
    dups = np.flatnonzero(d.duplicate_of[off : off + m] >= 0)
    for k, why in zip(dups, samples.dedup_detail(dups + off)):
        detail[k] = why
    return pa.table({
        "id": pa.array(ids, pa.large_string()),
        "text": batch.column("text"),
        "dropped_by": pa.array([FILTER_ORDER[x - 1] if x else "" for x in d.code[off : off + m].tolist()],
                               pa.large_string()),
        "detail": pa.array(detail, pa.large_string()),
        "repairs": pa.array([_REPAIR_NAMES[r] for r in d.repairs[off : off + m].tolist()], pa.large_string()),
        "duplicate_of": pa.array(d.duplicate_of[off : off + m], pa.int64()),
    }, schema=DECISIONS_SCHEMA)
