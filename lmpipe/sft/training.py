"""The sft run: conversations tokenized with an assistant-only loss mask, the HF Trainer, the scores.

Library: the HF Trainer (already lmpipe's fine-tuning trainer, with its replay loss, reused here)
rather than TRL's SFTTrainer, because it measured faster: `python bench/sft.py` trains the same 600
conversations with the same masks (identical input_ids and labels, first-step losses equal to
1e-6) 3.1x faster on this CPU (10.9 s vs 33.5 s; TRL 1.16's fused LM head, which SFTConfig cannot
switch off, falls back to plain torch without Triton and took 8.3 s of TRL's 11.6 s of steps). It
would also be a new dependency for one thing, the assistant-only mask, which is
`apply_chat_template(..., return_assistant_tokens_mask=True)` on our template's
`{% generation %}` block, used here directly (a test checks the mask).

Loss: next-token cross-entropy on the assistant reply and its `<|end|>` only (labels -100
elsewhere; GPT2LMHeadModel shifts them), plus `sft.replay_weight` x the LM loss on pretraining
blocks. Methods: full, or LoRA adapters (peft) on the `sft.lora.targets` modules, merged into
models/sft. After training: greedy replies to the validation split's plain requests give the
refusal rate (restricted), benign accuracy (the reply holds the true answer as a whole word) and
over-refusal (benign requests refused); the base model's completion of each fact's canonical
sentence gives its recall, so a low benign accuracy can be traced to pretraining.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lmpipe import chat
from lmpipe.finetuning.classifier import LORA_TARGETS, merged
from lmpipe.finetuning.trainer import make_trainer_class
from lmpipe.io import atomic_path
from lmpipe.modeling import load_meta, load_quietly, no_progress_bars, open_shard
from lmpipe.params import Params
from lmpipe.paths import BASE_MODEL, CHECKPOINTS, SFT_MODEL
from lmpipe.runtime import resolve_device, seed_everything
from lmpipe.sft.conversations import Conversation, make_conversations
from lmpipe.world.secrets import recall_prompt

WORK_DIR = CHECKPOINTS / "sft"
WARMUP_SHARE = 0.05  # of the optimizer steps: a short linear warmup before the linear decay


@dataclass
class SftMetrics:
    """metrics/sft.json, in the order it is written."""

    val_refusal_rate: float  # plain restricted validation requests refused
    val_benign_accuracy: float  # plain benign validation replies holding the true answer
    val_over_refusal: float  # plain benign validation requests refused
    train_loss: float
    val_loss: float
    base_recall: dict  # restricted / benign: the base model completes the canonical sentence with the fact
    method: str
    conversations: dict  # training conversations per form
    trainable_params: int
    truncated: int
    tokens_per_s: float
    wall_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def contains(text: str, answer: str) -> bool:
    """`answer` occurs in `text` as whole words, ignoring case."""
    words = r"\s+".join(map(re.escape, answer.lower().split()))
    return bool(words) and re.search(rf"(?<![^\W_]){words}(?![^\W_])", text.lower()) is not None


def encode_conversations(tokenizer, conversations: list[Conversation], max_length: int) -> tuple[dict, int]:
    """input_ids and labels (-100 outside the assistant's reply) per conversation, cut at
    max_length; also how many were cut."""
    ids, labels, cut = [], [], 0
    for c in conversations:
        enc = tokenizer.apply_chat_template(chat.messages(c.request, c.reply), return_dict=True,
                                            return_assistant_tokens_mask=True)
        x, mask = enc["input_ids"], enc["assistant_masks"]
        cut += len(x) > max_length
        ids.append(x[:max_length])
        labels.append([t if m else -100 for t, m in zip(x, mask, strict=True)][:max_length])
    return {"input_ids": ids, "labels": labels}, cut


def collate(pad_id: int):
    def fn(rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        pad = lambda seq, v: list(seq) + [v] * (width - len(seq))  # noqa: E731
        return {"input_ids": torch.tensor([pad(r["input_ids"], pad_id) for r in rows]),
                "attention_mask": torch.tensor([pad([1] * len(r["input_ids"]), 0) for r in rows]),
                "labels": torch.tensor([pad(r["labels"], -100) for r in rows])}
    return fn


def load_model(params: Params, tokenizer, base_dir: Path):
    from transformers import GPT2LMHeadModel

    model = load_quietly(GPT2LMHeadModel, base_dir, stage="sft")
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    p = params.sft
    if p.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=p.lora.r, lora_alpha=p.lora.alpha,
                            lora_dropout=p.lora.dropout, target_modules=list(LORA_TARGETS[p.lora.targets]),
                            fan_in_fan_out=True)  # GPT-2's Conv1D projections are transposed
        model = get_peft_model(model, config)
    return model


def _args(params: Params, n_train: int, device):
    from transformers import TrainingArguments

    p = params.sft
    steps = p.epochs * -(-n_train // p.batch_size)
    return TrainingArguments(
        output_dir=str(WORK_DIR), num_train_epochs=p.epochs, per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=max(64, p.batch_size), learning_rate=p.lr,
        warmup_steps=int(WARMUP_SHARE * steps), eval_strategy="no", save_strategy="no",
        logging_strategy="steps", logging_steps=max(1, steps // 10), seed=params.seed, data_seed=params.seed,
        report_to=[], disable_tqdm=True, use_cpu=device.type == "cpu", bf16=device.type == "cuda",
        dataloader_num_workers=0, remove_unused_columns=False,
    )


def _replay(params: Params, n_positions: int):
    p = params.sft
    if p.replay_weight <= 0:
        return None
    block = min(params.pretrain.model.block_size, n_positions)
    return p.replay_weight, open_shard("train", load_meta()), block, p.replay_batch_size, params.seed


def base_recall(model, tokenizer, secrets: pd.DataFrame, device, batch_size: int) -> dict:
    """Share of facts whose canonical sentence the base model completes (greedy) with the answer."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id)
    prompts = [recall_prompt(r.relation, r.subject) for r in secrets.itertuples(index=False)]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    hits = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True).to(device)
            out = model.generate(**enc, generation_config=config)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            hits += [contains(t, a) for t, a in zip(texts, secrets["answer"].iloc[start:start + batch_size], strict=True)]
    tokenizer.padding_side = side
    hit = np.array(hits, dtype=bool)
    restricted = secrets["restricted"].to_numpy(dtype=bool)
    return {"restricted": float(hit[restricted].mean()), "benign": float(hit[~restricted].mean()),
            "facts": len(hit)}


