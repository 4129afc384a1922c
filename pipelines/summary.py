"""A short summary of the last run, for the end of `make run`: gates, headline metrics, the report.

`dvc metrics show` prints every key of every metrics file in one table (hundreds of columns); this
prints what a person looks at first, in at most 25 lines, and leaves the rest to
`dvc metrics show` and reports/index.html.

    python -m pipelines.summary
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lmpipe import paths

MAX_LINES = 25


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def get_dotted(data: dict, dotted: str):
    """data['a']['b'] for 'a.b', or None where a part is missing."""
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return "n/a" if value is None else str(value)


def gate_line(quality_dir: Path) -> str:
    results = {p.stem: _read(p) for p in sorted(quality_dir.glob("*.json"))}
    failed = [name for name, r in results.items() if not (r.get("success", r.get("passed", False)))]
    state = "all passed" if not failed else f"FAILED: {', '.join(failed)}"
    return f"gates ({len(results)}): {state}"


# (label, metrics file, dotted key): the numbers that answer "did it work, and what did it cost"
HEADLINES = [
    ("pretrain val loss (nats/token)", "pretrain", "val_loss"),
    ("  unigram baseline", "pretrain", "unigram_loss"),
    ("pretrain val bits/byte", "pretrain", "val_bits_per_byte"),
    ("pretrain tokens/s", "pretrain", "tokens_per_s"),
    ("fine-tune val accuracy", "finetune", "val_accuracy"),
    ("in-distribution accuracy", "evaluate", "task.id.accuracy"),
    ("forgetting (relative perplexity increase)", "evaluate", "lm.forgetting"),
    ("mean shift gap", "evaluate", "task.gap.mean"),
]


def shift_lines(evaluate: dict) -> list[str]:
    lines = []
    for name, row in sorted((get_dotted(evaluate, "task.shift") or {}).items()):
        verdict = get_dotted(evaluate, f"capability.{name}.verdict")
        lines.append(f"  shift {name:<10} accuracy {_fmt(row.get('accuracy'))}"
                     + (f"  -> {verdict}" if verdict else ""))
    return lines


def summary(metrics_dir: Path = paths.METRICS, quality_dir: Path = paths.QUALITY,
            report: Path = paths.REPORT_HTML) -> list[str]:
    metrics = {p.stem: _read(p) for p in metrics_dir.glob("*.json")}
    lines = ["== lmpipe run summary", gate_line(quality_dir)]
    for label, stage, key in HEADLINES:
        value = get_dotted(metrics.get(stage, {}), key)
        if value is not None:
            lines.append(f"{label:<42} {_fmt(value)}")
    lines += shift_lines(metrics.get("evaluate", {}))
    room = MAX_LINES - len(lines) - 2
    lines = lines[: len(lines) + min(0, room)]
    lines.append(f"report: {report.resolve() if report.exists() else f'{report} (not written yet)'}")
    lines.append("every metric: dvc metrics show   changes vs HEAD: dvc metrics diff")
    return lines


def main() -> int:
    print("\n".join(summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
