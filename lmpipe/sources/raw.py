"""The raw data every source produces, in the shape the ingest stage writes to data/raw.

The safety request set: the world brings its own; files and hf sources read `data.files.safety`
when it names a file (lmpipe/sources/safety.py) and have an empty one otherwise.

Prompts: the world brings its own. For files and hf sources they come from `data.files.prompts`
when it names a file (checked, then copied as {"domain", "prompt"} rows); otherwise the prompts
list is empty, and the generate stage takes its prompts from the cleaned validation split, never
from raw text that skipped cleaning and PII scrubbing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from lmpipe.params import DataParams, Params
from lmpipe.shifts import apply_shift
from lmpipe.sources.files import load_files
from lmpipe.sources.hub import load_hub
from lmpipe.sources.prompts import read_prompts
from lmpipe.sources.readers import ReadStats, content_digest
from lmpipe.sources.safety import read_safety
from lmpipe.sources.tables import Loaded
from lmpipe.text import text_key
from lmpipe.world import generate_world


@dataclass
class RawData:
    corpus: pd.DataFrame  # id, text, source, domain, noise
    task: dict[str, pd.DataFrame]  # train/validation/test -> text, label
    shifts: dict[str, pd.DataFrame]  # shift name -> text, label
    prompts: list[dict]  # {"domain", "prompt"}; empty: generate takes them from clean validation
    label_names: list[str]
    safety: pd.DataFrame  # the safety request set (lmpipe.world.secrets.SAFETY_COLUMNS); may be empty
    noise: dict[str, int] = field(default_factory=dict)  # injected noise per kind (world only)
    train_leaks_removed: int = 0
    read: ReadStats = field(default_factory=ReadStats)
    fingerprint: dict[str, str] = field(default_factory=dict)  # what was read, for files/hf


def from_world(params: Params) -> RawData:
    world = generate_world(params.world, params.seed)
    return RawData(corpus=world.corpus, task=world.task, shifts=world.shifts, prompts=world.prompts,
                   label_names=world.label_names, safety=world.safety, noise=world.noise_counts)


def finish_real(loaded: Loaded, p: DataParams, seed: int, stats: ReadStats, prompts: list[dict],
                safety: pd.DataFrame) -> RawData:
    """Shared path for files/hf: ids, domain, leakage removal, shift splits."""
    corpus = loaded.corpus.reset_index(drop=True)
    corpus.insert(0, "id", [f"doc{i:08d}" for i in range(len(corpus))])
    corpus["domain"] = "files"
    corpus["noise"] = ""
    task = dict(loaded.task)
    # Evaluation items must never be trained on: drop train rows whose text is in test/validation.
    held_out = {text_key(t) for s in ("validation", "test") for t in task[s]["text"]}
    leaked = task["train"]["text"].map(text_key).isin(held_out)
    task["train"] = task["train"][~leaked].reset_index(drop=True)
    classes = len(p.label_names)
    shifts = {name: apply_shift(name, task["test"], seed, classes=classes, task_kind=p.task_kind) for name in p.shifts}
    fingerprint = dict(loaded.fingerprint)
    if stats.digests:
        fingerprint["inputs"] = content_digest(stats.digests)
    return RawData(corpus=corpus, task=task, shifts=shifts, prompts=prompts, label_names=p.label_names,
                   safety=safety, train_leaks_removed=int(leaked.sum()), read=stats, fingerprint=fingerprint)


def build_raw(params: Params) -> RawData:
    """The raw data of `data.source`. Every input problem is a StageError naming its file, raised
    before anything is written."""
    p = params.data
    if p.source == "world":
        return from_world(params)
    stats = ReadStats()
    loaded = load_files(p, stats) if p.source == "files" else load_hub(p, stats)
    prompts = read_prompts(p.files.prompts, stats) if p.files.prompts else []
    safety = read_safety(p.files.safety, params.seed, stats, p.max_bad_line_share)
    return finish_real(loaded, p, params.seed, stats, prompts, safety)


def leakage(task: dict[str, pd.DataFrame], shifts: dict[str, pd.DataFrame]) -> int:
    """Evaluation rows (test and every shift) whose normalized text also occurs in train."""
    train = set(task["train"]["text"].map(text_key))
    evals = [task["test"], *shifts.values()]
    return int(sum(df["text"].map(text_key).isin(train).sum() for df in evals))
