"""The fine-tune itself: the HF Trainer with an optional replay loss, dvclive curves, the metrics.

Trained as in the seed article: evaluation every epoch, the best epoch kept on validation accuracy,
optional early stopping, seeded. Knobs (params.finetune):
  replay_weight  λ: each step adds λ × the LM loss on random pretraining blocks, computed through
                 the same transformer body and its tied LM head (InstructGPT's "pretraining mix").
                 λ = 0 is plain fine-tuning.
  augment        shift names whose transforms make extra copies of a share of training examples

`prepare` reads, augments and encodes the task (and resolves max_length) without touching the
model, so the stage can gate the data before training; `fine_tune` then trains and saves.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lmpipe.finetuning.classifier import (
    LoraSummary,
    load_classifier,
    load_tokenizer,
    lora_summary,
    merged,
    replay_lm_loss,
    transformer_body,
)
from lmpipe.finetuning.task import Task, augment, encode, read_task, resolve_max_length, token_ids
from lmpipe.io import atomic_path
from lmpipe.modeling import load_meta, no_progress_bars, open_shard, sample_blocks
from lmpipe.params import Params
from lmpipe.paths import BASE_MODEL, CHECKPOINTS, FINETUNED_MODEL, plots_dir
from lmpipe.runtime import resolve_device, seed_everything

WORK_DIR = CHECKPOINTS / "finetune"  # the Trainer's epoch checkpoints, removed after the run
PLOTS_DIR = plots_dir("finetune")


@dataclass
class FinetuneMetrics:
    """metrics/finetune.json, in the order it is written."""

    val_accuracy: float
    train_loss: float  # the objective: task loss + λ × replay LM loss
    train_task_loss: float | None
    replay_lm_loss: float | None
    epochs: float  # fewer than finetune.epochs when early stopping hit
    best_epoch: float
    method: str
    replay_weight: float
    trainable_params: int
    params: int
    train_rows: int
    augmented_rows: int
    max_length: int  # tokens per example, as resolved (auto: a percentile of the training lengths)
    truncated: int
    truncated_share: float
    tokens_per_s: float
    wall_s: float
    lora: LoraSummary | None = None  # which modules LoRA adapted and its parameter count

    def as_dict(self) -> dict:
        out = asdict(self)
        if self.lora is None:
            del out["lora"]
        return out


@dataclass
class Prepared:
    """The task read, augmented and encoded: everything the data gate and the Trainer need."""

    task: Task
    train_df: pd.DataFrame  # the training rows after augmentation
    tokenizer: Any
    n_positions: int  # the base model's context
    max_length: int
    train_ds: Any  # datasets.Dataset
    val_ds: Any
    truncated: int  # training examples longer than max_length

    @property
    def augmented_rows(self) -> int:
        return len(self.train_df) - len(self.task.splits["train"])

    @property
    def truncated_share(self) -> float:
        return self.truncated / len(self.train_df)


@dataclass
class FinetuneResult:
    metrics: FinetuneMetrics
    prepared: Prepared
    model: Any  # as trained (a peft model under LoRA); models/finetuned holds it merged


def prepare(params: Params, base_dir: Path = BASE_MODEL) -> Prepared:
    """Seed, read the task, augment its training split, tokenize, resolve max_length, encode."""
    from transformers import AutoConfig

    p = params.finetune
    seed_everything(params.seed)
    task = read_task()
    train_df = augment(task.splits["train"], p, params.seed, len(task.label_names), params.data.effective_task_kind)
    tokenizer = load_tokenizer(base_dir)
    n_positions = AutoConfig.from_pretrained(base_dir).n_positions
    train_ids = token_ids(tokenizer, train_df)
    max_length = resolve_max_length(p, train_ids, n_positions)
    train_ds, truncated = encode(train_ids, train_df["label"], max_length)
    validation = task.splits["validation"]
    val_ds, _ = encode(token_ids(tokenizer, validation), validation["label"], max_length)
    tokenizer.model_max_length = max_length  # saved with models/finetuned: evaluate cuts where training did
    return Prepared(task, train_df, tokenizer, n_positions, max_length, train_ds, val_ds, truncated)


# --- the Trainer ------------------------------------------------------------------------------------


def make_trainer_class():
    from transformers import Trainer

    class ReplayTrainer(Trainer):
        """Trainer whose loss is task loss + λ × LM loss on pretraining blocks (when λ > 0).
        The two parts are also logged separately (task_loss, replay_lm_loss)."""

        def __init__(self, *args, replay=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.replay = replay  # (weight, shard, block, batch, seed) or None
            self.replay_step = 0
            self._parts = {"task_loss": [], "replay_lm_loss": []}

        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            outputs = model(**inputs)
            loss = outputs.loss
            if model.training:
                self._parts["task_loss"].append(loss.detach())
            if self.replay and model.training:
                weight, shard, block, batch, seed = self.replay
                # the blocks depend on (seed, step) only: a rerun replays the same text
                rng = np.random.default_rng([seed, self.replay_step])
                self.replay_step += 1
                x, y = sample_blocks(shard, block, batch, rng)
                lm = replay_lm_loss(model, x.to(loss.device), y.to(loss.device))
                self._parts["replay_lm_loss"].append(lm.detach())
                loss = loss + weight * lm
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            if "loss" in logs:  # a training log line: add the two parts since the last one
                for key, values in self._parts.items():
                    if values:
                        logs[key] = round(torch.stack(values).float().mean().item(), 4)
                    values.clear()
            super().log(logs, *args, **kwargs)

    return ReplayTrainer


def offline_live(**kwargs):
    """A dvclive Live that skips gathering data for DVC Studio when Studio would drop it anyway:
    dvclive 3.x collects every curve and re-reads params.yaml on each step even when Studio is not
    configured, a noticeable cost per Trainer log call."""
    from dvclive import Live

    class OfflineLive(Live):
        def post_data_to_studio(self):
            if "data" in getattr(self, "_studio_events_to_skip", ()):
                return
            super().post_data_to_studio()

    return OfflineLive(**kwargs)


def accuracy_metric(eval_pred) -> dict:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def _training_args(params: Params, prep: Prepared, device: torch.device):
    from transformers import TrainingArguments

    p = params.finetune
    steps_per_epoch = -(-len(prep.train_ds) // p.batch_size)
    return TrainingArguments(
        output_dir=str(WORK_DIR),
        num_train_epochs=p.epochs,
        per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=max(64, p.batch_size),
        learning_rate=p.lr,
        weight_decay=p.weight_decay,
        warmup_steps=int(p.warmup_ratio * p.epochs * steps_per_epoch),
        eval_strategy="epoch",
        save_strategy="epoch",  # must match eval_strategy for load_best_model_at_end
        save_total_limit=1,  # with load_best_model_at_end: the best and the latest checkpoint
        save_only_model=True,  # no optimizer state: we never resume a fine-tune, and it halves I/O
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        logging_strategy="steps",
        logging_steps=max(1, steps_per_epoch // 4),
        # batches of similar length pad far fewer tokens than random batches; the order is still seeded
        train_sampling_strategy="group_by_length",
        seed=params.seed,
        data_seed=params.seed,
        report_to=[],  # the DVCLive callback is added explicitly, with our Live settings
        disable_tqdm=True,  # one log line per logging step instead of a redrawn bar in DVC logs
        use_cpu=device.type == "cpu",
        bf16=device.type == "cuda",
        dataloader_num_workers=0,
    )


def _replay(params: Params, n_positions: int):
    """The replay loss's inputs, or None at λ = 0: blocks of the length the model was pretrained on
    (and evaluate measures forgetting at)."""
    p = params.finetune
    if p.replay_weight <= 0:
        return None
    block = min(params.pretrain.model.block_size, n_positions)
    return p.replay_weight, open_shard("train", load_meta()), block, p.replay_batch_size, params.seed


def _trainer(params: Params, prep: Prepared, model, device: torch.device):
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback
    from transformers.integrations import DVCLiveCallback

    p = params.finetune
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    shutil.rmtree(PLOTS_DIR, ignore_errors=True)  # curves of this run only
    # dvcyaml=False: dvc.yaml owns the plots declarations (plots/finetune)
    live = offline_live(dir=str(PLOTS_DIR), dvcyaml=False, save_dvc_exp=False, report=None, monitor_system=False)
    callbacks = [DVCLiveCallback(live=live)]
    if p.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=p.early_stopping_patience))
    return make_trainer_class()(
        model=model, args=_training_args(params, prep, device), train_dataset=prep.train_ds,
        eval_dataset=prep.val_ds, data_collator=DataCollatorWithPadding(prep.tokenizer),
        compute_metrics=accuracy_metric, callbacks=callbacks,
        replay=_replay(params, transformer_body(model).config.n_positions),
    )


# --- training and summary ---------------------------------------------------------------------------


def save_classifier(model, tokenizer, out_dir: Path) -> None:
    final = merged(model)
    final.config.architectures = ["GPT2ForSequenceClassification"]
    with atomic_path(out_dir) as tmp, no_progress_bars():
        final.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def _summary(params: Params, prep: Prepared, trainer, train_out, wall: float, counts: tuple[int, int]) -> FinetuneMetrics:
    history = trainer.state.log_history
    best = max((h for h in history if "eval_accuracy" in h), key=lambda h: h["eval_accuracy"])

    def mean_of(key):
        values = [h[key] for h in history if key in h]
        return float(np.mean(values)) if values else None

    n_tokens = sum(map(len, prep.train_ds["input_ids"])) * trainer.state.epoch
    p = params.finetune
    return FinetuneMetrics(
        val_accuracy=best["eval_accuracy"],  # the epoch load_best_model_at_end restored
        train_loss=train_out.training_loss,
        train_task_loss=mean_of("task_loss"),
        replay_lm_loss=mean_of("replay_lm_loss"),
        epochs=trainer.state.epoch,
        best_epoch=best["epoch"],
        method=p.method,
        replay_weight=p.replay_weight,
        trainable_params=counts[0],
        params=counts[1],
        train_rows=len(prep.train_ds),
        augmented_rows=prep.augmented_rows,
        max_length=prep.max_length,
        truncated=prep.truncated,
        truncated_share=prep.truncated_share,
        tokens_per_s=n_tokens / max(wall, 1e-9),
        wall_s=wall,
        lora=lora_summary(trainer.model) if p.method == "lora" else None,
    )


def fine_tune(params: Params, prep: Prepared, out_dir: Path = FINETUNED_MODEL,
              base_dir: Path = BASE_MODEL) -> FinetuneResult:
    """Train the classifier on the prepared task and save it merged to `out_dir`."""
    p = params.finetune
    model = load_classifier(p, prep.task.label_names, prep.tokenizer.pad_token_id, base_dir)
    device = resolve_device(params.pretrain.device)
    counts = (sum(w.numel() for w in model.parameters() if w.requires_grad), sum(w.numel() for w in model.parameters()))
    print(f"[finetune] method={p.method} trainable {counts[0]:,}/{counts[1]:,} params,"
          f" {len(prep.train_ds)} train rows ({prep.augmented_rows} augmented),"
          f" {prep.truncated} truncated at {prep.max_length} tokens, replay λ={p.replay_weight}", flush=True)
    trainer = _trainer(params, prep, model, device)
    t0 = time.perf_counter()
    train_out = trainer.train()
    wall = time.perf_counter() - t0
    save_classifier(trainer.model, prep.tokenizer, out_dir)
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    return FinetuneResult(_summary(params, prep, trainer, train_out, wall, counts), prep, trainer.model)


def train(params: Params, out_dir: Path = FINETUNED_MODEL, base_dir: Path = BASE_MODEL) -> FinetuneResult:
    """`prepare` then `fine_tune`, for callers that gate only at the end."""
    return fine_tune(params, prepare(params, base_dir), out_dir, base_dir)
