"""Compare a reproduction's metrics with the committed ones, key by key, under tolerances.

    python -m pipelines.check_metrics --committed <dir> --current metrics --tolerances metrics/tolerances.yaml

Every JSON file under the committed directory is flattened to `file:dotted.key` entries. A rule in
tolerances.yaml (first glob match wins) says how far a value may move: `abs` (absolute), `rel`
(relative to the committed value), or `ignore: true` for timing keys, which are reported, never
gated (CPU timings vary by machine load). Strings must match exactly. A key that disappeared is a
failure: dashboards and CI read these keys. Exit 1 with a table of everything that moved too far.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
from pathlib import Path

import yaml


def flatten(obj, prefix: str = "") -> dict:
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out |= flatten(v, f"{prefix}[{i}]")
    else:
        out[prefix] = obj
    return out


def load_dir(directory: Path) -> dict:
    values = {}
    for path in sorted(directory.glob("*.json")):
        for key, value in flatten(json.loads(path.read_text())).items():
            values[f"{path.name}:{key}"] = value
    return values


def rule_for(key: str, rules: list[dict], default: dict) -> dict:
    for rule in rules:
        if fnmatch.fnmatchcase(key, rule["key"]):
            return rule
    return default


def within(committed, current, rule: dict) -> bool:
    if rule.get("ignore"):
        return True
    if isinstance(committed, bool) or isinstance(committed, str) or committed is None:
        return committed == current
    if not isinstance(current, (int, float)) or isinstance(current, bool):
        return False
    if math.isnan(committed) or math.isnan(current):
        return math.isnan(committed) and math.isnan(current)
    allowed = max(rule.get("abs", 0.0), rule.get("rel", 0.0) * abs(committed))
    return abs(current - committed) <= allowed


def compare(committed: dict, current: dict, tolerances: dict) -> list[dict]:
    """Rows for every committed key that moved out of its band (or vanished)."""
    rules, default = tolerances.get("rules", []), tolerances.get("default", {"rel": 0.0})
    bad = []
    for key, old in committed.items():
        rule = rule_for(key, rules, default)
        if key not in current:
            if not rule.get("ignore"):
                bad.append({"key": key, "committed": old, "current": "<missing>", "allowed": _band(rule)})
            continue
        if not within(old, current[key], rule):
            bad.append({"key": key, "committed": old, "current": current[key], "allowed": _band(rule)})
    return bad


def _band(rule: dict) -> str:
    parts = [f"{k}={rule[k]}" for k in ("abs", "rel") if k in rule]
    return ", ".join(parts) or "exact"


def render(rows: list[dict]) -> str:
    header = ("key", "committed", "current", "allowed")
    table = [header] + [tuple(_short(r[h]) for h in header) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in table)


def _short(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--committed", type=Path, required=True)
    ap.add_argument("--current", type=Path, default=Path("metrics"))
    ap.add_argument("--tolerances", type=Path, default=Path("metrics/tolerances.yaml"))
    args = ap.parse_args(argv)
    committed, current = load_dir(args.committed), load_dir(args.current)
    if not committed:
        print(f"error: no committed metrics in {args.committed}", file=sys.stderr)
        return 2
    tolerances = yaml.safe_load(args.tolerances.read_text()) or {}
    bad = compare(committed, current, tolerances)
    gated = sum(not rule_for(k, tolerances.get("rules", []), {}).get("ignore") for k in committed)
    if bad:
        print(f"metrics moved out of tolerance ({len(bad)} of {gated} gated keys):\n{render(bad)}")
        return 1
    print(f"metrics reproduced: {gated} gated keys within tolerance ({len(committed) - gated} timing keys reported only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
