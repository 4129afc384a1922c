"""Reading and writing stage outputs: atomically, deterministically, with clear errors.

Every output goes to a temporary sibling first and is renamed into place only when complete
(`os.replace` is atomic on one filesystem), so a crash or a Ctrl-C never leaves a half-written
shard, model or metrics file for the next stage (or DVC's cache) to pick up.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas is imported where it is used: the params check stage stays light
    import pandas as pd


class StageError(RuntimeError):
    """A problem with the stage's inputs that the user must fix; printed without a traceback."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path (file or directory) next to `path`; move it into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        # JSON has no NaN/inf; null makes a broken metric visible instead of unparseable
        return round(value, 6) if math.isfinite(value) else None
    return value


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str | Path):
    """Read a stage input, turning a missing or corrupt file into a StageError that names it."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "is missing: run the upstream stage first (dvc repro)"
        raise StageError(f"input {path} {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise StageError(f"cannot read {path}: not valid JSON ({err})".splitlines()[0]) from None


def write_jsonl(path: str | Path, rows) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(_jsonable(row), ensure_ascii=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_parquet(path: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.reset_index(drop=True).to_parquet(tmp, index=False)


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a stage input, turning a missing or corrupt file into a StageError that names it."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise StageError(f"missing input {path}: run the upstream stage first (dvc repro)")
    try:
        df = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for truncated/corrupt files
        raise StageError(f"cannot read {path}: {type(err).__name__}: {err}") from None
    if columns:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise StageError(f"{path} lacks column(s) {missing}; it has {list(df.columns)}")
    return df


# Exit codes every stage shares, so `dvc repro`, the Prefect flow and CI can tell failures apart:
# 1 = a data-quality gate failed (lmpipe.gates), 2 = bad params or inputs (fix them, rerun),
# 3 = a bug (unexpected exception). All three are final: running the stage again fails again.
GATE_FAILED, BAD_INPUT, UNEXPECTED = 1, 2, 3


def _exit_now(code: int) -> None:
    """Leave without interpreter shutdown: finalizers of half-torn-down libraries (DVC's pack index,
    multiprocessing, CUDA) print "Exception ignored in ..." noise there, and the user's last line must
    be the error. Everything the stage wrote went through atomic_path and is already closed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_stage(main) -> None:
    """Entry point of every stage: on failure the last line printed says why, and the exit code says
    what kind of failure it was."""
    try:
        main()
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        _exit_now(BAD_INPUT)
    except SystemExit as err:  # a failed gate or params check has already printed its message
        _exit_now(err.code if isinstance(err.code, int) else BAD_INPUT)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        _exit_now(130)
    except Exception as err:  # noqa: BLE001 - report any bug the same way, traceback first
        traceback.print_exc()
        print(f"error: unexpected {type(err).__name__}: {err}".splitlines()[0], file=sys.stderr)
        _exit_now(UNEXPECTED)
