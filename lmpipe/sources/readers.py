"""One input file -> a table, with each row's location for error messages and a count of what had
to be repaired; glob expansion that names the key and the pattern when it finds nothing usable.

Every problem is a StageError whose one line names the file (and the line or row where known).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lmpipe import paths
from lmpipe.io import StageError

FORMATS = "txt, jsonl (or .json with one object per line), csv, tsv, parquet"
_SURROGATE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of each invalid byte
_BLOCK_BREAK = re.compile(r"\n\s*\n")


@dataclass
class Table:
    """The rows of one file (or one `load_dataset` split), and where each row came from."""

    name: str  # the file or spec, as messages name it
    frame: pd.DataFrame
    lines: list[int] | None = None  # 1-based line of each row, for formats that have lines
    replaced_bytes_docs: int = 0  # rows in which invalid UTF-8 bytes were replaced by U+FFFD
    bad_lines: int = 0  # jsonl lines skipped (not a JSON object), within data.max_bad_line_share
    digest: str = ""  # of the file's bytes

    def where(self, i: int) -> str:
        return f"line {self.lines[i]}" if self.lines is not None else f"row {i + 1}"

    @property
    def empty(self) -> bool:
        return self.frame.empty


@dataclass
class ReadStats:
    """What reading met across all inputs, reported under `read` in metrics/ingest.json."""

    files: int = 0
    empty_files: int = 0  # tolerated: another file of the same key had rows
    blank_docs: int = 0  # corpus documents whose text is empty or whitespace: dropped
    replaced_bytes_docs: int = 0
    bad_lines: int = 0
    outside_input: int = 0  # files read from outside data/input/, which DVC does not track
    notes: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    outside: dict[str, list[str]] = field(default_factory=dict)  # key -> its files outside data/input/

    @property
    def warnings(self) -> list[str]:
        """One line per tolerated problem, and one for all files outside data/input/."""
        if not self.outside:
            return list(self.notes)
        first = next(iter(self.outside.values()))[0]
        return [*self.notes, f"{self.outside_input} input file(s) outside {paths.INPUT}/ ({', '.join(self.outside)};"
                f" e.g. {first}): DVC does not track them, so editing them will not rerun ingest;"
                f" move them under {paths.INPUT}/"]

    def add(self, table: Table) -> None:
        self.files += 1
        self.replaced_bytes_docs += table.replaced_bytes_docs
        self.bad_lines += table.bad_lines
        self.digests[table.name] = table.digest
        if table.bad_lines:
            self.notes.append(f"{table.name}: skipped {table.bad_lines} line(s) that are not valid JSON objects")

    def tolerate_empty(self, key: str, names: list[str]) -> None:
        if names:
            self.empty_files += len(names)
            self.notes.append(f"{key}: skipped {len(names)} empty file(s): {', '.join(names)}")

    def metrics(self) -> dict[str, int]:
        return {"replaced_bytes_docs": self.replaced_bytes_docs, "bad_lines": self.bad_lines, "files": self.files,
                "empty_files": self.empty_files, "blank_docs": self.blank_docs, "outside_input": self.outside_input}


def content_digest(parts: dict[str, str]) -> str:
    """One digest for several named digests (order-independent)."""
    joined = "\n".join(f"{name}\t{digest}" for name, digest in sorted(parts.items()))
    return hashlib.blake2b(joined.encode(), digest_size=16).hexdigest()


def _decode(raw: bytes) -> tuple[str, bool]:
    """Text, and whether invalid UTF-8 had to be replaced."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def _read_jsonl(name: str, raw: bytes, max_bad_share: float) -> Table:
    rows, lines, replaced, bad = [], [], 0, []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        text, had_bad_bytes = _decode(line)
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            bad.append(n)
            continue
        rows.append(obj)
        lines.append(n)
        replaced += had_bad_bytes
    total = len(rows) + len(bad)
    if bad and len(bad) / total > max_bad_share:
        raise StageError(f"{name}: {len(bad)} of {total} lines are not valid JSON objects (first: line {bad[0]}),"
                         f" above data.max_bad_line_share={max_bad_share}")
    return Table(name, pd.DataFrame(rows), lines, replaced, len(bad))


def _parser_message(err: Exception) -> str:
    return str(err).strip().splitlines()[0].removeprefix("Error tokenizing data. C error: ")


