"""DVC experiments from Python: param overrides, saving runs, reading `dvc exp show --json`.

Overrides use `dvc exp run -S` semantics: dotted keys, YAML-parsed values, written into
params.yaml with comments preserved (ruamel round-trip), then validated by the same schema every
stage uses, so a bad key fails here, before any stage starts.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import yaml
from ruamel.yaml import YAML

from stages.config import ParamsError, parse_params


def _dvc() -> str:
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else "dvc"


def set_dotted(doc, dotted: str, raw) -> None:
    """doc["a"]["b"]["c"] = value for "a.b.c", creating missing sections; "0.5" -> 0.5 as in DVC."""
    node = doc
    *parents, leaf = dotted.split(".")
    for key in parents:
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
    node[leaf] = yaml.safe_load(raw) if isinstance(raw, str) else raw


def apply_overrides(path: Path, overrides: dict[str, str]) -> None:
    """Set `a.b.c=value` entries in params.yaml (comments kept); raise ParamsError if invalid."""
    rt = YAML()
    rt.preserve_quotes = True
    doc = rt.load(path.read_text(encoding="utf-8"))
    for dotted, raw in overrides.items():
        set_dotted(doc, dotted, raw)
    buf = io.StringIO()
    rt.dump(doc, buf)
    parse_params(yaml.safe_load(buf.getvalue()))  # validate before touching the file
    path.write_text(buf.getvalue(), encoding="utf-8")


def save_experiment(name: str | None) -> str:
    """Record the current workspace (params, dvc.lock, metrics) as a DVC experiment."""
    cmd = [_dvc(), "exp", "save", "--force"] + (["--name", name] if name else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"dvc exp save failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def exp_show() -> list[dict]:
    out = subprocess.run([_dvc(), "exp", "show", "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout or "[]")


def validate_overrides(overrides: dict[str, str], params_file: Path = Path("params.yaml")) -> None:
    """Check overrides against the schema without writing anything."""
    doc = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
    for dotted, raw in overrides.items():
        set_dotted(doc, dotted, raw)
    try:
        parse_params(doc)
    except ParamsError as err:
        raise ParamsError(f"override {overrides}: {err}") from None
