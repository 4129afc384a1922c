"""Latency that can rank experiments: every candidate model measured side by side, in one process.

A latency an experiment's evaluate stage recorded was measured at its own time, under whatever
else the machine was doing then: two runs of one architecture can differ by more than two
architectures do.
So the trade-off view re-measures: it fetches each experiment's fine-tuned model from the DVC
cache (by the experiment's commit), loads them all into this process, and times batch-1
predictions (tokenization included, as evaluate does) in interleaved rounds: every round times
each candidate on the same texts, in alternating order, so a burst of load lands on all of them.

Each candidate gets the median of its round medians and a noise band (the range of its round
medians). Two candidates tie on latency when their bands overlap or their medians differ by less
than NOISE_FLOOR: such differences are noise, and the Pareto fronts do not rank them.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from lmpipe import paths

ROUNDS = 7
CALLS_PER_ROUND = 15
WARMUP_CALLS = 3
NOISE_FLOOR = 0.05  # relative: below this a latency difference is never ranked


@dataclass(frozen=True)
class Latency:
    """Batch-1 prediction latency of one candidate, measured side by side with the others."""
    median_ms: float
    lo_ms: float  # lowest round median
    hi_ms: float  # highest round median
    rounds: int


def latency_tie(a: Latency, b: Latency, floor: float = NOISE_FLOOR) -> bool:
    """True when the difference between `a` and `b` is within measured noise: their bands
    overlap, or their medians are less than `floor` (relative) apart."""
    overlap = a.lo_ms <= b.hi_ms and b.lo_ms <= a.hi_ms
    close = abs(a.median_ms - b.median_ms) <= floor * max(a.median_ms, b.median_ms)
    return overlap or close


def summarize(round_medians: list[float]) -> Latency:
    return Latency(statistics.median(round_medians), min(round_medians), max(round_medians), len(round_medians))


def fetch_models(revs: dict[str, str], dest: Path, model_dir: Path = paths.FINETUNED_MODEL) -> dict[str, Path]:
    """name -> local copy of `model_dir` as committed in git revision `revs[name]` (an experiment's
    commit), read from the DVC cache; names whose revision has no such output in the cache are left out."""
    from dvc.api import DVCFileSystem

    found = {}
    for name, rev in revs.items():
        try:
            fs = DVCFileSystem(".", rev=rev)
            if not fs.isdir(model_dir.as_posix()):
                continue
            target = dest / name
            target.mkdir(parents=True, exist_ok=True)
            fs.get(model_dir.as_posix() + "/", str(target) + "/", recursive=True)
        except Exception:  # noqa: BLE001 - a revision whose model is not in this cache is not measured
            continue
        if (target / "config.json").exists():
            found[name] = target
    return found


class _Candidate:
    """A classifier and its tokenizer, loaded once; `call` is one batch-1 prediction."""

    def __init__(self, model_dir: Path, device):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(device).eval()
        self.max_length = int(getattr(self.model.config, "n_positions", 512))
        self.device = device

    def call(self, text: str) -> None:
        import torch

        with torch.inference_mode():
            ids = self.tokenizer(text, truncation=True, max_length=self.max_length, return_tensors="pt")
            self.model(input_ids=ids["input_ids"].to(self.device), use_cache=False)
            if self.device.type == "cuda":
                torch.cuda.synchronize()


def _time_block(candidate: _Candidate, texts: list[str], start: int, calls: int) -> float:
    """Median milliseconds of `calls` predictions on texts[start:], cycling."""
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        candidate.call(texts[(start + i) % len(texts)])
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure_side_by_side(model_dirs: dict[str, Path], texts: list[str], rounds: int = ROUNDS,
                         calls: int = CALLS_PER_ROUND, device: str = "cpu", threads: int = 1) -> dict[str, Latency]:
    """Latency of every model in `model_dirs`, measured in `rounds` interleaved rounds in this
    process, with `threads` CPU threads for all of them (one: the least disturbed by other work
    on a shared machine)."""
    import torch

    if not model_dirs or not texts:
        return {}
    dev = torch.device(device)
    candidates = {name: _Candidate(path, dev) for name, path in model_dirs.items()}
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for candidate in candidates.values():
            _time_block(candidate, texts, 0, WARMUP_CALLS)
        medians: dict[str, list[float]] = {name: [] for name in candidates}
        names = list(candidates)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                medians[name].append(_time_block(candidates[name], texts, r * calls, calls))
    finally:
        torch.set_num_threads(saved_threads)
    return {name: summarize(values) for name, values in medians.items()}


def measure_experiments(revs: dict[str, str], texts: list[str], work_dir: Path, **kwargs) -> dict[str, Latency]:
    """Fetch each revision's fine-tuned model and measure them all side by side."""
    return measure_side_by_side(fetch_models(revs, work_dir), texts, **kwargs)


def task_texts(limit: int = 64) -> list[str]:
    """The texts every candidate is timed on: the first rows of the workspace's test split."""
    test = paths.RAW_TASK / "test.parquet"
    if not test.exists():
        return []
    import pandas as pd

    return [str(t) for t in pd.read_parquet(test, columns=["text"])["text"].head(limit)]
