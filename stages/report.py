"""Stage report: one self-contained HTML page a user opens after `dvc repro`.

Sections: each stage's gate status; pretraining and fine-tuning curves; in-distribution vs. shift
accuracy with bootstrap intervals and the capability verdict per shift; the confusion matrix; the
competing-objectives table (accuracy, forgetting, efficiency, readability); safety training and its
failure modes (redteam, lmpipe/reporting/safety.py); samples side by side
(lmpipe/reporting). The page is written before the report's own gate (reports/quality/report.json)
checks that every metric it shows is finite and in range, so a failing gate still leaves a report
to read.
"""

from __future__ import annotations

from pathlib import Path

import great_expectations.expectations as gxe
import pandas as pd

from lmpipe import paths
from lmpipe.gates import Gate
from lmpipe.io import run_stage, write_text
from lmpipe.outputs import check_writable
from lmpipe.params import load_params
from lmpipe.reporting.inputs import ReportInputs, collect, numeric_facts
from lmpipe.reporting.page import build_html
from lmpipe.reporting.safety import rate_rows as safety_rate_rows
from lmpipe.reporting.safety import read_redteam


def rate_rows(d: ReportInputs) -> pd.DataFrame:
    """The shown metrics that are rates, each of which must lie in [0, 1]."""
    ev = d.evaluate
    return pd.DataFrame(
        [{"metric": "evaluate.task.id.accuracy", "value": ev["task"]["id"]["accuracy"]},
         {"metric": "evaluate.task.id.macro_f1", "value": ev["task"]["id"]["macro_f1"]},
         {"metric": "evaluate.task.id.ece", "value": ev["task"]["id"]["ece"]}]
        + [{"metric": f"evaluate.task.shift.{n}.{k}", "value": s[k]} for n, s in ev["task"]["shift"].items()
           for k in ("accuracy", "macro_f1")]
        + [{"metric": f"generate.{m}.{k}", "value": v[k]} for m, v in d.generate.items()
           for k in ("distinct_1", "distinct_2", "repeat_4gram", "degenerate_share")]
        + [{"metric": "finetune.val_accuracy", "value": d.finetune["val_accuracy"]}]
        + safety_rate_rows(read_redteam()[0]))


def gate(d: ReportInputs, figures: list[Path]) -> None:
    facts = numeric_facts(d)
    long = pd.DataFrame({"metric": list(facts), "value": list(facts.values())})
    files = pd.DataFrame({"figure": [p.name for p in figures], "png": [_is_png(p) for p in figures]})
    g = Gate("report").table("metrics", long).table("rates", rate_rows(d)).table("figures", files)
    g.expect("metrics", gxe.ExpectColumnValuesToNotBeNull(column="value"))
    g.expect("rates", gxe.ExpectColumnValuesToNotBeNull(column="value"))
    g.expect("rates", gxe.ExpectColumnValuesToBeBetween(column="value", min_value=0, max_value=1))
    if len(files):
        g.expect("figures", gxe.ExpectColumnValuesToBeInSet(column="png", value_set=[True]))
    bad = [k for k, v in facts.items() if v is None]
    g.finish(hints=[f"not finite (NaN/inf, written as null): {', '.join(bad[:10])}"] if bad else [])


def _is_png(path: Path) -> bool:
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def main() -> None:
    params = load_params()
    check_writable(dirs=[paths.REPORT_FIGURES], files=[paths.REPORT_HTML, paths.quality_file("report")])  # before any work: a file where a folder goes fails now, not at the end
    figures = paths.REPORT_FIGURES
    figures.mkdir(parents=True, exist_ok=True)
    for old in figures.glob("*.png"):  # figures of this run only
        old.unlink()
    d = collect(params)
    page = build_html(d, figures)
    write_text(paths.REPORT_HTML, page)
    print(f"[report] wrote {paths.REPORT_HTML} ({len(page) // 1024} KiB)", flush=True)
    gate(d, sorted(figures.glob("*.png")))


if __name__ == "__main__":
    run_stage(main)
