"""Stage 5 — finetune: sentiment classification on top of the pretrained body, with the knobs that
trade task accuracy against what pretraining gave the model.

`GPT2ForSequenceClassification` from models/base, trained with the HF Trainer as in the seed
article (evaluation every epoch, best epoch kept on validation accuracy, optional early stopping,
seeded), with dvclive curves under plots/finetune.

Knobs (params.finetune):
  method         full | freeze (embeddings + bottom `freeze_layers` blocks frozen) | lora (peft)
  replay_weight  λ: each step adds λ × the LM loss on random pretraining blocks, computed through
                 the same transformer body and its tied LM head (InstructGPT's "pretraining mix";
                 the seed's "add more tasks and samples"). λ = 0 is plain fine-tuning.
  augment        shift names whose transforms make extra copies of a share of *training* examples

models/finetuned is saved merged (LoRA folded in), loadable both as a text-classification pipeline
and as `GPT2LMHeadModel` (whose tied head over the fine-tuned body measures forgetting).

Padding: right padding with a dedicated pad token. The classifier reads the last non-pad token,
and causal attention never looks right, so a padded batch gives each example the logits it gets
alone (tests/test_finetune.py checks it).
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from pathlib import Path

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import torch

from lmpipe.gates import Gate
from lmpipe.io import StageError, atomic_path, read_json, read_parquet, run_stage, write_json
from lmpipe.modeling import load_meta, open_shard, sample_blocks
from lmpipe.params import FinetuneParams, load_params
from lmpipe.runtime import resolve_device, seed_everything, set_threads
from lmpipe.shifts import apply_shift
from lmpipe.text import text_key

BASE_DIR = Path("models/base")
OUT_DIR = Path("models/finetuned")
WORK_DIR = Path("data/checkpoints/finetune")
TASK_DIR = Path("data/raw/task")
PLOTS_DIR = Path("plots/finetune")


# --- model ------------------------------------------------------------------------------------


def load_tokenizer(path: Path = BASE_DIR):
    """The base tokenizer with a pad token (EOS when the tokenizer has none) and right padding."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "right"  # keep the start of a review; the gate bounds what is cut
    return tokenizer


def transformer_body(model):
    """The GPT-2 trunk of a (possibly peft-wrapped) sequence classifier."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.transformer


def replay_lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token loss through the classifier's own body and the tied LM head (wte transposed),
    i.e. exactly what GPT2LMHeadModel.from_pretrained(models/finetuned) will compute."""
    body = transformer_body(model)
    hidden = body(input_ids=x, use_cache=False).last_hidden_state
    logits = hidden @ body.wte.weight.T
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))


def load_classifier(p: FinetuneParams, label_names: list[str], pad_id: int, base_dir: Path = BASE_DIR):
    from transformers import GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification.from_pretrained(
        base_dir, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)}, pad_token_id=pad_id,
    )
    if p.method == "freeze":
        body = model.transformer
        if p.freeze_layers > len(body.h):
            raise StageError(f"finetune.freeze_layers={p.freeze_layers} but the base model has only "
                             f"{len(body.h)} blocks")
        for module in [body.wte, body.wpe, *body.h[: p.freeze_layers]]:
            for w in module.parameters():
                w.requires_grad = False
    elif p.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        # SEQ_CLS keeps the new `score` head fully trainable (modules_to_save); everything else is
        # frozen and only the low-rank adapters on `target_modules` learn.
        config = LoraConfig(task_type=TaskType.SEQ_CLS, r=p.lora.r, lora_alpha=p.lora.alpha,
                            lora_dropout=p.lora.dropout, target_modules=list(p.lora.target_modules),
                            fan_in_fan_out=True)  # GPT-2 uses Conv1D (transposed) projections
        model = get_peft_model(model, config)
    return model


def merged(model):
    """A plain GPT2ForSequenceClassification: LoRA adapters folded into the base weights. The peft
    model is copied first (merge_and_unload works in place), so it still shows what training did."""
    if not hasattr(model, "merge_and_unload"):
        return model
    return copy.deepcopy(model).merge_and_unload()


# --- data -------------------------------------------------------------------------------------


def augment(train: pd.DataFrame, p: FinetuneParams, seed: int, classes: int) -> pd.DataFrame:
    """Shifted copies of a seeded share of training rows, one block per requested shift. Only the
    training split is ever augmented: validation picks the best epoch and must stay clean."""
    if not p.augment or p.augment_share == 0:
        return train
    extra = []
    for i, name in enumerate(p.augment):
        picked = train.sample(frac=p.augment_share, random_state=seed + i)
        try:
            extra.append(apply_shift(name, picked, seed + 1000 + i, classes=classes))
        except ValueError as err:
            raise StageError(f"finetune.augment: {err}") from None
    return pd.concat([train, *extra], ignore_index=True)