def _read_csv(name: str, raw: bytes, sep: str) -> Table:
    text, had_bad_bytes = _decode(raw)
    kind = "TSV" if sep == "\t" else "CSV"
    try:
        # index_col=False: by default pandas takes a first row with more fields than the header
        # for an index and drops its leading fields without a word; this way it warns instead.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.EmptyDataError:
        df, caught = pd.DataFrame(), []
    except pd.errors.ParserError as err:
        raise StageError(f"{name}: not valid {kind}: {_parser_message(err)}") from None
    if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
        raise StageError(f"{name}: not valid {kind}: {_extra_fields(text, sep)}")
    replaced = 0
    if had_bad_bytes and not df.empty:
        replaced = int(df.apply(lambda col: col.str.contains("\ufffd", regex=False, na=False)).any(axis=1).sum())
    return Table(name, df, replaced_bytes_docs=replaced)


def _extra_fields(text: str, sep: str) -> str:
    """Where a row has more fields than the header, as pandas would count them (an unquoted
    separator inside a field makes one more)."""
    rows = csv.reader(io.StringIO(text), delimiter=sep)
    header = next(rows, [])
    for k, row in enumerate(rows, start=1):
        if len(row) > len(header):
            return (f"row {k} (line {rows.line_num}) has {len(row)} fields for the header's {len(header)} "
                    "columns (an unquoted separator inside a field?)")
    return "a row has more fields than the header"


def _read_txt(name: str, raw: bytes) -> Table:
    """One document per blank-line-separated block. Invalid bytes are replaced per block, so the
    count is of documents that held them."""
    try:
        return Table(name, pd.DataFrame({"text": _blocks(raw.decode("utf-8"))}))
    except UnicodeDecodeError:
        docs, replaced = [], 0
        for block in _blocks(raw.decode("utf-8", errors="surrogateescape")):
            if _SURROGATE.search(block):
                replaced += 1
                block = block.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
            docs.append(block)
        return Table(name, pd.DataFrame({"text": docs}), replaced_bytes_docs=replaced)


def _blocks(text: str) -> list[str]:
    return [b.strip() for b in _BLOCK_BREAK.split(text) if b.strip()]


def _read_parquet(name: str, path: Path) -> Table:
    try:
        return Table(name, pd.read_parquet(path))
    except Exception as err:  # pyarrow raises several types for truncated or corrupt files
        raise StageError(f"{name}: cannot read parquet: {type(err).__name__}: {_parser_message(err)}") from None


def read_table(path: Path, max_bad_share: float) -> Table:
    """One file -> Table; every format problem is a StageError naming the file."""
    name, suffix = str(path), path.suffix.lower()
    if suffix not in (".txt", ".jsonl", ".json", ".csv", ".tsv", ".parquet"):
        raise StageError(f"{name}: unsupported file type {path.suffix!r} (use {FORMATS})")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise StageError(f"{name}: cannot read: {err.strerror or err}") from None
    if suffix == ".parquet":
        table = _read_parquet(name, path)
    elif suffix in (".csv", ".tsv"):
        table = _read_csv(name, raw, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".txt":
        table = _read_txt(name, raw)
    else:
        table = _read_jsonl(name, raw, max_bad_share)
    table.digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
    return table


def expand(patterns: list[str] | str, key: str) -> list[Path]:
    """The files the globs of `key` match (relative to the repository root, `**` recursive), in
    sorted order per pattern, each once. A pattern that matches nothing or a directory is an error."""
    patterns = [patterns] if isinstance(patterns, str) else patterns
    found: dict[str, None] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise StageError(f"{key}: no files match {pattern!r}")
        for match in matches:
            if os.path.isdir(match):
                raise StageError(f"{key}: {pattern!r} matches the directory {match}; globs must match files,"
                                 f" not directories (for the files in it: '{match.rstrip('/')}/*.jsonl')")
            found.setdefault(match)
    return [Path(p) for p in found]


def outside_input(files: list[Path], key: str, stats: ReadStats) -> None:
    """Count (for one warning) files outside data/input/: dvc.yaml declares only that folder as
    ingest's dependency, so DVC would not notice when these change. Read anyway rather than refused:
    a large corpus may live on another disk, and the `inputs` fingerprint in metrics/ingest.json
    still shows when their content changed."""
    root = os.path.abspath(paths.INPUT)
    outside = [f for f in files if os.path.commonpath([root, os.path.abspath(f)]) != root]
    if outside:
        stats.outside_input += len(outside)
        stats.outside.setdefault(key, []).extend(map(str, outside))
