"""`data.source: files`: the corpus from globs of local files, the task from one file (or glob) per split.

Globs are relative to the repository root. Files belong under data/input/, which dvc.yaml declares as
ingest's dependency; files elsewhere are read too, with a warning that DVC does not track them.
An empty file is skipped and counted when another file of the same key has rows, and is an error
naming it when none has.
"""

from __future__ import annotations

import pandas as pd

from lmpipe.io import StageError
from lmpipe.params import DataParams
from lmpipe.sources.readers import ReadStats, expand, outside_input, read_table
from lmpipe.sources.tables import SPLITS, Loaded, need_columns, task_rows, texts


def _all_empty(key: str, names: list[str]) -> StageError:
    verb = "is" if len(names) == 1 else "are"
    return StageError(f"{key}: {', '.join(names)} {verb} empty (no rows)")


def load_corpus(p: DataParams, stats: ReadStats) -> pd.DataFrame:
    f, key = p.files, "data.files.corpus"
    if not f.corpus:
        raise StageError(f"{key} is empty: give at least one glob, e.g. 'data/input/corpus/*.jsonl'")
    files = expand(f.corpus, key)
    outside_input(files, key, stats)
    docs, empty = [], []
    for path in files:
        table = read_table(path, p.max_bad_line_share)
        stats.add(table)
        if table.empty:
            empty.append(table.name)
            continue
        need_columns(table, {f.text_column: "data.files.text_column"})
        text, blank = texts(table, f.text_column, blank_ok=True)
        stats.blank_docs += blank
        docs.append(pd.DataFrame({"text": text.to_list(), "source": table.name}))
    if not docs:
        raise _all_empty(key, empty)
    stats.tolerate_empty(key, empty)
    corpus = pd.concat(docs, ignore_index=True)
    if corpus.empty:
        raise StageError(f"{key}: every document is blank (empty or whitespace) in {', '.join(map(str, files))}")
    return corpus


def load_split(p: DataParams, split: str, stats: ReadStats) -> pd.DataFrame:
    f, key = p.files, f"data.files.task_{split}"
    pattern = getattr(f, f"task_{split}")
    if not pattern:
        raise StageError(f"{key} is empty: give a file or glob, e.g. 'data/input/task/{split}.csv'")
    files = expand(pattern, key)
    outside_input(files, key, stats)
    frames, empty = [], []
    columns = ("data.files.task_text_column", "data.files.label_column")
    for path in files:
        table = read_table(path, p.max_bad_line_share)
        stats.add(table)
        if table.empty:
            empty.append(table.name)
            continue
        frames.append(task_rows(table, f.task_text_column, f.label_column, p, columns))
    if not frames:
        raise _all_empty(key, empty)
    stats.tolerate_empty(key, empty)
    return pd.concat(frames, ignore_index=True)


def load_files(p: DataParams, stats: ReadStats) -> Loaded:
    corpus = load_corpus(p, stats)
    task = {split: load_split(p, split, stats) for split in SPLITS}
    return Loaded(corpus, task)
