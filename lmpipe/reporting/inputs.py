"""Everything the report shows, read from the stages' metrics, gates and samples.

A missing metrics file is a StageError naming the stage to run; a missing gate file is shown as
"not run". `numeric_facts` flattens every number the page shows, for the report's own gate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from lmpipe.io import StageError, read_json
from lmpipe.params import Params
from lmpipe.paths import SAMPLES, metrics_file, quality_file

STAGES = ["ingest", "clean", "tokenize", "pretrain", "sft", "finetune", "evaluate", "generate", "redteam"]
# keys that are legitimately absent (e.g. replay loss when lambda = 0) are not metrics
OPTIONAL_NULLS = {"finetune.replay_lm_loss", "finetune.train_task_loss", "evaluate.efficiency.trainable_params"}


@dataclass
class ReportInputs:
    title: str
    evaluate: dict
    pretrain: dict
    finetune: dict
    generate: dict
    clean: dict
    samples: list[dict]
    gap_threshold: float  # evaluate's thresholds, which the verdicts on the page were made with
    capability_ratio: float


def read_metrics(name: str) -> dict:
    path = metrics_file(name)
    if not path.exists():
        raise StageError(f"missing {path}: run the {name} stage first (dvc repro)")
    return read_json(path)


def read_samples() -> list[dict]:
    path = SAMPLES / "samples.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def collect(params: Params) -> ReportInputs:
    return ReportInputs(title=params.report.title, evaluate=read_metrics("evaluate"), pretrain=read_metrics("pretrain"),
                        finetune=read_metrics("finetune"), generate=read_metrics("generate"),
                        clean=read_metrics("clean"), samples=read_samples(),
                        gap_threshold=params.evaluate.gap_threshold,
                        capability_ratio=params.evaluate.capability_ratio)


def gate_rows() -> list[dict]:
    """One row per stage: its data-quality gate's status and the expectations that failed."""
    rows = []
    for stage in STAGES:
        path = quality_file(stage)
        if not path.exists():
            rows.append({"stage": stage, "gate": "not run", "expectations": 0, "failed": "-", "details": ""})
            continue
        q = read_json(path)
        failed = [f"{r['table']}: {r['expectation']} {r.get('kwargs', {})} — observed {r.get('observed')}"
                  for r in q["expectations"] if not r["success"]]
        rows.append({"stage": stage, "gate": "passed" if q["success"] else "FAILED",
                     "expectations": q["evaluated"], "failed": q["failed"], "details": "; ".join(failed)})
    return rows


def numeric_facts(d: ReportInputs) -> dict[str, float | None]:
    """Every number the page shows, by dotted key; non-finite values become None."""
    out: dict[str, float | None] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, bool) or isinstance(value, str):
            return
        elif isinstance(value, (int, float)):
            out[prefix] = float(value) if math.isfinite(value) else None
        elif value is None:
            out[prefix] = None

    for name, metrics in (("evaluate", d.evaluate), ("finetune", d.finetune), ("generate", d.generate),
                          ("pretrain", d.pretrain)):
        walk(name, metrics)
    return {k: v for k, v in out.items() if not (v is None and k in OPTIONAL_NULLS)}
