"""What fine-tuning bought, what it cost, and where it stops generalizing (the evaluate stage's work).

Competing objectives: in-distribution task accuracy next to language-modelling perplexity of the
base model and of the fine-tuned body (forgetting = ppl_finetuned / ppl_base - 1), efficiency
(parameters, throughput, latency, memory).

Generalization: accuracy on each shift split and the gap to in-distribution accuracy with
bootstrap intervals. Whether a failing shift is mismatched generalization (the base model could
read it) or a missing capability is lmpipe/capability.py's question.

Speed: every split is tokenized once; batches are length-sorted (little padding) and run under
`torch.inference_mode`."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from lmpipe import scoring
from lmpipe.bits_per_byte import bits_per_byte
from lmpipe.io import StageError, read_json, read_parquet
from lmpipe.modeling import eval_lm_loss, perplexity
from lmpipe.params import EvaluateParams
from lmpipe.paths import RAW_SHIFTS, RAW_TASK

LM_BATCH = 16  # windows per LM-loss batch (evaluate.lm_batches of them, the same for both models)
THROUGHPUT_BATCH = 32


@dataclass
class TaskData:
    """The labelled test split and its shifted copies, as ingest wrote them."""

    label_names: list[str]
    test: pd.DataFrame
    shifts: dict[str, pd.DataFrame]


def read_task() -> TaskData:
    label_names = read_json(RAW_TASK / "labels.json")["label_names"]
    test = read_parquet(RAW_TASK / "test.parquet", ["text", "label"])
    shifts = {f.stem: read_parquet(f, ["text", "label"]) for f in sorted(RAW_SHIFTS.glob("*.parquet"))}
    return TaskData(label_names, test, shifts)


@dataclass
class TaskResult:
    """Accuracy in distribution and on every shift; `metrics` is the `task` section of
    metrics/evaluate.json, `y_true`/`y_pred` the in-distribution rows behind the confusion plot."""

    metrics: dict
    y_true: np.ndarray
    y_pred: np.ndarray


@dataclass
class Evaluation:
    """Every result of the evaluate stage; `metrics()` is metrics/evaluate.json."""

    task: TaskResult
    lm: dict
    capability: dict
    efficiency: dict
    labels: list[str] = field(default_factory=list)

    def metrics(self) -> dict:
        return {"task": self.task.metrics, "lm": self.lm, "capability": self.capability,
                "efficiency": self.efficiency, "labels": self.labels}


# --- classifier and LM forward passes -----------------------------------------------------------


def encode(tokenizer, texts) -> list[list[int]]:
    """Token ids of every text, untruncated: each use cuts them to the length it needs."""
    # verbose=False: the "longer than the specified maximum" warning is expected, each use cuts
    return tokenizer(list(texts), truncation=False, verbose=False)["input_ids"] if len(texts) else []


def padded_batches(ids: list[list[int]], batch_size: int, max_length: int, pad_id: int, device):
    """Length-sorted, right-padded batches: (original row indices, input_ids, attention_mask)."""
    ids = [x[:max_length] for x in ids]
    order = np.argsort([len(x) for x in ids], kind="stable")
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        width = max(1, max(len(ids[r]) for r in rows))
        x = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            x[j, :len(ids[r])] = torch.tensor(ids[r], dtype=torch.long)
            mask[j, :len(ids[r])] = 1
        yield rows, x.to(device), mask.to(device)


@torch.inference_mode()
def predict_ids(model, ids: list[list[int]], batch_size: int, max_length: int, pad_id: int, device) -> np.ndarray:
    """Class probabilities, in the order of `ids` (the classifier reads the last real token)."""
    probs = np.zeros((len(ids), model.config.num_labels), dtype=np.float64)
    for rows, x, mask in padded_batches(ids, batch_size, max_length, pad_id, device):
        logits = model(input_ids=x, attention_mask=mask, use_cache=False).logits.float()
        probs[rows] = torch.softmax(logits, dim=-1).cpu().numpy()
    return probs


def predict(model, tokenizer, texts: list[str], batch_size: int, max_length: int, device) -> np.ndarray:
    """Class probabilities for raw texts (tokenization included: what a caller would time)."""
    return predict_ids(model, encode(tokenizer, texts), batch_size, max_length, tokenizer.pad_token_id, device)


@torch.inference_mode()
def text_lm_loss(model, tokenizer, ids: list[list[int]], batch_size: int, max_length: int, device) -> dict:
    """LM loss of whole texts (padding masked out): nats per predicted token and per character of
    the predicted text (every token after the first)."""
    total, tokens = 0.0, 0
    for _rows, x, mask in padded_batches(ids, batch_size, max_length, tokenizer.pad_token_id, device):
        logits = model(input_ids=x, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
        keep = mask[:, 1:].bool()
        total += loss[keep].sum().item()
        tokens += int(keep.sum().item())
    chars = sum(len(tokenizer.decode(x[1:max_length])) for x in ids)
    return {"per_token": total / max(1, tokens), "per_char": total / max(1, chars)}


def trained_max_length(tokenizer, configured: int | str, n_positions: int) -> int:
    """The tokens per example the classifier was fine-tuned with. Fine-tuning records it as the
    saved tokenizer's `model_max_length`; a configured number stands in for a model saved
    without it, while `auto` can only be read back from the model."""
    recorded = tokenizer.model_max_length
    if recorded is not None and 0 < recorded <= n_positions:
        return int(recorded)
    if configured != "auto":
        return int(configured)
    raise StageError("models/finetuned does not record the max_length it was fine-tuned with"
                     " (finetune.max_length: auto); rerun the finetune stage")


# --- the task: in distribution and on every shift -----------------------------------------------


def task_metrics(probs: np.ndarray, y: np.ndarray, n_classes: int, p: EvaluateParams, seed: int, ece: bool) -> dict:
    pred = probs.argmax(axis=1)
    out = {"accuracy": scoring.accuracy(y, pred), "macro_f1": scoring.macro_f1(y, pred, n_classes)}
    if ece:
        out["ece"] = scoring.expected_calibration_error(probs, y, p.ece_bins)
    out["accuracy_ci"] = scoring.bootstrap_ci(pred == y, p.bootstrap, seed)
    out["n"] = len(y)
    return out


def evaluate_task(classifier, ids: dict[str, list[list[int]]], data: TaskData, p: EvaluateParams, seed: int,
                  max_length: int, pad_id: int, device) -> TaskResult:
    """In-distribution metrics with the confusion matrix, then per shift its metrics and its gap to
    in-distribution accuracy with a bootstrap interval; `ids` holds "id" and every shift."""
    n_classes = len(data.label_names)
    y = data.test["label"].to_numpy()
    probs = predict_ids(classifier, ids["id"], p.batch_size, max_length, pad_id, device)
    pred = probs.argmax(axis=1)
    task = {"id": task_metrics(probs, y, n_classes, p, seed, ece=True), "shift": {}, "gap": {}}
    task["id"]["confusion"] = scoring.confusion(y, pred, n_classes).tolist()  # rows: actual, cols: predicted
    gap_ci = {}
    for name, df in data.shifts.items():
        sy = df["label"].to_numpy()
        sp = predict_ids(classifier, ids[name], p.batch_size, max_length, pad_id, device)
        task["shift"][name] = task_metrics(sp, sy, n_classes, p, seed, ece=False)
        gap_ci[name] = scoring.bootstrap_gap_ci(pred == y, sp.argmax(axis=1) == sy, p.bootstrap, seed)
    gaps = scoring.gap_summary(task["id"]["accuracy"], {n: s["accuracy"] for n, s in task["shift"].items()})
    for name in data.shifts:
        task["gap"] |= {name: gaps[name], f"{name}_ci": gap_ci[name]}
    task["gap"] |= {"mean": gaps["mean"], "max": gaps["max"]}
    return TaskResult(task, y, pred)


# --- language modelling: base vs fine-tuned body ------------------------------------------------


def compare_lm(base, tuned, tokenizer, validation: np.ndarray, texts: list[str], block: int, p: EvaluateParams,
               seed: int, device) -> dict:
    """Both models on the validation split: LM loss and perplexity on the same fixed windows of
    the token shard, and the forgetting between them; then bits per byte over every validation
    document, computed as lm-evaluation-harness computes it (lmpipe.bits_per_byte)."""
    with torch.inference_mode():
        loss_base = eval_lm_loss(base, validation, block, LM_BATCH, p.lm_batches, seed, device)
        loss_tuned = eval_lm_loss(tuned, validation, block, LM_BATCH, p.lm_batches, seed, device)
    lm = {"loss_base": loss_base, "loss_finetuned": loss_tuned,
          "ppl_base": perplexity(loss_base), "ppl_finetuned": perplexity(loss_tuned)}
    lm["forgetting"] = lm["ppl_finetuned"] / lm["ppl_base"] - 1
    lm["tokens"] = p.lm_batches * LM_BATCH * block
    lm["bits_per_byte"] = bits_per_byte(base, tokenizer, texts, block, p.batch_size, device)
    lm["bits_per_byte_finetuned"] = bits_per_byte(tuned, tokenizer, texts, block, p.batch_size, device)
    lm["bits_per_byte_docs"] = len(texts)
    return lm


# --- efficiency ---------------------------------------------------------------------------------


def efficiency(model, tokenizer, texts: list[str], runs: int, max_length: int, device) -> dict:
    """Throughput at batch 32 and latency percentiles at batch 1 (tokenization included), after a
    warm-up; peak memory of the process (CUDA: allocated by torch)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    predict(model, tokenizer, texts[:THROUGHPUT_BATCH], THROUGHPUT_BATCH, max_length, device)
    batch = (texts * (2 * THROUGHPUT_BATCH // max(1, len(texts)) + 1))[:2 * THROUGHPUT_BATCH]
    sync()
    t0 = time.perf_counter()
    predict(model, tokenizer, batch, THROUGHPUT_BATCH, max_length, device)
    sync()
    examples_per_s = len(batch) / (time.perf_counter() - t0)
    latencies = []
    for i in range(runs):
        t0 = time.perf_counter()
        predict(model, tokenizer, [texts[i % len(texts)]], 1, max_length, device)
        sync()
        latencies.append((time.perf_counter() - t0) * 1000)
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
    return {"examples_per_s": examples_per_s, "batch_size": THROUGHPUT_BATCH,
            "latency_ms_p50": float(np.percentile(latencies, 50)),
            "latency_ms_p95": float(np.percentile(latencies, 95)), "peak_memory_mb": peak_mb}
