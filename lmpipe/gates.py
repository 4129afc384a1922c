"""Data-quality gates: Great Expectations (GX Core 1.x) validations at the end of every stage.

A stage collects expectations against the tables it wrote (and, where it matters, read), then
calls `Gate.finish()`: every table is validated with an ephemeral GX context, the result goes to
`reports/quality/<stage>.json`, and a failure exits with code 1 and a message that names each
failed expectation with a few offending values. DVC then records nothing for the stage and runs
nothing downstream; the Prefect flow marks the run Failed (a gate failure is never retried).

Scalar conditions (for example "validation loss below the unigram baseline") are expressed as
one-row tables so they go through the same GX machinery and the same report.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lmpipe.io import write_json

# GX would otherwise phone home on first use; the pipeline must work offline.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

QUALITY_DIR = Path("reports/quality")
GATE_EXIT_CODE = 1
FAILED_MARKER = "DATA GATE FAILED"  # the Prefect flow looks for this to skip retries


@dataclass
class Gate:
    stage: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    checks: list[tuple[str, object]] = field(default_factory=list)

    def table(self, name: str, df: pd.DataFrame) -> Gate:
        self.tables[name] = df.reset_index(drop=True)
        return self

    def expect(self, table: str, expectation) -> Gate:
        """Queue a `great_expectations.expectations.Expect...` instance against a named table."""
        if table not in self.tables:
            raise KeyError(f"gate {self.stage}: unknown table {table!r}")
        self.checks.append((table, expectation))
        return self

    def scalars(self, name: str, values: dict[str, float | bool]) -> Gate:
        """Register scalar facts (one-row table) so expectations can be written against them."""
        return self.table(name, pd.DataFrame([values]))

    def run(self) -> dict:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        # tqdm bars per expectation would drown the stage log that DVC and Prefect show
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = context.data_sources.add_pandas(name=f"{self.stage}_gate")
        results = []
        for table, df in self.tables.items():
            expectations = [e for t, e in self.checks if t == table]
            if not expectations:
                continue
            batch = (
                source.add_dataframe_asset(name=table)
                .add_batch_definition_whole_dataframe(f"{table}_all")
                .get_batch(batch_parameters={"dataframe": df})
            )
            suite = context.suites.add(gx.ExpectationSuite(name=f"{self.stage}.{table}"))
            for e in expectations:
                suite.add_expectation(e)
            validation = batch.validate(suite, result_format="SUMMARY")
            for r in validation.results:
                results.append(_summarize(table, r))
        report = {
            "stage": self.stage,
            "success": all(r["success"] for r in results),
            "evaluated": len(results),
            "failed": sum(not r["success"] for r in results),
            "expectations": results,
        }
        write_json(QUALITY_DIR / f"{self.stage}.json", report)
        return report

    def finish(self, hints: list[str] = ()) -> dict:
        """Validate, write the report, and on failure exit 1 after printing each failed
        expectation and the stage's plain-language `hints` (what to change, and where)."""
        report = self.run()
        if report["success"]:
            print(f"[gate] {self.stage}: {report['evaluated']} expectations passed", flush=True)
            return report
        lines = [f"{FAILED_MARKER}: {self.stage} ({report['failed']}/{report['evaluated']} failed)"]
        for r in report["expectations"]:
            if not r["success"]:
                lines.append(f"  - {r['table']}: {r['expectation']} {r['kwargs']}")
                lines.append(f"      observed: {r['observed']}; examples: {r['examples']}")
        lines += [f"  {self.stage} gate: {hint}" for hint in hints]
        lines.append(f"  full report: {QUALITY_DIR / (self.stage + '.json')}")
        print("\n".join(lines), file=sys.stderr, flush=True)
        raise SystemExit(GATE_EXIT_CODE)


def _summarize(table: str, r) -> dict:
    config = r.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    res = r.result or {}
    observed = res.get("observed_value")
    if observed is None and "unexpected_count" in res:
        observed = f"{res['unexpected_count']} of {res.get('element_count')} rows unexpected"
    examples = [_short(v) for v in (res.get("partial_unexpected_list") or [])[:5]]
    if r.exception_info and r.exception_info.get("raised_exception"):
        observed = f"error: {r.exception_info.get('exception_message')}"
    return {
        "table": table,
        "expectation": config.type,
        "kwargs": {k: _short(v) for k, v in kwargs.items()},
        "success": bool(r.success),
        "observed": _short(observed),
        "examples": examples,
    }


def _short(value, limit: int = 120):
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "…"
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, (list, tuple)) and len(value) > 10:
        return [_short(v) for v in value[:10]] + ["…"]
    return value
