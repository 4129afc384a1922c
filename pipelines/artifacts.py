"""What the lmpipe flow shows in the Prefect UI: a gate report and a metrics table per stage, and
a run summary.

Artifacts are sent from one background thread, so that an API call (which a busy server answers
with a 503 and a 2 s client backoff) never holds up the next stage. The flow waits for them
before it ends (`wait_for_artifacts`), so a finished run has all of them. An artifact that cannot
be sent is a warning, never a failure of the run.
"""

from __future__ import annotations

import contextvars
import json
import re
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from lmpipe import paths
from pipelines.check_metrics import flatten
from pipelines.dag import Stage

_ARTIFACTS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmpipe-artifacts")
_pending: list[Future] = []


def artifact_key(name: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


def metrics_rows(stage: Stage) -> list[dict]:
    """Flat key/value rows of the stage's metrics files, for a table artifact."""
    rows = []
    for path in stage.metrics:
        if Path(path).exists():
            for key, value in flatten(json.loads(Path(path).read_text())).items():
                rows.append({"file": path, "metric": key, "value": value})
    return rows


def _cells(r: dict) -> list[str]:
    return [r["table"], r["expectation"], json.dumps(r["kwargs"]), str(r["observed"]),
            ", ".join(f"`{e}`" for e in r["examples"]) or "-"]


def gate_markdown(stage_name: str, note: str = "") -> str | None:
    """The stage's gate report (reports/quality/<stage>.json) as Markdown: failed expectations with
    their observed values and examples, then the passed ones. None without an expectation report."""
    path = paths.quality_file(stage_name)
    if not path.exists():
        return None
    q = json.loads(path.read_text())
    if "expectations" not in q:  # e.g. the params check: a pass/fail record, not a gate report
        return None
    status = "passed" if q["success"] else "**FAILED**"
    lines = [f"# Data-quality gate `{stage_name}`: {status}", ""]
    if note:
        lines += [f"_{note}_", ""]
    lines += [f"{q['evaluated']} expectations, {q['failed']} failed.", ""]
    failed = [r for r in q["expectations"] if not r["success"]]
    if failed:
        lines += ["| table | expectation | arguments | observed | examples |", "|---|---|---|---|---|"]
        for r in failed:
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in _cells(r)) + " |")
    passed = [r for r in q["expectations"] if r["success"]]
    if passed:
        lines += ["", "Passed: " + ", ".join(
            f"`{r['table']}.{r['expectation']}" + (f"({r['kwargs']['column']})`" if "column" in r["kwargs"] else "`")
            for r in passed)]
    return "\n".join(lines) + "\n"


def publish_in_background(create, *args, **kwargs) -> None:
    """Run an artifact call on the artifacts thread, in the caller's Prefect run context (so the
    artifact belongs to the caller's task run)."""
    _pending.append(_ARTIFACTS.submit(contextvars.copy_context().run, create, *args, **kwargs))


def wait_for_artifacts(log, timeout: float = 120) -> None:
    """Block until every artifact queued so far was sent; a failed one is a warning, never a failure."""
    while _pending:
        future = _pending.pop(0)
        try:
            future.result(timeout=timeout)
        except Exception as err:  # an artifact is never worth failing a finished run
            log.warning(f"could not publish an artifact: {err!r}")


def publish_stage_artifacts(stage: Stage, skipped: bool) -> None:
    """Read the stage's gate report and metrics now (the next stage may rewrite shared files), send
    them in the background."""
    note = "stage was up to date (dvc.lock): results of the run that produced these outputs" if skipped else ""
    md = gate_markdown(stage.name, note)
    if md:
        publish_in_background(create_markdown_artifact, md, key=f"gate-{artifact_key(stage.name)}",
                              description=f"data-quality gate of stage {stage.name}")
    rows = metrics_rows(stage)
    if rows:
        publish_in_background(create_table_artifact, rows, key=f"metrics-{artifact_key(stage.name)}",
                              description=f"metrics of stage {stage.name}")


def summary_markdown(results: dict, timings: dict, failure: str = "", experiment: str = "",
                     report_ran: bool = True) -> str:
    """The run summary: one row per stage (result, seconds), the failure, the experiment, the report."""
    lines = ["# lmpipe run", ""]
    if failure:
        lines += [f"**Failed:** {failure}", ""]
    lines += ["| stage | result | seconds |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {timings[k]:.1f} |" if k in timings else f"| {k} | {v} | - |"
              for k, v in results.items()]
    if experiment:
        lines += ["", f"Saved as DVC experiment: {experiment} (`dvc exp show`)."]
    report = paths.REPORT_HTML
    if report.exists():
        when = "" if report_ran else " (from an earlier run: this run did not include the report stage)"
        lines += ["", f"HTML report{when}: [{report}]({report.resolve().as_uri()}) — `{report.resolve()}` on "
                      "the machine that ran the flow; `dvc metrics show` / `dvc plots show` for the rest."]
    return "\n".join(lines) + "\n"


def publish_summary(markdown: str) -> None:
    create_markdown_artifact(markdown, key="lmpipe-summary", description="run summary")
