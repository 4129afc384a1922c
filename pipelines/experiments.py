"""DVC experiments from Python: param overrides, running and saving runs, `dvc exp show --json`.

Overrides use `dvc exp run -S` semantics: dotted keys (optionally prefixed `params.yaml:`),
YAML-parsed values, written into params.yaml with comments preserved (ruamel round-trip), then
validated by the same schema every stage uses, so a bad key fails here, before any stage starts.

`run_experiment` runs one experiment with `dvc exp run --temp` (in a temporary copy of the
workspace, which stays untouched) as a child process under a time limit: a run that hangs is
stopped with every process under it, and its outcome says so.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from lmpipe import params as schema
from lmpipe import paths
from pipelines.check_metrics import flatten
from pipelines.dvc_runner import dvc_bin, stage_env, stream
from pipelines.failures import reason_line

# YAML 1.1 (PyYAML) reads "1e-3" as a string; DVC's -S grammar reads it as a float, and so do we.
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
# Without a time limit of its own, an experiment may take this many times the training wall time
# the workspace's metrics record (its stages may all rerun), and never less than the floor.
TIME_LIMIT_FACTOR = 5
TIME_LIMIT_FLOOR_S = 900.0


def parse_value(raw):
    """The value of a `-S key=value` override, typed the way `dvc exp run -S` types it."""
    if not isinstance(raw, str):
        return raw
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


def _pairs(items) -> dict:
    pairs = {}
    for item in items:
        if "=" not in str(item):
            raise schema.ParamsError(f"override {item!r} is not KEY=VALUE")
        key, value = str(item).split("=", 1)
        pairs[key] = value
    return pairs


def normalize(overrides: dict | list | None) -> dict[str, object]:
    """{key: value} from a dict or from ["key=value", ...]; strips a `params.yaml:` prefix."""
    if not overrides:
        return {}
    if isinstance(overrides, (list, tuple)):
        overrides = _pairs(overrides)
    out = {}
    for key, value in overrides.items():
        key = str(key).strip()
        if ":" in key:
            file, key = key.split(":", 1)
            if file != str(paths.PARAMS):
                raise schema.ParamsError(f"override {file}:{key}: only {paths.PARAMS} is supported")
        if not key or key.startswith(("+", "~")) or ".." in key or key.endswith("."):
            raise schema.ParamsError(f"override key {key!r} is not a dotted params key (e.g. finetune.lr)")
        out[key] = value
    return out


def set_dotted(doc, dotted: str, raw) -> None:
    """doc["a"]["b"]["c"] = value for "a.b.c", creating missing sections; "0.5" -> 0.5 as in DVC."""
    node = doc
    *parents, leaf = dotted.split(".")
    for key in parents:
        if node.get(key) is None:
            node[key] = {}
        if not hasattr(node[key], "get"):
            raise schema.ParamsError(f"override {dotted}: '{key}' is a value, not a section")
        node = node[key]
    node[leaf] = parse_value(raw)


def validate_overrides(overrides, params_file: Path = paths.PARAMS) -> dict[str, object]:
    """Check overrides against the schema without writing anything; returns them normalized."""
    overrides = normalize(overrides)
    doc = yaml.safe_load(Path(params_file).read_text(encoding="utf-8")) or {}
    try:
        for dotted, raw in overrides.items():
            set_dotted(doc, dotted, raw)
        schema.parse_params(doc)
    except schema.ParamsError as err:
        raise schema.ParamsError(f"override {overrides}: {err}") from None
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
    schema.parse_params(plain)  # the round-tripped text is what stages will read
    Path(path).write_text(buf.getvalue(), encoding="utf-8")
    return plain


def _untracked(paths_) -> list[str]:
    """Those of `paths_` that exist and git does not track (for `dvc exp save -I`)."""
    existing = [p for p in paths_ if Path(p).exists()]
    if not existing:
        return []
    tracked = subprocess.run(["git", "ls-files", "--", *existing], capture_output=True, text=True).stdout.split()
    tracked_set = set(tracked)
    return [p for p in existing if p not in tracked_set
            and not any(t.startswith(p.rstrip("/") + "/") for t in tracked_set)]


def _dvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([dvc_bin(), *args], capture_output=True, text=True, env=stage_env())


def save_experiment(name: str | None, include: list[str] = ()) -> str:
    """Record the current workspace (params, dvc.lock, metrics) as a DVC experiment.

    `dvc exp save` leaves untracked files out of the experiment commit, so metrics files that git
    does not track yet (a fresh clone, a new stage) must be named with -I or `dvc exp show` would
    show them as missing."""
    args = ["exp", "save", "--force"] + (["--name", name] if name else [])
    for path in _untracked(["dvc.lock", *include]):
        args += ["-I", path]
    out = _dvc(*args)
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
    out = _dvc("exp", "show", "--json", "--no-pager", *(["-A"] if all_commits else []))
    if out.returncode:
        raise RuntimeError(f"dvc exp show failed: {out.stderr.strip() or out.stdout.strip()}")
    return json.loads(out.stdout or "[]")


def default_time_limit_s(metrics_dir: Path = paths.METRICS) -> float:
    """A time limit sized to the config: TIME_LIMIT_FACTOR times the wall time (`*wall_s` keys)
    the workspace's metrics record for its last run, at least TIME_LIMIT_FLOOR_S."""
    seconds = 0.0
    for path in sorted(Path(metrics_dir).glob("*.json")):
        try:
            values = flatten(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
        seconds += sum(v for k, v in values.items() if k.endswith("wall_s") and isinstance(v, (int, float)))
    return max(TIME_LIMIT_FLOOR_S, TIME_LIMIT_FACTOR * seconds)


@dataclass
class Outcome:
    """How one experiment of a sweep ended: done, failed, timed out, or kept from an earlier run."""
    name: str
    point: dict
    status: str  # done | failed | timed out | kept
    reason: str = ""  # one line, for anything but done/kept
    seconds: float = 0.0
    log: str = ""  # the run's whole output

    def to_dict(self) -> dict:
        return asdict(self)


def run_experiment(name: str, point: dict, time_limit_s: float, log, log_dir: Path) -> Outcome:
    """`dvc exp run --temp -n <name> -S ...` under `time_limit_s`, its output sent to `log` and
    kept in `log_dir/<name>.log`. `--wait-for-lock`: experiments started side by side take turns at
    the repository lock DVC holds while it sets one up, instead of failing."""
    cmd = [dvc_bin(), "--wait-for-lock", "exp", "run", "--temp", "-n", name, *overrides_args(point)]
    run = stream(cmd, log, time_limit_s=time_limit_s, leader_last=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{name}.log"
    log_file.write_text("\n".join(run.lines) + "\n", encoding="utf-8")
    if run.timed_out:
        status = "timed out"
        reason = (f"stopped at its time limit of {time_limit_s:g} s (it and every process under it);"
                  f" last line: {reason_line(run.lines)}")
    elif run.code:
        status, reason = "failed", reason_line(run.lines)
    else:
        status, reason = "done", ""
    return Outcome(name, point, status, reason, run.seconds, str(log_file))
