"""Stage 6 — evaluate: what fine-tuning bought, what it cost, and where it stops generalizing.

Competing objectives: in-distribution task accuracy next to language-modelling perplexity of the
base model and of the fine-tuned body (forgetting = ppl_finetuned / ppl_base − 1), efficiency
(parameters, throughput, latency, memory).

Mismatched generalization: accuracy on each shift split, the gap to in-distribution accuracy with
bootstrap intervals, and — per shift — the *base* model's LM loss on the shifted text next to its
loss on the plain text. A shift whose text the base model reads about as well as plain text was
covered by pretraining ("capability present"); if the classifier still fails on it, fine-tuned
behaviour did not transfer: the mismatched-generalization case of Wei et al. (2023).

The capability ratio is measured in nats per *character*, not per token: leet and rot13 text
tokenizes into about twice as many (rarer) tokens as the same plain text, so a per-token loss
spreads the same surprisal over more tokens and understates how badly the model reads it. The
shifts keep the character count (typos change it by one per typo), so per-character losses of a
text and of its shifted copy compare like with like.

Speed: every split is tokenized once; batches are length-sorted (little padding) and run under
`torch.inference_mode`; the capability losses use the first `evaluate.capability_rows` rows of each split
(the encoded shifts are row-aligned with the test split, so the ratio is paired).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import torch

from lmpipe import scoring
from lmpipe.gates import Gate
from lmpipe.io import read_json, read_parquet, run_stage, write_json
from lmpipe.modeling import eval_lm_loss, load_meta, open_shard, perplexity
from lmpipe.params import EvaluateParams, load_params
from lmpipe.runtime import resolve_device, seed_everything, set_threads

TASK_DIR = Path("data/raw/task")
PLOTS = Path("plots/evaluate")
LM_BATCH = 16  # windows per LM-loss batch (evaluate.lm_batches of them, the same for both models)
THROUGHPUT_BATCH = 32


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of every text, untruncated: each use cuts them to the length it needs."""
    return tokenizer(list(texts), truncation=False)["input_ids"] if len(texts) else []


