"""Stage 2 — clean: repair, filter, deduplicate and scrub the raw corpus (stages/cleaning.py),
then split it into train/validation by document hash.

Writes data/clean/{train,validation}.parquet, metrics/clean.json (documents and characters in and
out, drops per filter in order, PII replacements and, for the world source, precision/recall of
each filter against the injected noise), samples of what each filter dropped under
reports/dropped/, and the clean gate.
"""

from __future__ import annotations

import re
from pathlib import Path

import great_expectations.expectations as gxe
import pandas as pd

from stages.artifacts import read_parquet, run_stage, write_json, write_parquet
from stages.cleaning import FILTER_ORDER, clean_corpus, score_against_ground_truth
from stages.config import load_params
from stages.gates import Gate

OUT = Path("data/clean")
DROPPED = Path("reports/dropped")
# What must never survive scrubbing (kept simple and independent of the scrubber's own regexes).
EMAIL = r"[\w.+-]+@[\w-]+\.[\w.]+"
PHONE = r"\(?\b\d{3}\)?[-. ]\d{3}[-. ]\d{4}\b"


def main() -> None:
    params = load_params()
    p = params.clean
    corpus = read_parquet("data/raw/corpus.parquet", ["id", "text"])
    result = clean_corpus(corpus, p, params.seed)
    write_parquet(OUT / "train.parquet", result.train)
    write_parquet(OUT / "validation.parquet", result.validation)
    for name, df in result.dropped.items():
        write_parquet(DROPPED / f"{name}.parquet", df)

    metrics = dict(result.stats)
    if "noise" in corpus.columns and corpus["noise"].astype(bool).any():
        metrics["ground_truth"] = score_against_ground_truth(corpus, result)
    write_json("metrics/clean.json", metrics)
    drops = metrics["drops"]
    print(f"[clean] {metrics['docs_in']} -> {metrics['docs_out']} docs; drops "
          + ", ".join(f"{k}={drops[k]}" for k in FILTER_ORDER if k in drops), flush=True)

    kept = pd.concat([result.train, result.validation], ignore_index=True)
    pii_left = kept["text"].str.contains(EMAIL, regex=True) | kept["text"].str.contains(PHONE, regex=True)
    checked = kept.assign(pii_left=pii_left, text_key=kept["text"].map(lambda t: re.sub(r"\s+", " ", t.lower())))
    rates = {f"drop_{k}": drops[k] / max(1, metrics["docs_in"]) for k in FILTER_ORDER if k in drops}
    gate = Gate("clean").table("kept", checked).scalars("drop_rates", rates | {
        "validation_docs": len(result.validation)})
    gate.expect("kept", gxe.ExpectColumnValuesToNotBeNull(column="text"))
    gate.expect("kept", gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1, max_value=p.max_chars))
    gate.expect("kept", gxe.ExpectColumnValuesToBeUnique(column="text_key"))
    gate.expect("kept", gxe.ExpectColumnValuesToBeInSet(column="pii_left", value_set=[False]))
    for key in rates:
        gate.expect("drop_rates", gxe.ExpectColumnValuesToBeBetween(column=key, max_value=p.max_drop_share))
    gate.expect("drop_rates", gxe.ExpectColumnValuesToBeBetween(column="validation_docs", min_value=1))
    gate.finish()


if __name__ == "__main__":
    run_stage(main)
