"""Stage 5 — finetune: sentiment classification on top of the pretrained body, with the knobs that
trade task accuracy against what pretraining gave the model.

`GPT2ForSequenceClassification` from models/base, trained with the HF Trainer as in the seed
article (evaluation every epoch, best epoch kept on validation accuracy, optional early stopping).

Knobs (params.finetune):
  method         full | freeze (embeddings + bottom `freeze_layers` blocks frozen) | lora (peft)
  replay_weight  λ: each step adds λ × the LM loss on random pretraining blocks, computed through
                 the same transformer body and its tied LM head (InstructGPT's "pretraining mix";
                 the seed's "add more tasks and samples"). λ = 0 is plain fine-tuning.
  augment        shift names whose transforms make extra copies of a share of *training* examples

models/finetuned is saved merged (LoRA folded in), loadable both as a text-classification pipeline
and as `GPT2LMHeadModel` (whose tied head over the fine-tuned body measures forgetting).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import torch

from stages.artifacts import atomic_path, read_json, read_parquet, run_stage, seed_everything, set_threads, write_json
from stages.config import FinetuneParams, load_params
from stages.gates import Gate
from stages.ingest import text_key
from stages.modeling import load_meta, open_shard, resolve_device, sample_blocks
from stages.shifts import apply_shift

BASE_DIR = Path("models/base")
OUT_DIR = Path("models/finetuned")
WORK_DIR = Path("data/checkpoints/finetune")
TASK_DIR = Path("data/raw/task")


def transformer_body(model):
    """The GPT-2 trunk of a (possibly peft-wrapped) sequence classifier."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.transformer


