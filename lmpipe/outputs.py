"""Check a stage's output paths before it does any work.

Outputs are written through `lmpipe.io.atomic_path`: a temporary sibling, renamed into place at
the end. A file where a directory must go (models/base as a file, data/checkpoints as a file) or a
folder the user cannot write would otherwise fail only at that final rename or at the first
checkpoint, after minutes of training. `check_writable` finds those in milliseconds, so stages call
it right after validating params, before importing torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from lmpipe.io import StageError


def _first_existing(path: Path) -> Path:
    """`path` itself or its nearest ancestor that exists (the one a mkdir -p would start from)."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def _check_parent(path: Path) -> None:
    """The folder `path` will be renamed into must be (or become) a directory we may write."""
    anchor = _first_existing(path.parent)
    if not anchor.is_dir():
        what = "is a file" if anchor.exists() else "is a broken link"
        raise StageError(f"cannot write {path}: {anchor} {what}, not a directory; move or delete it")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise StageError(f"cannot write {path}: no write permission on {anchor}")


def check_writable(dirs: Iterable[str | Path] = (), files: Iterable[str | Path] = ()) -> None:
    """Raise StageError naming the first output path that the stage could not write.

    `dirs` are outputs written as directories (a model, a checkpoint folder), `files` single files
    (metrics, reports). An existing output of the right kind is fine (it is replaced); an existing
    one of the wrong kind, a file among its ancestors, or an unwritable parent is not."""
    for raw in dirs:
        path = Path(raw)
        if path.exists() and not path.is_dir():
            raise StageError(f"cannot write {path}: it is a file, but the stage writes a directory there;"
                             " move or delete it")
        _check_parent(path)
    for raw in files:
        path = Path(raw)
        if path.is_dir():
            raise StageError(f"cannot write {path}: it is a directory, but the stage writes a file there;"
                             " move or delete it")
        _check_parent(path)
