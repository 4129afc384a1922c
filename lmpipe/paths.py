"""Every data, model, metrics and report path of the pipeline, relative to the repository root.

dvc.yaml names the same paths as stage deps and outs; keeping them here (and nowhere else in the
code) means a renamed output is one edit here plus one in dvc.yaml.
"""

from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")
DVC_YAML = Path("dvc.yaml")

# ingest
INPUT = Path("data/input")  # the user's own files (data.source: files); a dependency of ingest
RAW = Path("data/raw")
RAW_CORPUS = RAW / "corpus.parquet"
RAW_TASK = RAW / "task"
RAW_SHIFTS = RAW_TASK / "shifts"
RAW_PROMPTS = RAW / "prompts.jsonl"
RAW_SAFETY = RAW / "safety.parquet"  # the safety request set (sft trains on it, redteam attacks it)

# clean, tokenize
CLEAN = Path("data/clean")
TOKENS = Path("data/tokens")
TOKENIZER = Path("models/tokenizer")

# training
BASE_MODEL = Path("models/base")
FINETUNED_MODEL = Path("models/finetuned")
SFT_MODEL = Path("models/sft")
CHECKPOINTS = Path("data/checkpoints")  # resumable training state; not a DVC output

# evaluation, generation
SAMPLES = Path("data/samples")

# small files read by dvc metrics / plots and the report
METRICS = Path("metrics")
PLOTS = Path("plots")
REPORTS = Path("reports")
QUALITY = REPORTS / "quality"
DROPPED = REPORTS / "dropped"
REPORT_HTML = REPORTS / "index.html"
REPORT_FIGURES = REPORTS / "figures"
EXPERIMENTS_REPORT = REPORTS / "experiments"
STUDY_REPORT = REPORTS / "study"
REDTEAM_TRANSCRIPTS = REPORTS / "redteam" / "transcripts.json"  # sample attack transcripts for the report


def metrics_file(stage: str) -> Path:
    return METRICS / f"{stage}.json"


def quality_file(stage: str) -> Path:
    return QUALITY / f"{stage}.json"


def plots_dir(stage: str) -> Path:
    return PLOTS / stage