def replay_lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token loss through the classifier's own body and the tied LM head (wte transposed),
    i.e. exactly what GPT2LMHeadModel.from_pretrained(models/finetuned) will compute."""
    body = transformer_body(model)
    hidden = body(input_ids=x).last_hidden_state
    logits = hidden @ body.wte.weight.T
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))


def load_classifier(p: FinetuneParams, n_labels: int, label_names: list[str], pad_id: int):
    from transformers import GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification.from_pretrained(
        BASE_DIR, num_labels=n_labels, id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)}, pad_token_id=pad_id,
    )
    if p.method == "freeze":
        body = model.transformer
        for module in [body.wte, body.wpe, *body.h[: p.freeze_layers]]:
            for w in module.parameters():
                w.requires_grad = False
    elif p.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(task_type=TaskType.SEQ_CLS, r=p.lora.r, lora_alpha=p.lora.alpha,
                            lora_dropout=p.lora.dropout, target_modules=list(p.lora.target_modules),
                            fan_in_fan_out=True)  # GPT-2 uses Conv1D (transposed) projections
        model = get_peft_model(model, config)
    return model


def augment(train: pd.DataFrame, p: FinetuneParams, seed: int) -> pd.DataFrame:
    """Shifted copies of a seeded share of training rows, one block per requested shift."""
    if not p.augment or p.augment_share == 0:
        return train
    extra = []
    for i, name in enumerate(p.augment):
        picked = train.sample(frac=p.augment_share, random_state=seed + i)
        extra.append(apply_shift(name, picked, seed + 1000 + i))
    return pd.concat([train, *extra], ignore_index=True)


def encode(tokenizer, df: pd.DataFrame, max_length: int):
    from datasets import Dataset

    enc = tokenizer(df["text"].tolist(), truncation=True, max_length=max_length)
    full = tokenizer(df["text"].tolist(), truncation=False)["input_ids"]
    truncated = sum(len(ids) > max_length for ids in full)
    ds = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                            "labels": df["label"].astype(int).tolist()})
    return ds, truncated


def make_trainer_class():
    from transformers import Trainer

    class ReplayTrainer(Trainer):
        """Trainer whose loss is task loss + λ × LM loss on pretraining blocks (when λ > 0)."""

        def __init__(self, *args, replay=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.replay = replay  # (weight, shard, block, batch, seed) or None
            self.replay_step = 0

        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            outputs = model(**inputs)
            loss = outputs.loss
            if self.replay and model.training:
                weight, shard, block, batch, seed = self.replay
                rng = np.random.default_rng([seed, self.replay_step])
                self.replay_step += 1
                x, y = sample_blocks(shard, block, batch, rng)
                loss = loss + weight * replay_lm_loss(model, x.to(loss.device), y.to(loss.device))
            return (loss, outputs) if return_outputs else loss

    return ReplayTrainer


def accuracy_metric(eval_pred) -> dict:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def main() -> None:
    params = load_params()
    p = params.finetune
    set_threads(p.threads)
    seed_everything(params.seed)
    from transformers import AutoTokenizer, DataCollatorWithPadding, EarlyStoppingCallback, TrainingArguments

    label_names = read_json(TASK_DIR / "labels.json")["label_names"]
    splits = {s: read_parquet(TASK_DIR / f"{s}.parquet", ["text", "label"]) for s in ("train", "validation", "test")}
    shifts = {f.stem: read_parquet(f, ["text", "label"]) for f in sorted((TASK_DIR / "shifts").glob("*.parquet"))}
    train_df = augment(splits["train"], p, params.seed)

    tokenizer = AutoTokenizer.from_pretrained(BASE_DIR)
    tokenizer.padding_side = "right"
    train_ds, truncated = encode(tokenizer, train_df, p.max_length)
    val_ds, _ = encode(tokenizer, splits["validation"], p.max_length)

    device = resolve_device(params.pretrain.device)
    model = load_classifier(p, len(label_names), label_names, tokenizer.pad_token_id)
    trainable = sum(w.numel() for w in model.parameters() if w.requires_grad)
    total = sum(w.numel() for w in model.parameters())
    print(f"[finetune] method={p.method} trainable {trainable:,}/{total:,} params,"
          f" {len(train_ds)} train rows ({len(train_df) - len(splits['train'])} augmented),"
          f" replay λ={p.replay_weight}", flush=True)

    replay = None
    if p.replay_weight > 0:
        meta = load_meta()
        block = min(params.pretrain.model.block_size, p.max_length * 2)
        replay = (p.replay_weight, open_shard("train", meta), block, p.replay_batch_size, params.seed)

    from dvclive import Live
    from dvclive.huggingface import DVCLiveCallback

    shutil.rmtree(WORK_DIR, ignore_errors=True)
    args = TrainingArguments(
        output_dir=str(WORK_DIR),
        num_train_epochs=p.epochs,
        per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=p.batch_size * 2,
        learning_rate=p.lr,
        weight_decay=p.weight_decay,
        warmup_steps=int(p.warmup_ratio * p.epochs * -(-len(train_ds) // p.batch_size)),
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        logging_strategy="steps",
        logging_steps=max(1, len(train_ds) // p.batch_size // 4),
        seed=params.seed,
        data_seed=params.seed,
        report_to=[],
        disable_tqdm=True,  # one log line per logging step instead of a redrawn bar in DVC logs
        use_cpu=device.type == "cpu",
        bf16=device.type == "cuda",
        dataloader_num_workers=0,
    )
    callbacks = [DVCLiveCallback(live=Live(dir="plots/finetune", dvcyaml=False, save_dvc_exp=False,
                                           report=None, monitor_system=False))]
    if p.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=p.early_stopping_patience))
    trainer = make_trainer_class()(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy_metric,
        callbacks=callbacks, replay=replay,
    )
    t0 = time.perf_counter()
    train_out = trainer.train()
    wall = time.perf_counter() - t0
    val_metrics = trainer.evaluate()

    final = model.merge_and_unload() if p.method == "lora" else model
    with atomic_path(OUT_DIR) as tmp:
        final.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(WORK_DIR, ignore_errors=True)

    n_tokens = sum(map(len, train_ds["input_ids"])) * p.epochs
    metrics = {
        "val_accuracy": val_metrics["eval_accuracy"],
        "train_loss": train_out.training_loss,
        "epochs": p.epochs,
        "method": p.method,
        "replay_weight": p.replay_weight,
        "trainable_params": trainable,
        "train_rows": len(train_ds),
        "truncated": truncated,
        "tokens_per_s": n_tokens / max(wall, 1e-9),
        "wall_s": wall,
    }
    write_json("metrics/finetune.json", metrics)
    print(f"[finetune] val accuracy {metrics['val_accuracy']:.3f} in {wall:.0f}s", flush=True)

    g = p.gate
    eval_keys = set()
    for df in [splits["test"], *shifts.values()]:
        eval_keys |= set(df["text"].map(text_key))
    train_check = train_df.assign(leaks=train_df["text"].map(text_key).isin(eval_keys))
    shares = train_df["label"].value_counts(normalize=True).reindex(range(len(label_names)), fill_value=0)
    gate = Gate("finetune").table("train", train_check).scalars("run", {
        "val_accuracy": metrics["val_accuracy"],
        "truncated_share": truncated / max(1, len(train_df)),
        "min_class_share": float(shares.min()),
    })
    gate.expect("train", gxe.ExpectColumnValuesToBeInSet(column="leaks", value_set=[False]))
    gate.expect("train", gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(len(label_names)))))
    gate.expect("run", gxe.ExpectColumnValuesToBeBetween(column="min_class_share", min_value=g.min_class_share))
    gate.expect("run", gxe.ExpectColumnValuesToBeBetween(column="truncated_share", max_value=g.max_truncated_share))
    gate.expect("run", gxe.ExpectColumnValuesToBeBetween(column="val_accuracy", min_value=g.min_val_accuracy))
    gate.finish()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_stage(main)
