"""Stage 2 — clean: repair, filter, deduplicate and scrub the raw corpus (lmpipe/cleaning), then
split it into train/validation by document hash.

Writes data/clean/{train,validation}.parquet, metrics/clean.json (documents and characters in and
out, drops per filter in order, PII replacements and, for the world source, precision/recall of
each filter against the injected noise), samples of what each filter dropped under
reports/dropped/, and the clean gate. Streams: the corpus is never held in memory whole, and
neither is the kept text the gate checks.
"""

from __future__ import annotations

import re
from pathlib import Path

import great_expectations.expectations as gxe
import pandas as pd
import pyarrow.parquet as pq

from lmpipe import paths
from lmpipe.cleaning.filters import FILTER_ORDER
from lmpipe.cleaning.pii import is_documentation_email
from lmpipe.cleaning.streaming import CleanReport, clean_parquet
from lmpipe.gates import Gate
from lmpipe.io import run_stage, write_json, write_parquet
from lmpipe.outputs import check_writable
from lmpipe.params import CleanParams, load_params
from lmpipe.text import spacing_key

SPLITS = ("train", "validation")
# What must never survive scrubbing, kept simple and independent of the scrubber's patterns: an
# email address (unless at a domain reserved for documentation, which the scrubber leaves) and a
# North American phone number that is not part of a longer run of numbers.
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
PHONE = re.compile(r"(?<![\w.-])(?:\(\d{3}\) ?\d{3}[-. ]\d{4}|\d{3}([-. ])\d{3}\1\d{4})(?![\w-]|[ .]\d)")


def pii_left(text: str) -> bool:
    return PHONE.search(text) is not None or any(
        not is_documentation_email(m.group()) for m in EMAIL.finditer(text))


def write_outputs(report: CleanReport) -> dict:
    """reports/dropped/<filter>.parquet and metrics/clean.json; returns the metrics."""
    for name, df in report.dropped.items():
        write_parquet(paths.DROPPED / f"{name}.parquet", df)
    metrics = dict(report.stats)
    if report.ground_truth is not None:
        metrics["ground_truth"] = report.ground_truth
    write_json(paths.metrics_file("clean"), metrics)
    drops = metrics["drops"]
    print(f"[clean] {metrics['docs_in']} -> {metrics['docs_out']} docs; drops "
          + ", ".join(f"{k}={drops[k]}" for k in FILTER_ORDER if k in drops), flush=True)
    return metrics


def kept_checks(files: list[Path], batch_rows: int) -> pd.DataFrame:
    """One row per kept document with what the gate checks (length, PII left, a key of the
    normalized text), built batch by batch: a few bytes per document instead of its text."""
    parts = []
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=["text"]):
            text = batch.column(0).to_pandas()
            parts.append(pd.DataFrame({
                "chars": text.str.len(),
                "pii_left": text.fillna("").map(pii_left).astype(bool),
                "text_key": text.fillna("").map(spacing_key).astype("int64"),
            }))
    empty = pd.DataFrame({"chars": pd.Series([], dtype="int64"), "pii_left": pd.Series([], dtype=bool),
                          "text_key": pd.Series([], dtype="int64")})
    return pd.concat(parts, ignore_index=True) if parts else empty


def gate(metrics: dict, p: CleanParams) -> None:
    """Kept documents non-empty, within max_chars, unique and free of PII; no filter dropping more
    than max_drop_share; a non-empty validation split."""
    checked = kept_checks([paths.CLEAN / f"{s}.parquet" for s in SPLITS], p.batch_rows)
    drops = metrics["drops"]
    rates = {f"drop_{k}": drops[k] / max(1, metrics["docs_in"]) for k in FILTER_ORDER if k in drops}
    g = Gate("clean").table("kept", checked).scalars("drop_rates", rates | {
        "validation_docs": metrics["validation_docs"]})
    g.expect("kept", gxe.ExpectColumnValuesToNotBeNull(column="chars"))
    g.expect("kept", gxe.ExpectColumnValuesToBeBetween(column="chars", min_value=1, max_value=p.max_chars))
    g.expect("kept", gxe.ExpectColumnValuesToBeUnique(column="text_key"))
    g.expect("kept", gxe.ExpectColumnValuesToBeInSet(column="pii_left", value_set=[False]))
    for key in rates:
        g.expect("drop_rates", gxe.ExpectColumnValuesToBeBetween(column=key, max_value=p.max_drop_share))
    g.expect("drop_rates", gxe.ExpectColumnValuesToBeBetween(column="validation_docs", min_value=1))
    g.finish()


def main() -> None:
    params = load_params()
    check_writable(dirs=[paths.CLEAN, paths.DROPPED], files=[paths.metrics_file("clean"), paths.quality_file("clean")])  # before any work: a file where a folder goes fails now, not at the end
    report = clean_parquet(paths.RAW_CORPUS, paths.CLEAN, params.clean, params.seed)
    metrics = write_outputs(report)
    gate(metrics, params.clean)


if __name__ == "__main__":
    run_stage(main)
