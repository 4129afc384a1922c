"""DVC experiments from Python: param overrides, saving and queueing runs, `dvc exp show --json`.

Overrides use `dvc exp run -S` semantics: dotted keys (optionally prefixed `params.yaml:`),
YAML-parsed values, written into params.yaml with comments preserved (ruamel round-trip), then
validated by the same schema every stage uses, so a bad key fails here, before any stage starts.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

PARAMS_FILE = "params.yaml"


def _schema():
    """stages.config, imported on first use: it pulls in the stages' libraries (seconds of imports)
    that a flow without overrides, or `dvc exp show`, does not need."""
    from lmpipe import params as config

    return config
# YAML 1.1 (PyYAML) reads "1e-3" as a string; DVC's -S grammar reads it as a float, and so do we.
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _dvc() -> str:
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else "dvc"


def _env() -> dict:
    """The venv's bin first on PATH, so stage commands (`python -m ...`) use the project's python."""
    return os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                         "DVC_NO_ANALYTICS": "1"}


def parse_value(raw):
    """The value of a `-S key=value` override, typed the way `dvc exp run -S` types it."""
    if not isinstance(raw, str):
        return raw
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


def normalize(overrides: dict | list | None) -> dict[str, object]:
    """{key: value} from a dict or from ["key=value", ...]; strips a `params.yaml:` prefix."""
    if not overrides:
        return {}
    ParamsError = _schema().ParamsError
    if isinstance(overrides, (list, tuple)):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ParamsError(f"override {item!r} is not KEY=VALUE")
            key, value = item.split("=", 1)
            pairs[key] = value
        overrides = pairs
    out = {}
    for key, value in overrides.items():
        key = str(key).strip()
        if ":" in key:
            file, key = key.split(":", 1)
            if file != PARAMS_FILE:
                raise ParamsError(f"override {file}:{key}: only {PARAMS_FILE} is supported")
        if not key or key.startswith(("+", "~")) or ".." in key or key.endswith("."):
            raise ParamsError(f"override key {key!r} is not a dotted params key (e.g. finetune.lr)")
        out[key] = value
    return out


def set_dotted(doc, dotted: str, raw) -> None:
    """doc["a"]["b"]["c"] = value for "a.b.c", creating missing sections; "0.5" -> 0.5 as in DVC."""
    ParamsError = _schema().ParamsError
    node = doc
    *parents, leaf = dotted.split(".")
    for key in parents:
        if node.get(key) is None:
            node[key] = {}
        if not hasattr(node[key], "get"):
            raise ParamsError(f"override {dotted}: '{key}' is a value, not a section")
        node = node[key]
    node[leaf] = parse_value(raw)


def validate_overrides(overrides, params_file: Path = Path(PARAMS_FILE)) -> dict[str, object]:
    """Check overrides against the schema without writing anything; returns them normalized."""
    config = _schema()
    overrides = normalize(overrides)
    doc = yaml.safe_load(Path(params_file).read_text(encoding="utf-8")) or {}
    try:
        for dotted, raw in overrides.items():
            set_dotted(doc, dotted, raw)
        config.parse_params(doc)
    except config.ParamsError as err:
        raise config.ParamsError(f"override {overrides}: {err}") from None
    return overrides


def apply_overrides(path: Path, overrides) -> dict:
    """Set `a.b.c=value` entries in params.yaml (comments kept); raise ParamsError if invalid.
    Returns the resulting params as a plain dict."""
    from ruamel.yaml import YAML

    overrides = validate_overrides(overrides, path)
    rt = YAML()
    rt.preserve_quotes = True
    doc = rt.load(Path(path).read_text(encoding="utf-8"))
    for dotted, raw in overrides.items():
        set_dotted(doc, dotted, raw)
    buf = io.StringIO()
    rt.dump(doc, buf)
    plain = yaml.safe_load(buf.getvalue())
    _schema().parse_params(plain)  # the round-tripped text is what stages will read
    Path(path).write_text(buf.getvalue(), encoding="utf-8")
    return plain


def _untracked(paths) -> list[str]:
    """Those of `paths` that exist and git does not track (for `dvc exp save -I`)."""
    existing = [p for p in paths if Path(p).exists()]
    if not existing:
        return []
    tracked = subprocess.run(["git", "ls-files", "--", *existing], capture_output=True, text=True).stdout.split()
    tracked_set = set(tracked)
    return [p for p in existing if p not in tracked_set
            and not any(t.startswith(p.rstrip("/") + "/") for t in tracked_set)]


def save_experiment(name: str | None, include: list[str] = ()) -> str:
    """Record the current workspace (params, dvc.lock, metrics) as a DVC experiment.

    `dvc exp save` leaves untracked files out of the experiment commit, so metrics files that git
    does not track yet (a fresh clone, a new stage) must be named with -I or `dvc exp show` would
    show them as missing."""
    cmd = [_dvc(), "exp", "save", "--force"] + (["--name", name] if name else [])
    for path in _untracked(["dvc.lock", *include]):
        cmd += ["-I", path]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    if out.returncode:
        raise RuntimeError(f"dvc exp save failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def overrides_args(overrides: dict) -> list[str]:
    """-S arguments; values are re-serialized so lists and floats survive DVC's parser."""
    args = []
    for key, value in normalize(overrides).items():
        value = parse_value(value)
        text = json.dumps(value) if isinstance(value, (list, dict)) else (
            "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value))
        args += ["-S", f"{key}={text}"]
    return args


def exp_show(all_commits: bool = False) -> list[dict]:
    cmd = [_dvc(), "exp", "show", "--json", "--no-pager"] + (["-A"] if all_commits else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    if out.returncode:
        raise RuntimeError(f"dvc exp show failed: {out.stderr.strip() or out.stdout.strip()}")
    return json.loads(out.stdout or "[]")
