"""Stage 1 — ingest: bring the corpus, the labelled task, its shifted copies and prompts in.

Sources (`data.source`, read by lmpipe/sources/):
  world  the embedded generated corpus with known ground truth (lmpipe/world); offline default
  files  local txt/jsonl/json/csv/tsv/parquet files named by globs, kept under data/input/
  hf     `datasets.load_dataset` specs (a hub name with a network, or "json"/"csv"/"parquet"
         builders with local data_files)

Everything is read and checked before anything is written; data/raw is then replaced as a whole.
Outputs (the data contract, see README "What the default run produces"): data/raw/corpus.parquet,
data/raw/task/{split}.parquet, data/raw/task/shifts/<name>.parquet, data/raw/task/labels.json,
data/raw/prompts.jsonl (empty for files/hf without data.files.prompts: generate then takes its
prompts from the cleaned validation split), data/raw/safety.parquet (the safety request set; empty
for files/hf without data.files.safety), metrics/ingest.json; then the ingest gate.
"""

from __future__ import annotations

import sys

import great_expectations.expectations as gxe

from lmpipe import paths
from lmpipe.gates import Gate
from lmpipe.io import atomic_path, run_stage, write_json, write_jsonl, write_parquet
from lmpipe.outputs import check_writable
from lmpipe.params import GateIngest, load_params
from lmpipe.sources.raw import RawData, build_raw, leakage
from lmpipe.sources.tables import SPLITS


def write_raw(raw: RawData) -> None:
    """All of data/raw in one move: a crash leaves the previous data/raw, never a mix."""
    with atomic_path(paths.RAW) as tmp:
        def at(path):
            return tmp / path.relative_to(paths.RAW)

        write_parquet(at(paths.RAW_CORPUS), raw.corpus)
        for split in SPLITS:
            write_parquet(at(paths.RAW_TASK / f"{split}.parquet"), raw.task[split])
        for name, df in raw.shifts.items():
            write_parquet(at(paths.RAW_SHIFTS / f"{name}.parquet"), df)
        write_json(at(paths.RAW_TASK / "labels.json"), {"label_names": raw.label_names})
        write_jsonl(at(paths.RAW_PROMPTS), raw.prompts)
        write_parquet(at(paths.RAW_SAFETY), raw.safety)


def metrics(raw: RawData, leaks: int) -> dict:
    return {
        "docs": len(raw.corpus),
        "chars": int(raw.corpus["text"].str.len().sum()),
        "task": {s: len(raw.task[s]) for s in SPLITS},
        "shifts": {name: len(df) for name, df in raw.shifts.items()},
        "safety": {f"{split}_{kind}": int(n) for (split, kind), n in raw.safety.groupby(["split", "kind"]).size().items()},
        "noise": raw.noise,
        "leakage": leaks,
        "train_leaks_removed": raw.train_leaks_removed,
        "read": raw.read.metrics(),
    } | ({"fingerprint": raw.fingerprint} if raw.fingerprint else {})


def gate(raw: RawData, leaks: int, g: GateIngest) -> None:
    """Enough documents with ids and text; every task split and shift sized, labelled in range;
    each class present in train; no evaluation text seen in training."""
    n_classes = len(raw.label_names)
    check = Gate("ingest").table("corpus", raw.corpus).table("train", raw.task["train"])
    check.expect("corpus", gxe.ExpectTableRowCountToBeBetween(min_value=g.min_docs))
    check.expect("corpus", gxe.ExpectTableColumnsToMatchSet(
        column_set=["id", "text", "source", "domain", "noise"], exact_match=False))
    check.expect("corpus", gxe.ExpectColumnValuesToNotBeNull(column="text"))
    check.expect("corpus", gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1))
    check.expect("corpus", gxe.ExpectColumnValuesToBeUnique(column="id"))
    labelled = {**{s: raw.task[s] for s in SPLITS}, **{f"shift_{k}": v for k, v in raw.shifts.items()}}
    for name, df in labelled.items():
        check.table(name, df)
        check.expect(name, gxe.ExpectTableRowCountToBeBetween(min_value=g.min_task_rows))
        check.expect(name, gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1))
        check.expect(name, gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(n_classes))))
        check.expect(name, gxe.ExpectColumnValuesToNotBeNull(column="label"))
    shares = raw.task["train"]["label"].value_counts(normalize=True).reindex(range(n_classes), fill_value=0)
    check.scalars("balance", {f"class_{k}_share": float(v) for k, v in shares.items()} | {"leakage": leaks})
    for k in range(n_classes):
        check.expect("balance", gxe.ExpectColumnValuesToBeBetween(
            column=f"class_{k}_share", min_value=g.min_class_share))
    check.expect("balance", gxe.ExpectColumnValuesToBeBetween(column="leakage", min_value=0, max_value=0))
    check.finish()


def main() -> None:
    params = load_params()
    check_writable(dirs=[paths.RAW], files=[paths.metrics_file("ingest"), paths.quality_file("ingest")])  # before any work: a file where a folder goes fails now, not at the end
    raw = build_raw(params)
    for warning in raw.read.warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    print(f"[ingest] source={params.data.source}: {len(raw.corpus)} docs, task "
          + ", ".join(f"{s}={len(raw.task[s])}" for s in SPLITS) + f", {len(raw.shifts)} shifts", flush=True)
    write_raw(raw)
    leaks = leakage(raw.task, raw.shifts)
    write_json(paths.metrics_file("ingest"), metrics(raw, leaks))
    gate(raw, leaks, params.data.gate)


if __name__ == "__main__":
    run_stage(main)
