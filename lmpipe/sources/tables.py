"""Checks on a table as read: the columns a source needs, text that is really text, labels mapped
onto the label set. Each failure names the file and the first offending line or row."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from lmpipe.io import StageError
from lmpipe.params import DataParams
from lmpipe.sources.readers import Table

SPLITS = ("train", "validation", "test")


@dataclass
class Loaded:
    """What a files or hf source read: corpus (text, source), task splits (text, label)."""

    corpus: pd.DataFrame
    task: dict[str, pd.DataFrame]
    fingerprint: dict[str, str] = field(default_factory=dict)  # part -> digest of what was read


def need_columns(table: Table, columns: dict[str, str]) -> None:
    """`columns`: column -> the params key that names it (for the hint)."""
    missing = [c for c in columns if c not in table.frame.columns]
    if missing:
        keys = ", ".join(columns[c] for c in missing)
        raise StageError(f"{table.name}: no column {', '.join(map(repr, missing))} ({keys});"
                         f" found {sorted(map(str, table.frame.columns))}")


def texts(table: Table, column: str, *, blank_ok: bool) -> tuple[pd.Series, int]:
    """The column's strings and how many were blank. A null or missing value, or one that is not a
    string, is an error (the file is not shaped as the params say); a blank string is dropped when
    `blank_ok` (a corpus document with nothing in it), else an error (a task row must have text)."""
    values = table.frame[column].reset_index(drop=True)
    null = values.isna().to_numpy()
    if null.any():
        i = int(null.argmax())
        raise StageError(f"{table.name}: {table.where(i)}: '{column}' is null or missing"
                         f" ({int(null.sum())} row(s) like it); give every row a text")
    not_str = ~values.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
    if not_str.any():
        i = int(not_str.argmax())
        value = values[i].item() if hasattr(values[i], "item") else values[i]  # numpy scalar -> Python
        raise StageError(f"{table.name}: {table.where(i)}: '{column}' holds {type(value).__name__} {value!r},"
                         " not text")
    blank = (values.str.strip() == "").to_numpy()
    if blank.any() and not blank_ok:
        i = int(blank.argmax())
        raise StageError(f"{table.name}: {table.where(i)}: '{column}' is empty"
                         f" ({int(blank.sum())} row(s) like it); every task row needs a text")
    return values[~blank], int(blank.sum())


def to_labels(table: Table, column: str, p: DataParams) -> pd.Series:
    """Map raw labels to class indices; anything outside the label set is an error, not a guess."""
    values = table.frame[column].reset_index(drop=True)
    if p.files.label_map:
        mapped = values.astype(str).map(p.files.label_map)
    else:
        mapped = pd.to_numeric(values, errors="coerce")
    bad = (mapped.isna() | ~mapped.isin(range(len(p.label_names)))).to_numpy()
    if bad.any():
        i = int(bad.argmax())
        examples = values[bad].astype(str).unique()[:5].tolist()
        raise StageError(
            f"{table.name}: {int(bad.sum())} label(s) outside the label set {p.label_names}"
            f" (first: {table.where(i)}: {values[i]!r}; e.g. {examples}); map them with data.files.label_map"
            " or set data.label_names"
        )
    return mapped.astype("int64")


def task_rows(table: Table, text_column: str, label_column: str, p: DataParams, keys: tuple[str, str]) -> pd.DataFrame:
    """A task file's rows as (text, label); `keys` are the params keys naming the two columns."""
    need_columns(table, {text_column: keys[0], label_column: keys[1]})
    text, _ = texts(table, text_column, blank_ok=False)
    return pd.DataFrame({"text": text.to_list(), "label": to_labels(table, label_column, p).to_list()}).astype(
        {"label": "int64"})