def _batches(ids: list[list[int]], batch_size: int, max_length: int, pad_id: int, device):
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
    for rows, x, mask in _batches(ids, batch_size, max_length, pad_id, device):
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
    for _rows, x, mask in _batches(ids, batch_size, max_length, tokenizer.pad_token_id, device):
        logits = model(input_ids=x, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
        keep = mask[:, 1:].bool()
        total += loss[keep].sum().item()
        tokens += int(keep.sum().item())
    chars = sum(len(tokenizer.decode(x[1:max_length])) for x in ids)
    return {"per_token": total / max(1, tokens), "per_char": total / max(1, chars)}


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


def verdict(loss_ratio: float, gap: float, gap_lo: float, p: EvaluateParams) -> str:
    """Per shift: does fine-tuned behaviour transfer, and if not, could the base model read it?
    A gap above `p.gap_threshold` whose interval excludes 0 did not transfer; the base model
    "can read" shifted text whose per-character LM loss is at most `p.capability_ratio` times
    its loss on plain text."""
    if gap <= p.gap_threshold or gap_lo <= 0:
        return "transfers"
    if loss_ratio > p.capability_ratio:
        return "no capability"  # pretraining never taught the model to read this text
    return "capability present, behaviour did not transfer"


def task_metrics(probs: np.ndarray, y: np.ndarray, n_classes: int, p, seed: int, ece: bool) -> dict:
    pred = probs.argmax(axis=1)
    out = {"accuracy": scoring.accuracy(y, pred), "macro_f1": scoring.macro_f1(y, pred, n_classes)}
    if ece:
        out["ece"] = scoring.expected_calibration_error(probs, y, p.ece_bins)
    out["accuracy_ci"] = scoring.bootstrap_ci(pred == y, p.bootstrap, seed)
    out["n"] = len(y)
    return out


def evaluate(params) -> dict:
    """Every metric of metrics/evaluate.json (plus the confusion rows for the plots)."""
    from transformers import AutoTokenizer, GPT2ForSequenceClassification, GPT2LMHeadModel

    p = params.evaluate
    device = resolve_device(params.pretrain.device)
    label_names = read_json(TASK_DIR / "labels.json")["label_names"]
    n_classes = len(label_names)
    test = read_parquet(TASK_DIR / "test.parquet", ["text", "label"])
    shifts = {f.stem: read_parquet(f, ["text", "label"]) for f in sorted((TASK_DIR / "shifts").glob("*.parquet"))}
    tokenizer = AutoTokenizer.from_pretrained("models/finetuned")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    pad = tokenizer.pad_token_id
    classifier = GPT2ForSequenceClassification.from_pretrained("models/finetuned").to(device).eval()
    max_len = params.finetune.max_length
    ids = {"id": encode(tokenizer, test["text"])} | {n: encode(tokenizer, df["text"]) for n, df in shifts.items()}

    # --- task: in-distribution and every shift -------------------------------------------------
    y = test["label"].to_numpy()
    probs = predict_ids(classifier, ids["id"], p.batch_size, max_len, pad, device)
    correct_id = probs.argmax(axis=1) == y
    task = {"id": task_metrics(probs, y, n_classes, p, params.seed, ece=True), "shift": {}, "gap": {}}
    cm = scoring.confusion(y, probs.argmax(axis=1), n_classes)
    task["id"]["confusion"] = cm.tolist()  # rows: actual, columns: predicted (label order)
    gap_ci = {}
    for name, df in shifts.items():
        sy = df["label"].to_numpy()
        sp = predict_ids(classifier, ids[name], p.batch_size, max_len, pad, device)
        task["shift"][name] = task_metrics(sp, sy, n_classes, p, params.seed, ece=False)
        gap_ci[name] = scoring.bootstrap_gap_ci(correct_id, sp.argmax(axis=1) == sy, p.bootstrap, params.seed)
    gaps = scoring.gap_summary(task["id"]["accuracy"], {n: s["accuracy"] for n, s in task["shift"].items()})
    for name in shifts:
        task["gap"] |= {name: gaps[name], f"{name}_ci": gap_ci[name]}
    task["gap"] |= {"mean": gaps["mean"], "max": gaps["max"]}

    # --- language modelling: base vs fine-tuned body (tied head), the same fixed windows -------
    meta = load_meta()
    val = open_shard("validation", meta)
    block = params.pretrain.model.block_size
    base = GPT2LMHeadModel.from_pretrained("models/base").to(device).eval()
    tuned_lm = GPT2LMHeadModel.from_pretrained("models/finetuned").to(device).eval()
    with torch.inference_mode():
        loss_base = eval_lm_loss(base, val, block, LM_BATCH, p.lm_batches, params.seed, device)
        loss_tuned = eval_lm_loss(tuned_lm, val, block, LM_BATCH, p.lm_batches, params.seed, device)
    del tuned_lm
    lm = {"loss_base": loss_base, "loss_finetuned": loss_tuned,
          "ppl_base": perplexity(loss_base), "ppl_finetuned": perplexity(loss_tuned)}
    lm["forgetting"] = lm["ppl_finetuned"] / lm["ppl_base"] - 1
    lm["tokens"] = p.lm_batches * LM_BATCH * block

    # --- capability vs behaviour per shift (base model, nats per character) --------------------
    rows = p.capability_rows
    ctx = base.config.n_positions
    plain = text_lm_loss(base, tokenizer, ids["id"][:rows], p.batch_size, ctx, device)
    capability = {"plain_loss": plain["per_token"], "plain_loss_per_char": plain["per_char"],
                  "rows": min(rows, len(ids["id"])), "ratio_threshold": p.capability_ratio}
    for name in shifts:
        loss = text_lm_loss(base, tokenizer, ids[name][:rows], p.batch_size, ctx, device)
        ratio = loss["per_char"] / max(plain["per_char"], 1e-9)
        capability[name] = {"base_loss": loss["per_token"], "base_loss_per_char": loss["per_char"],
                            "loss_ratio": ratio, "loss_ratio_per_token": loss["per_token"] / max(plain["per_token"], 1e-9),
                            "verdict": verdict(ratio, task["gap"][name], task["gap"][f"{name}_ci"][0], p)}
    del base

    ft = read_json("metrics/finetune.json") if Path("metrics/finetune.json").exists() else {}
    eff = {"params": sum(w.numel() for w in classifier.parameters()),
           "trainable_params": ft.get("trainable_params")}
    eff |= efficiency(classifier, tokenizer, test["text"].tolist(), p.latency_runs, max_len, device)
    return {"task": task, "lm": lm, "capability": capability, "efficiency": eff, "labels": label_names,
            "_y": y, "_pred": probs.argmax(axis=1)}


def write_plots(ev: dict) -> None:
    """The CSVs `dvc plots` draws (confusion template, accuracy bars)."""
    labels, task = ev["labels"], ev["task"]
    PLOTS.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"actual": [labels[a] for a in ev["_y"]], "predicted": [labels[b] for b in ev["_pred"]]}
                 ).to_csv(PLOTS / "confusion.csv", index=False)
    rows = [{"split": "id", "accuracy": task["id"]["accuracy"],
             "ci_low": task["id"]["accuracy_ci"][0], "ci_high": task["id"]["accuracy_ci"][1]}]
    rows += [{"split": n, "accuracy": s["accuracy"], "ci_low": s["accuracy_ci"][0], "ci_high": s["accuracy_ci"][1]}
             for n, s in task["shift"].items()]
    pd.DataFrame(rows).to_csv(PLOTS / "accuracy.csv", index=False)


