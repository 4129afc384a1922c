"""The labelled task as the fine-tune sees it: splits, augmented training rows, encoded examples.

Only the training split is ever augmented: validation picks the best epoch and must stay clean.
`finetune.max_length: auto` resolves here, from the tokenized training lengths, before training,
so the truncation gate can stop a run that would cut too much before its first step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lmpipe.io import StageError, read_json, read_parquet
from lmpipe.params import FinetuneParams
from lmpipe.paths import RAW_SHIFTS, RAW_TASK
from lmpipe.shifts import apply_shift

SPLITS = ("train", "validation", "test")


@dataclass
class Task:
    label_names: list[str]
    splits: dict[str, pd.DataFrame]  # train, validation, test
    shifts: dict[str, pd.DataFrame]  # shifted copies of the test split, by shift name

    def eval_texts(self) -> pd.DataFrame:
        """Every row the model is evaluated on: none of them may occur in training."""
        return pd.concat([self.splits["validation"], self.splits["test"], *self.shifts.values()],
                         ignore_index=True)


def read_task() -> Task:
    label_names = read_json(RAW_TASK / "labels.json")["label_names"]
    splits = {s: read_parquet(RAW_TASK / f"{s}.parquet", ["text", "label"]) for s in SPLITS}
    shifts = {f.stem: read_parquet(f, ["text", "label"]) for f in sorted(RAW_SHIFTS.glob("*.parquet"))}
    for name, df in splits.items():
        if df.empty:
            raise StageError(f"{RAW_TASK / name}.parquet has no rows")
        bad = df["label"][~df["label"].isin(range(len(label_names)))]
        if len(bad):
            raise StageError(f"{RAW_TASK / name}.parquet: labels outside 0..{len(label_names) - 1}: "
                             f"{sorted(set(bad.tolist()))[:5]}")
    return Task(label_names, splits, shifts)


def augment(train: pd.DataFrame, p: FinetuneParams, seed: int, classes: int,
            task_kind: str = "categorical") -> pd.DataFrame:
    """Shifted copies of a seeded share of training rows, one block per requested shift. A shift
    that maps labels (negation) needs `task_kind` polarity (params: data.effective_task_kind)."""
    if not p.augment or p.augment_share == 0:
        return train
    extra = []
    for i, name in enumerate(p.augment):
        picked = train.sample(frac=p.augment_share, random_state=seed + i)
        try:
            extra.append(apply_shift(name, picked, seed + 1000 + i, classes=classes, task_kind=task_kind))
        except (ValueError, StageError) as err:
            raise StageError(f"finetune.augment: {err}") from None
    return pd.concat([train, *extra], ignore_index=True)


def token_ids(tokenizer, df: pd.DataFrame) -> list[list[int]]:
    """Each text as the model reads it (special tokens included, as the tokenizer adds them)."""
    return tokenizer(df["text"].tolist(), truncation=False)["input_ids"]


def resolve_max_length(p: FinetuneParams, train_ids: list[list[int]], n_positions: int) -> int:
    """`max_length` in tokens: the configured number, or for `auto` the `max_length_percentile`
    of the training lengths capped at the model's positions. The percentile is the smallest
    observed length that at least that share of examples fits in (no interpolation), so at 99 at
    most 1% of examples are cut and a single outlier does not set the length."""
    if p.max_length != "auto":
        if p.max_length > n_positions:
            raise StageError(f"finetune.max_length={p.max_length} exceeds the base model's context "
                             f"({n_positions} = pretrain.model.block_size); lower it")
        return p.max_length
    lengths = np.fromiter((len(x) for x in train_ids), dtype=np.int64, count=len(train_ids))
    picked = int(np.percentile(lengths, p.max_length_percentile, method="inverted_cdf"))
    return max(1, min(picked, n_positions))


def encode(ids: list[list[int]], labels: pd.Series, max_length: int):
    """Examples cut to `max_length`; also how many lost tokens to the cut."""
    from datasets import Dataset

    truncated = sum(len(x) > max_length for x in ids)
    ids = [x[:max_length] for x in ids]
    ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids],
                            "labels": labels.astype(int).tolist()})
    return ds, truncated
