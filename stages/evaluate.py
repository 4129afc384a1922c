"""Stage 6 — evaluate: what fine-tuning bought, what it cost, and where it stops generalizing.

Competing objectives: in-distribution task accuracy next to language-modelling perplexity of the
base model and of the fine-tuned body (forgetting = ppl_finetuned / ppl_base − 1), efficiency
(parameters, throughput, latency, memory).

Mismatched generalization: accuracy on each shift split, the gap to in-distribution accuracy with
bootstrap intervals, and — per shift — the *base* model's LM loss on the shifted text next to its
loss on the plain text. A shift whose text the base model reads about as well as plain text was
covered by pretraining ("capability present"); if the classifier still fails on it, fine-tuned
behaviour did not transfer: the mismatched-generalization case of Wei et al. (2023).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import torch

from stages.artifacts import read_json, read_parquet, run_stage, seed_everything, set_threads, write_json
from stages.config import load_params
from stages.gates import Gate
from stages.modeling import eval_lm_loss, load_meta, open_shard, perplexity, resolve_device
from stages import scoring

TASK_DIR = Path("data/raw/task")
PLOTS = Path("plots/evaluate")
# Base-model LM loss on shifted text at most this many times its loss on plain text counts as
# "the model can read it". Encoded text never seen in pretraining typically sits at 2x or more.
CAPABILITY_RATIO = 1.5
# A gap larger than this (accuracy points) whose interval excludes 0 counts as "did not transfer".
GAP_THRESHOLD = 0.05


@torch.no_grad()
def predict(model, tokenizer, texts: list[str], batch_size: int, max_length: int, device) -> np.ndarray:
    """Class probabilities for `texts` (right padding; the classifier reads the last real token)."""
    probs = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
        probs.append(torch.softmax(model(**enc).logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(probs) if probs else np.zeros((0, model.config.num_labels))


@torch.no_grad()
def text_lm_loss(model, tokenizer, texts: list[str], batch_size: int, max_length: int, device) -> float:
    """Mean per-token LM loss of `texts` (padding masked out)."""
    total, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
        logits = model(**enc).logits[:, :-1].float()
        target = enc["input_ids"][:, 1:]
        mask = enc["attention_mask"][:, 1:].bool()
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        total += loss[mask].sum().item()
        count += mask.sum().item()
    return total / max(1, count)


@torch.no_grad()
def efficiency(model, tokenizer, texts: list[str], runs: int, max_length: int, device) -> dict:
    """Throughput at batch 32 and latency percentiles at batch 1, after a warm-up."""
    predict(model, tokenizer, texts[:32], 32, max_length, device)
    batch = (texts * (64 // max(1, len(texts)) + 1))[:64]
    t0 = time.perf_counter()
    predict(model, tokenizer, batch, 32, max_length, device)
    examples_per_s = len(batch) / (time.perf_counter() - t0)
    latencies = []
    for i in range(runs):
        t0 = time.perf_counter()
        predict(model, tokenizer, [texts[i % len(texts)]], 1, max_length, device)
        latencies.append((time.perf_counter() - t0) * 1000)
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"examples_per_s": examples_per_s, "latency_ms_p50": float(np.percentile(latencies, 50)),
            "latency_ms_p95": float(np.percentile(latencies, 95)), "peak_memory_mb": peak_mb}


def verdict(loss_ratio: float, gap: float, gap_lo: float) -> str:
    if gap <= GAP_THRESHOLD or gap_lo <= 0:
        return "transfers"
    if loss_ratio > CAPABILITY_RATIO:
        return "no capability"  # pretraining never taught the model to read this text
    return "capability present, behaviour did not transfer"


def main() -> None:
    params = load_params()
    p = params.evaluate
    seed_everything(params.seed)
    set_threads(params.finetune.threads)
    from transformers import AutoTokenizer, GPT2ForSequenceClassification, GPT2LMHeadModel

    device = resolve_device(params.pretrain.device)
    label_names = read_json(TASK_DIR / "labels.json")["label_names"]
    n_classes = len(label_names)
    test = read_parquet(TASK_DIR / "test.parquet", ["text", "label"])
    shifts = {f.stem: read_parquet(f, ["text", "label"]) for f in sorted((TASK_DIR / "shifts").glob("*.parquet"))}
    tokenizer = AutoTokenizer.from_pretrained("models/finetuned")
    tokenizer.padding_side = "right"
    classifier = GPT2ForSequenceClassification.from_pretrained("models/finetuned").to(device).eval()
    max_len = params.finetune.max_length

    # --- task: in-distribution and every shift -------------------------------------------------
    probs = predict(classifier, tokenizer, test["text"].tolist(), p.batch_size, max_len, device)
    y = test["label"].to_numpy()
    pred = probs.argmax(axis=1)
    correct_id = pred == y
    task = {"id": {
        "accuracy": scoring.accuracy(y, pred),
        "macro_f1": scoring.macro_f1(y, pred, n_classes),
        "ece": scoring.expected_calibration_error(probs, y, p.ece_bins),
        "accuracy_ci": scoring.bootstrap_ci(correct_id, p.bootstrap, params.seed),
        "n": len(y),
    }, "shift": {}, "gap": {}}
    cm = scoring.confusion(y, pred, n_classes)
    shift_correct = {}
    for name, df in shifts.items():
        sp = predict(classifier, tokenizer, df["text"].tolist(), p.batch_size, max_len, device).argmax(axis=1)
        sy = df["label"].to_numpy()
        shift_correct[name] = sp == sy
        task["shift"][name] = {
            "accuracy": scoring.accuracy(sy, sp), "macro_f1": scoring.macro_f1(sy, sp, n_classes),
            "accuracy_ci": scoring.bootstrap_ci(sp == sy, p.bootstrap, params.seed), "n": len(sy),
        }
        task["gap"][name] = task["id"]["accuracy"] - task["shift"][name]["accuracy"]
        task["gap"][f"{name}_ci"] = scoring.bootstrap_gap_ci(correct_id, sp == sy, p.bootstrap, params.seed)
    gaps = [task["gap"][n] for n in shifts]
    task["gap"]["mean"] = float(np.mean(gaps)) if gaps else 0.0
    task["gap"]["max"] = float(np.max(gaps)) if gaps else 0.0

    # --- language modelling: base vs fine-tuned body (tied head) -------------------------------
    meta = load_meta()
    val = open_shard("validation", meta)
    block = params.pretrain.model.block_size
    base = GPT2LMHeadModel.from_pretrained("models/base").to(device).eval()
    tuned_lm = GPT2LMHeadModel.from_pretrained("models/finetuned").to(device).eval()
    loss_base = eval_lm_loss(base, val, block, 16, p.lm_batches, params.seed, device)
    loss_tuned = eval_lm_loss(tuned_lm, val, block, 16, p.lm_batches, params.seed, device)
    lm = {"loss_base": loss_base, "loss_finetuned": loss_tuned,
          "ppl_base": perplexity(loss_base), "ppl_finetuned": perplexity(loss_tuned)}
    lm["forgetting"] = lm["ppl_finetuned"] / lm["ppl_base"] - 1

    # --- capability vs behaviour per shift ------------------------------------------------------
    plain_loss = text_lm_loss(base, tokenizer, test["text"].tolist(), p.batch_size, max_len, device)
    capability = {"plain_loss": plain_loss}
    for name, df in shifts.items():
        loss = text_lm_loss(base, tokenizer, df["text"].tolist(), p.batch_size, max_len, device)
        ratio = loss / plain_loss
        capability[name] = {"base_loss": loss, "loss_ratio": ratio, "verdict": verdict(
            ratio, task["gap"][name], task["gap"][f"{name}_ci"][0])}

    ft = read_json("metrics/finetune.json")
    eff = {"params": sum(w.numel() for w in classifier.parameters()),
           "trainable_params": ft.get("trainable_params")}
    eff |= efficiency(classifier, tokenizer, test["text"].tolist(), p.latency_runs, max_len, device)

    write_json("metrics/evaluate.json", {"task": task, "lm": lm, "capability": capability, "efficiency": eff})
    PLOTS.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"actual": label_names[a], "predicted": label_names[b]}
                  for a, b in zip(y, pred)]).to_csv(PLOTS / "confusion.csv", index=False)
    rows = [{"split": "id", "accuracy": task["id"]["accuracy"]}]
    rows += [{"split": n, "accuracy": task["shift"][n]["accuracy"]} for n in shifts]
    pd.DataFrame(rows).to_csv(PLOTS / "accuracy.csv", index=False)
    print(f"[evaluate] id acc {task['id']['accuracy']:.3f}; "
          + ", ".join(f"{n} {task['shift'][n]['accuracy']:.3f}" for n in shifts)
          + f"; ppl base {lm['ppl_base']:.2f} -> finetuned {lm['ppl_finetuned']:.2f}", flush=True)
    print(f"[evaluate] confusion matrix (rows actual {label_names}):\n{cm}", flush=True)

    facts = {"id_accuracy": task["id"]["accuracy"], "ece": task["id"]["ece"],
             "ppl_base": lm["ppl_base"], "ppl_finetuned": lm["ppl_finetuned"], "forgetting": lm["forgetting"]}
    accs = pd.DataFrame([{"split": n, "accuracy": v["accuracy"]} for n, v in task["shift"].items()]
                        + [{"split": "id", "accuracy": task["id"]["accuracy"]}])
    gate = Gate("evaluate").scalars("summary", facts).table("accuracies", accs)
    gate.expect("accuracies", gxe.ExpectColumnValuesToBeBetween(column="accuracy", min_value=0, max_value=1))
    gate.expect("summary", gxe.ExpectColumnValuesToBeBetween(column="ece", min_value=0, max_value=1))
    for key in ("ppl_base", "ppl_finetuned"):
        gate.expect("summary", gxe.ExpectColumnValuesToBeBetween(column=key, min_value=1, max_value=1e6))
    gate.expect("summary", gxe.ExpectColumnValuesToBeBetween(column="id_accuracy", min_value=p.gate.min_id_accuracy))
    gate.expect("summary", gxe.ExpectColumnValuesToBeBetween(column="forgetting", max_value=p.gate.max_forgetting))
    gate.finish()


if __name__ == "__main__":
    run_stage(main)