def gate(ev: dict, p) -> None:
    """Metrics finite and in range; the optional regression thresholds with a clear message."""
    task, lm, eff = ev["task"], ev["lm"], ev["efficiency"]
    facts = {"id_accuracy": task["id"]["accuracy"], "id_macro_f1": task["id"]["macro_f1"], "ece": task["id"]["ece"],
             "gap_mean": task["gap"]["mean"], "gap_max": task["gap"]["max"],
             "ppl_base": lm["ppl_base"], "ppl_finetuned": lm["ppl_finetuned"], "forgetting": lm["forgetting"],
             "examples_per_s": eff["examples_per_s"], "latency_ms_p50": eff["latency_ms_p50"]}
    facts = {k: (float(v) if v is not None and np.isfinite(v) else None) for k, v in facts.items()}
    accs = pd.DataFrame([{"split": n, "accuracy": v["accuracy"], "macro_f1": v["macro_f1"]}
                         for n, v in task["shift"].items()]
                        + [{"split": "id", "accuracy": task["id"]["accuracy"], "macro_f1": task["id"]["macro_f1"]}])
    g = Gate("evaluate").scalars("summary", facts).table("accuracies", accs)
    for key in facts:  # NaN/inf become null: a broken metric must fail, not be skipped
        g.expect("summary", gxe.ExpectColumnValuesToNotBeNull(column=key))
    for col in ("accuracy", "macro_f1"):
        g.expect("accuracies", gxe.ExpectColumnValuesToNotBeNull(column=col))
        g.expect("accuracies", gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0, max_value=1))
    g.expect("summary", gxe.ExpectColumnValuesToBeBetween(column="ece", min_value=0, max_value=1))
    for key in ("gap_mean", "gap_max"):
        g.expect("summary", gxe.ExpectColumnValuesToBeBetween(column=key, min_value=-1, max_value=1))
    for key in ("ppl_base", "ppl_finetuned"):
        g.expect("summary", gxe.ExpectColumnValuesToBeBetween(column=key, min_value=1, max_value=1e6))
    for key in ("examples_per_s", "latency_ms_p50"):
        g.expect("summary", gxe.ExpectColumnValuesToBeBetween(column=key, min_value=0, strict_min=True))
    g.expect("summary", gxe.ExpectColumnValuesToBeBetween(column="id_accuracy", min_value=p.gate.min_id_accuracy))
    g.expect("summary", gxe.ExpectColumnValuesToBeBetween(column="forgetting", max_value=p.gate.max_forgetting))
    explain = []
    if facts["id_accuracy"] is not None and facts["id_accuracy"] < p.gate.min_id_accuracy:
        explain.append(f"in-distribution test accuracy {facts['id_accuracy']:.3f} is below "
                       f"evaluate.gate.min_id_accuracy={p.gate.min_id_accuracy}")
    if facts["forgetting"] is not None and facts["forgetting"] > p.gate.max_forgetting:
        explain.append(f"forgetting {facts['forgetting']:.3f} (perplexity {facts['ppl_base']:.2f} -> "
                       f"{facts['ppl_finetuned']:.2f}) is above evaluate.gate.max_forgetting={p.gate.max_forgetting};"
                       " try finetune.replay_weight > 0, method freeze or lora, or a lower lr")
    missing = [k for k, v in facts.items() if v is None]
    if missing:
        explain.append(f"not finite: {', '.join(missing)}")
    g.finish(hints=explain)


def main() -> None:
    params = load_params()
    seed_everything(params.seed)
    set_threads(params.finetune.threads)
    t0 = time.perf_counter()
    ev = evaluate(params)
    write_json("metrics/evaluate.json", {k: v for k, v in ev.items() if not k.startswith("_")})
    write_plots(ev)
    task, lm = ev["task"], ev["lm"]
    print(f"[evaluate] id acc {task['id']['accuracy']:.3f}; "
          + ", ".join(f"{n} {s['accuracy']:.3f}" for n, s in task["shift"].items())
          + f"; ppl base {lm['ppl_base']:.2f} -> finetuned {lm['ppl_finetuned']:.2f}"
          + f" ({time.perf_counter() - t0:.0f}s)", flush=True)
    for name in task["shift"]:
        cap = ev["capability"][name]
        print(f"[evaluate] {name}: gap {task['gap'][name]:+.3f}, base loss ratio {cap['loss_ratio']:.2f}"
              f" -> {cap['verdict']}", flush=True)
    print(f"[evaluate] confusion matrix (rows actual {ev['labels']}):\n{np.array(task['id']['confusion'])}", flush=True)
    gate(ev, params.evaluate)


if __name__ == "__main__":
    run_stage(main)
