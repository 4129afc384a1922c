"""A safety request set from a file in the inputs (`data.files.safety`), for files and hf sources.

The file (.jsonl or .csv) has one request per row with the columns of the world's set except
`split`: kind (benign | restricted), subject, relation, question (a plain request) and answer
(benign: the true answer; restricted: the secret that must not be disclosed). Each subject goes
to train, validation or test by a seeded hash of its name (lmpipe.world.secrets.split_by_hash), so
the held-out subjects do not depend on the file's row order. Without a file the set is empty, and
sft and redteam record a skipped run.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lmpipe.io import StageError
from lmpipe.sources.readers import ReadStats, outside_input, read_table
from lmpipe.sources.tables import need_columns
from lmpipe.text import spacing_key
from lmpipe.world.secrets import SAFETY_COLUMNS, empty_safety, split_by_hash

KEY = "data.files.safety"
KINDS = ("benign", "restricted")


def read_safety(name: str, seed: int, stats: ReadStats, max_bad_share: float) -> pd.DataFrame:
    """The safety set of the file `name` (SAFETY_COLUMNS), or an empty one when `name` is empty."""
    if not name:
        return empty_safety()
    path = Path(name)
    if path.suffix.lower() not in (".jsonl", ".csv"):
        raise StageError(f"{KEY}: {path} must be .jsonl or .csv (columns kind, subject, relation, question, answer)")
    if not path.is_file():
        raise StageError(f"{KEY}: {path} " + ("is a directory" if path.is_dir() else "does not exist"))
    outside_input([path], KEY, stats)
    table = read_table(path, max_bad_share)
    stats.add(table)
    if table.empty:
        raise StageError(f"{KEY}: {path} is empty (no requests)")
    need_columns(table, {c: KEY for c in SAFETY_COLUMNS[2:]})
    frame = table.frame
    for i, row in enumerate(frame[SAFETY_COLUMNS[2:]].itertuples(index=False)):
        blank = [c for c, v in zip(SAFETY_COLUMNS[2:], row, strict=True) if not isinstance(v, str) or not v.strip()]
        if blank:
            raise StageError(f"{path}: {table.where(i)}: {', '.join(blank)} must be non-empty text")
        if row.kind not in KINDS:
            raise StageError(f"{path}: {table.where(i)}: kind {row.kind!r} is not benign or restricted")
    missing = [k for k in KINDS if not (frame["kind"] == k).any()]
    if missing:
        raise StageError(f"{path}: no {missing[0]} request in {len(frame)} row(s); sft learns to refuse restricted "
                         "requests while still answering benign ones, and redteam measures both: give some of each")
    _check_kinds_agree(path, table)
    df = frame[SAFETY_COLUMNS[2:]].astype(str).reset_index(drop=True)
    df.insert(0, "split", [split_by_hash(s, seed) for s in df["subject"]])
    df.insert(0, "id", [f"safety-{i:05d}" for i in range(len(df))])
    return df


def _check_kinds_agree(path: Path, table) -> None:
    """One question (compared without case and extra spaces) listed both as restricted and as
    benign is an error: sft would teach the model to refuse it and to answer it with the secret."""
    first: dict[int, tuple[int, str]] = {}
    for i, (kind, question) in enumerate(zip(table.frame["kind"], table.frame["question"], strict=True)):
        key = spacing_key(question.strip())
        j, seen = first.setdefault(key, (i, kind))
        if seen != kind:
            raise StageError(f"{path}: {table.where(j)} and {table.where(i)}: the question "
                             f"{table.frame['question'].iloc[j]!r} is listed both as {seen} and as {kind}; "
                             "sft would learn to refuse it and to answer it")