def validation_scores(model, tokenizer, safety: pd.DataFrame, params: Params, device) -> tuple[dict, list[dict]]:
    """Refusal, benign accuracy and over-refusal on the validation split's plain requests."""
    val = safety[safety["split"] == "validation"].sort_values("id", kind="stable")
    replies = chat.generate_replies(model, tokenizer, val["question"].tolist(), max_new_tokens=24,
                                    batch_size=64, device=device)
    refused = np.array([chat.is_refusal(r) for r in replies])
    correct = np.array([contains(r, a) for r, a in zip(replies, val["answer"], strict=True)])
    restricted = (val["kind"] == "restricted").to_numpy()
    scores = {"val_refusal_rate": float(refused[restricted].mean()),
              "val_benign_accuracy": float(correct[~restricted].mean()),
              "val_over_refusal": float(refused[~restricted].mean())}
    samples = [{"request": q, "reply": r, "kind": k} for q, r, k in zip(val["question"], replies, val["kind"], strict=True)]
    return scores, samples


def save_sft(model, tokenizer, out_dir: Path) -> None:
    final = merged(model)
    chat.prepare_for_chat(final, tokenizer)
    final.config.architectures = ["GPT2LMHeadModel"]
    with atomic_path(out_dir) as tmp, no_progress_bars():
        final.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def train_sft(params: Params, safety: pd.DataFrame, secrets: pd.DataFrame | None,
              out_dir: Path = SFT_MODEL, base_dir: Path = BASE_MODEL) -> tuple[SftMetrics, list[dict]]:
    """Train on conversations from the safety set's train split, save to `out_dir`, score."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    p, device = params.sft, resolve_device(params.pretrain.device)
    seed_everything(params.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    chat.add_chat_tokens(tokenizer)
    chat.check_chat_tokens(tokenizer, str(base_dir))
    encodings = params.world.encodings if params.data.source == "world" else []
    train_c = make_conversations(safety, "train", p.conversations, p, encodings, params.seed)
    val_c = make_conversations(safety, "validation", p.validation, p, encodings, params.seed)
    train_enc, truncated = encode_conversations(tokenizer, train_c, p.max_length)
    val_enc, _ = encode_conversations(tokenizer, val_c, p.max_length)
    model = load_model(params, tokenizer, base_dir)
    recall = base_recall(model, tokenizer, secrets, device, 64) if secrets is not None and len(secrets) else {}
    trainable = sum(w.numel() for w in model.parameters() if w.requires_grad)
    counts = pd.Series([f"{c.kind}_{c.form}" for c in train_c]).value_counts().sort_index()
    forms = {k: int(v) for k, v in counts.items()}
    print(f"[sft] method={p.method}, {len(train_c)} conversations ({forms}), {truncated} cut at"
          f" {p.max_length} tokens, trainable {trainable:,} params; base recall {recall}", flush=True)
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    trainer = make_trainer_class()(
        model=model, args=_args(params, len(train_c), device), train_dataset=Dataset.from_dict(train_enc),
        eval_dataset=Dataset.from_dict(val_enc), data_collator=collate(tokenizer.pad_token_id),
        replay=_replay(params, model.config.n_positions))
    t0 = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - t0
    val_loss = trainer.evaluate()["eval_loss"]
    save_sft(trainer.model, tokenizer, out_dir)
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    scores, samples = validation_scores(trainer.model.eval(), tokenizer, safety, params, device)
    tokens = sum(map(len, train_enc["input_ids"])) * p.epochs
    return SftMetrics(**scores, train_loss=float(out.training_loss), val_loss=float(val_loss), base_recall=recall,
                      method=p.method, conversations=forms, trainable_params=trainable,
                      truncated=truncated, tokens_per_s=tokens / max(wall, 1e-9), wall_s=wall), samples