def encode(tokenizer, df: pd.DataFrame, max_length: int):
    """Tokenize once, cut to `max_length`, and count how many examples lost tokens to the cut."""
    from datasets import Dataset

    ids = tokenizer(df["text"].tolist(), truncation=False)["input_ids"]
    truncated = sum(len(x) > max_length for x in ids)
    ids = [x[:max_length] for x in ids]
    ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids],
                            "labels": df["label"].astype(int).tolist()})
    return ds, truncated


def read_task() -> tuple[list[str], dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    label_names = read_json(TASK_DIR / "labels.json")["label_names"]
    splits = {s: read_parquet(TASK_DIR / f"{s}.parquet", ["text", "label"]) for s in ("train", "validation", "test")}
    shifts = {f.stem: read_parquet(f, ["text", "label"]) for f in sorted((TASK_DIR / "shifts").glob("*.parquet"))}
    for name, df in splits.items():
        if df.empty:
            raise StageError(f"{TASK_DIR / name}.parquet has no rows")
        bad = df["label"][~df["label"].isin(range(len(label_names)))]
        if len(bad):
            raise StageError(f"{TASK_DIR / name}.parquet: labels outside 0..{len(label_names) - 1}: "
                             f"{sorted(set(bad.tolist()))[:5]}")
    return label_names, splits, shifts


# --- training ---------------------------------------------------------------------------------


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


def _live_class():
    from dvclive import Live

    class OfflineLive(Live):
        """dvclive 3.x gathers every curve and re-reads params.yaml for DVC Studio on each step,
        even when Studio is not configured and the data is then dropped: ~0.15 s per Trainer log
        call here. Skip the gathering when Studio would skip the event anyway."""

        def post_data_to_studio(self):
            if "data" in getattr(self, "_studio_events_to_skip", ()):
                return
            super().post_data_to_studio()

    return OfflineLive


def _OfflineLive(**kwargs):  # noqa: N802 - reads like the class it builds
    return _live_class()(**kwargs)


def accuracy_metric(eval_pred) -> dict:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def train(params, out_dir: Path = OUT_DIR, base_dir: Path = BASE_DIR) -> dict:
    """Fine-tune, save the merged classifier to `out_dir`; return metrics plus the frames the gate
    checks (under the private keys `_train_df`, `_eval_texts`)."""
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, TrainingArguments
    from transformers.integrations import DVCLiveCallback

    p = params.finetune
    seed_everything(params.seed)
    label_names, splits, shifts = read_task()
    train_df = augment(splits["train"], p, params.seed, len(label_names))

    tokenizer = load_tokenizer(base_dir)
    model = load_classifier(p, label_names, tokenizer.pad_token_id, base_dir)
    n_positions = transformer_body(model).config.n_positions
    if p.max_length > n_positions:
        raise StageError(f"finetune.max_length={p.max_length} exceeds the base model's context "
                         f"({n_positions} = pretrain.model.block_size); lower it")
    train_ds, truncated = encode(tokenizer, train_df, p.max_length)
    val_ds, _ = encode(tokenizer, splits["validation"], p.max_length)

    device = resolve_device(params.pretrain.device)
    trainable = sum(w.numel() for w in model.parameters() if w.requires_grad)
    total = sum(w.numel() for w in model.parameters())
    print(f"[finetune] method={p.method} trainable {trainable:,}/{total:,} params,"
          f" {len(train_ds)} train rows ({len(train_df) - len(splits['train'])} augmented),"
          f" {truncated} truncated at {p.max_length} tokens, replay λ={p.replay_weight}", flush=True)

    replay = None
    if p.replay_weight > 0:
        meta = load_meta()
        # the block length the model was pretrained on (and evaluate measures forgetting at)
        replay = (p.replay_weight, open_shard("train", meta), min(params.pretrain.model.block_size, n_positions),
                  p.replay_batch_size, params.seed)

    steps_per_epoch = -(-len(train_ds) // p.batch_size)
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    shutil.rmtree(PLOTS_DIR, ignore_errors=True)  # curves of this run only
    args = TrainingArguments(
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
        # batches of similar length: on the default task half the padded tokens of random batches
        # and ~35% less CPU per step (measured); the order is still seeded
        train_sampling_strategy="group_by_length",
        seed=params.seed,
        data_seed=params.seed,
        report_to=[],  # the DVCLive callback below is added explicitly, with our Live settings
        disable_tqdm=True,  # one log line per logging step instead of a redrawn bar in DVC logs
        use_cpu=device.type == "cpu",
        bf16=device.type == "cuda",
        dataloader_num_workers=0,
    )
    # dvcyaml=False: dvc.yaml owns the plots declarations (plots/finetune)
    live = _OfflineLive(dir=str(PLOTS_DIR), dvcyaml=False, save_dvc_exp=False, report=None, monitor_system=False)
    callbacks = [DVCLiveCallback(live=live)]
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
    history = trainer.state.log_history
    evals = [h for h in history if "eval_accuracy" in h]
    best = max(evals, key=lambda h: h["eval_accuracy"])  # what load_best_model_at_end restored

    final = merged(trainer.model)
    final.config.architectures = ["GPT2ForSequenceClassification"]
    with atomic_path(out_dir) as tmp:
        final.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(WORK_DIR, ignore_errors=True)

    def mean_of(key):
        values = [h[key] for h in history if key in h]
        return float(np.mean(values)) if values else None

    n_tokens = sum(map(len, train_ds["input_ids"])) * trainer.state.epoch
    metrics = {
        "val_accuracy": best["eval_accuracy"],
        "train_loss": train_out.training_loss,  # the objective: task loss + λ × replay LM loss
        "train_task_loss": mean_of("task_loss"),
        "replay_lm_loss": mean_of("replay_lm_loss"),
        "epochs": trainer.state.epoch,  # fewer than finetune.epochs when early stopping hit
        "best_epoch": best["epoch"],
        "method": p.method,
        "replay_weight": p.replay_weight,
        "trainable_params": trainable,
        "params": total,
        "train_rows": len(train_ds),
        "augmented_rows": len(train_df) - len(splits["train"]),
        "truncated": truncated,
        "truncated_share": truncated / len(train_df),
        "tokens_per_s": n_tokens / max(wall, 1e-9),
        "wall_s": wall,
    }
    eval_texts = pd.concat([splits["validation"], splits["test"], *shifts.values()], ignore_index=True)
    return metrics | {"_train_df": train_df, "_eval_texts": eval_texts, "_labels": label_names,
                      "_trainer": trainer}


def gate(metrics: dict, p: FinetuneParams) -> None:
    """Label balance, no leakage into validation/test/shifts, lengths fit, accuracy floor."""
    train_df, labels = metrics["_train_df"], metrics["_labels"]
    eval_keys = set(metrics["_eval_texts"]["text"].map(text_key))
    train_check = train_df.assign(leaks=train_df["text"].map(text_key).isin(eval_keys))
    shares = train_df["label"].value_counts(normalize=True).reindex(range(len(labels)), fill_value=0)
    g = p.gate
    run = {"val_accuracy": metrics["val_accuracy"], "truncated_share": metrics["truncated_share"],
           "min_class_share": float(shares.min())}
    gate = Gate("finetune").table("train", train_check).scalars("run", run)
    gate.expect("train", gxe.ExpectColumnValuesToBeInSet(column="leaks", value_set=[False]))
    gate.expect("train", gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(len(labels)))))
    gate.expect("run", gxe.ExpectColumnValuesToNotBeNull(column="val_accuracy"))
    gate.expect("run", gxe.ExpectColumnValuesToBeBetween(column="min_class_share", min_value=g.min_class_share))
    gate.expect("run", gxe.ExpectColumnValuesToBeBetween(column="truncated_share", max_value=g.max_truncated_share))
    gate.expect("run", gxe.ExpectColumnValuesToBeBetween(column="val_accuracy", min_value=g.min_val_accuracy))
    explain = []
    if run["val_accuracy"] < g.min_val_accuracy:
        explain.append(f"validation accuracy {run['val_accuracy']:.3f} is below finetune.gate.min_val_accuracy="
                       f"{g.min_val_accuracy} (chance is {1 / len(labels):.2f}): the classifier did not learn"
                       " the task; train longer (finetune.epochs), raise finetune.lr, or pretrain more")
    if run["truncated_share"] > g.max_truncated_share:
        explain.append(f"{metrics['truncated']} of {len(train_df)} training examples "
                       f"({run['truncated_share']:.1%}) are longer than finetune.max_length and were cut"
                       f" (limit finetune.gate.max_truncated_share={g.max_truncated_share}): raise max_length"
                       " (at most pretrain.model.block_size) or the tokenizer's vocab_size")
    if run["min_class_share"] < g.min_class_share:
        explain.append(f"the rarest class is {run['min_class_share']:.1%} of the training rows, below "
                       f"finetune.gate.min_class_share={g.min_class_share}")
    if train_check["leaks"].any():
        explain.append(f"{int(train_check['leaks'].sum())} training texts also occur in validation, test or"
                       " a shift split (after normalizing case and punctuation)")
    gate.finish(hints=explain)


def main() -> None:
    params = load_params()
    set_threads(params.finetune.threads)
    metrics = train(params)
    write_json("metrics/finetune.json", {k: v for k, v in metrics.items() if not k.startswith("_")})
    print(f"[finetune] val accuracy {metrics['val_accuracy']:.3f} (epoch {metrics['best_epoch']:.0f}) in "
          f"{metrics['wall_s']:.0f}s, {metrics['tokens_per_s']:,.0f} tok/s", flush=True)
    gate(metrics, params.finetune)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_stage(main)
