"""`data.source: hf`: the corpus and the task splits from `datasets.load_dataset` specs.

Each part gets a fingerprint in metrics/ingest.json, so a changed dataset is visible even where DVC
cannot see it: for local files (the "json", "csv", "parquet", "text" builders with data_files), a
digest of their bytes, which changes exactly when their content does; for a hub dataset, its
`datasets` fingerprint, which follows the dataset revision in the cache.
"""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

import pandas as pd

from lmpipe.io import StageError
from lmpipe.params import DataParams, HubSpec
from lmpipe.sources.readers import ReadStats, Table, content_digest, outside_input
from lmpipe.sources.tables import SPLITS, Loaded, need_columns, task_rows, texts

LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas")


def _load(spec: HubSpec, key: str):
    import datasets

    kwargs = {"split": spec.split}
    if spec.data_files:
        kwargs["data_files"] = spec.data_files
    try:
        return datasets.load_dataset(spec.name, spec.config, **kwargs)
    except Exception as err:  # offline, unknown name, bad split, unparsable file: say which spec failed
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StageError(f"{key}: load_dataset({spec.name!r}, {spec.config!r}, {kwargs}): {detail}") from None


def local_files(spec: HubSpec) -> list[Path]:
    """The local files a builder spec reads (globs resolved from the repository root), else []."""
    if spec.name not in LOCAL_BUILDERS or not spec.data_files:
        return []
    return sorted({Path(m) for pattern in spec.data_files for m in glob.glob(pattern, recursive=True)
                   if os.path.isfile(m)})


def fingerprint(spec: HubSpec, ds) -> str:
    files = local_files(spec)
    if files:
        return content_digest({str(f): hashlib.blake2b(f.read_bytes(), digest_size=16).hexdigest() for f in files})
    return str(ds._fingerprint)


def _table(spec: HubSpec, key: str, stats: ReadStats, max_rows: int | None = None) -> tuple[Table, str]:
    ds = _load(spec, key)
    outside_input(local_files(spec), key, stats)
    if max_rows is not None:
        ds = ds.select(range(min(len(ds), max_rows)))
    name = f"{key} (load_dataset({spec.name!r}, split={spec.split!r}))"
    return Table(name, ds.to_pandas()), fingerprint(spec, ds)


def load_hub(p: DataParams, stats: ReadStats) -> Loaded:
    h = p.hf
    missing = [k for k in ("corpus", *(f"task_{s}" for s in SPLITS)) if getattr(h, k) is None]
    if missing:
        raise StageError(f"data.hf needs corpus, task_train, task_validation and task_test specs; missing: {missing}")
    table, corpus_fingerprint = _table(h.corpus, "data.hf.corpus", stats, h.max_docs)
    fingerprints = {"corpus": corpus_fingerprint}
    need_columns(table, {h.corpus.text_column: "data.hf.corpus.text_column"})
    text, blank = texts(table, h.corpus.text_column, blank_ok=True)
    stats.blank_docs += blank
    corpus = pd.DataFrame({"text": text.to_list(), "source": h.corpus.name})
    task = {}
    for split in SPLITS:
        spec, key = getattr(h, f"task_{split}"), f"data.hf.task_{split}"
        table, fingerprints[split] = _table(spec, key, stats)
        task[split] = task_rows(table, spec.text_column, spec.label_column, p,
                                (f"{key}.text_column", f"{key}.label_column"))
    if corpus.empty:
        raise StageError(f"data.hf.corpus: {h.corpus.name!r} has no non-blank documents")
    return Loaded(corpus, task, fingerprints)
