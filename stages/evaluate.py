"""Stage evaluate: what fine-tuning bought, what it cost, and where it stops generalizing.

Task accuracy in distribution and on every shift, base vs fine-tuned language modelling
(forgetting), and efficiency (lmpipe/evaluation.py); per shift the base model's capability (LM-loss
ratio and probe) and the verdict it gives with the accuracy gap (lmpipe/capability.py). Writes
metrics/evaluate.json, the CSVs `dvc plots` draws, and the gate reports/quality/evaluate.json.
"""

from __future__ import annotations

import time

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd

from lmpipe import paths
from lmpipe.bits_per_byte import validation_texts
from lmpipe.capability import VERDICTS, capability
from lmpipe.evaluation import (
    Evaluation,
    compare_lm,
    efficiency,
    encode,
    evaluate_task,
    read_task,
    trained_max_length,
)
from lmpipe.gates import Gate
from lmpipe.io import read_json, run_stage, write_json
from lmpipe.modeling import load_meta, load_quietly, open_shard
from lmpipe.outputs import check_writable
from lmpipe.params import EvaluateParams, Params, load_params
from lmpipe.runtime import resolve_device, seed_everything, set_threads

PLOTS = paths.plots_dir("evaluate")
CLASSIFIER_HEAD = ("score.weight",)


def load_classifier(device):
    """The fine-tuned classifier and its tokenizer, right-padded (the classifier reads the last
    real token)."""
    from transformers import AutoTokenizer, GPT2ForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(paths.FINETUNED_MODEL)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    classifier = GPT2ForSequenceClassification.from_pretrained(paths.FINETUNED_MODEL).to(device).eval()
    return tokenizer, classifier


def load_lm(path, device):
    """A language model; from models/finetuned that is the fine-tuned body with the tied LM head,
    leaving out the classifier head (said in one line, not transformers' load report)."""
    from transformers import GPT2LMHeadModel

    return load_quietly(GPT2LMHeadModel, path, stage="evaluate", dropped=CLASSIFIER_HEAD).to(device).eval()


def evaluate(params: Params) -> Evaluation:
    p = params.evaluate
    device = resolve_device(params.pretrain.device)
    data = read_task()
    tokenizer, classifier = load_classifier(device)
    # Read every text whole, up to the model's positions, not cut at the fine-tuning length: that
    # length (finetune.max_length: auto) fits the training texts, and cutting longer shifted texts
    # (leet and rot13 take about twice the tokens) would measure truncation, not generalization.
    trained = trained_max_length(tokenizer, params.finetune.max_length, classifier.config.n_positions)
    max_len = classifier.config.n_positions
    print(f"[evaluate] texts read up to {max_len} tokens (fine-tuned on up to {trained})", flush=True)
    ids = {"id": encode(tokenizer, data.test["text"])} | {n: encode(tokenizer, df["text"])
                                                          for n, df in data.shifts.items()}
    task = evaluate_task(classifier, ids, data, p, params.seed, max_len, tokenizer.pad_token_id, device)

    # language modelling: base vs fine-tuned body (tied head) on the same validation split
    validation, texts = open_shard("validation", load_meta()), validation_texts()
    base, tuned = load_lm(paths.BASE_MODEL, device), load_lm(paths.FINETUNED_MODEL, device)
    lm = compare_lm(base, tuned, tokenizer, validation, texts, params.pretrain.model.block_size, p, params.seed,
                    device)
    del tuned
    labels = {"id": data.test["label"].to_numpy()} | {n: df["label"].to_numpy() for n, df in data.shifts.items()}
    cap = capability(base, tokenizer, ids, labels, task.metrics["gap"], p, seed=params.seed, max_length=max_len,
                     n_classes=len(data.label_names), device=device)
    del base

    finetune_file = paths.metrics_file("finetune")
    ft = read_json(finetune_file) if finetune_file.exists() else {}
    eff = {"params": sum(w.numel() for w in classifier.parameters()), "trainable_params": ft.get("trainable_params")}
    eff |= efficiency(classifier, tokenizer, data.test["text"].tolist(), p.latency_runs, max_len, device)
    return Evaluation(task, lm, cap, eff, data.label_names)


def write_plots(ev: Evaluation) -> None:
    """The CSVs `dvc plots` draws (confusion template, accuracy bars)."""
    labels, task = ev.labels, ev.task.metrics
    PLOTS.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"actual": [labels[a] for a in ev.task.y_true], "predicted": [labels[b] for b in ev.task.y_pred]}
                 ).to_csv(PLOTS / "confusion.csv", index=False)
    rows = [{"split": "id", "accuracy": task["id"]["accuracy"],
             "ci_low": task["id"]["accuracy_ci"][0], "ci_high": task["id"]["accuracy_ci"][1]}]
    rows += [{"split": n, "accuracy": s["accuracy"], "ci_low": s["accuracy_ci"][0], "ci_high": s["accuracy_ci"][1]}
             for n, s in task["shift"].items()]
    pd.DataFrame(rows).to_csv(PLOTS / "accuracy.csv", index=False)


def print_summary(ev: Evaluation, seconds: float) -> None:
    task, lm = ev.task.metrics, ev.lm
    print(f"[evaluate] id acc {task['id']['accuracy']:.3f}; "
          + ", ".join(f"{n} {s['accuracy']:.3f}" for n, s in task["shift"].items())
          + f"; ppl base {lm['ppl_base']:.2f} -> finetuned {lm['ppl_finetuned']:.2f}"
          + f"; bits/byte {lm['bits_per_byte']:.4f} -> {lm['bits_per_byte_finetuned']:.4f}"
          + f" ({seconds:.0f}s)", flush=True)
    for name in task["shift"]:
        cap = ev.capability[name]
        print(f"[evaluate] {name}: gap {task['gap'][name]:+.3f}, base loss ratio {cap['loss_ratio']:.2f},"
              f" probe {cap['probe_accuracy']:.3f} (plain {cap['probe_reference_accuracy']:.3f},"
              f" untrained {cap['probe_control_accuracy']:.3f}), transfer {cap['transfer_accuracy']:.3f}"
              f" (untrained {cap['transfer_control_accuracy']:.3f})"
              f" -> {cap['verdict']}", flush=True)
    print(f"[evaluate] confusion matrix (rows actual {ev.labels}):\n{np.array(task['id']['confusion'])}", flush=True)


def gate_facts(ev: Evaluation) -> dict[str, float | None]:
    task, lm, eff = ev.task.metrics, ev.lm, ev.efficiency
    facts = {"id_accuracy": task["id"]["accuracy"], "id_macro_f1": task["id"]["macro_f1"], "ece": task["id"]["ece"],
             "gap_mean": task["gap"]["mean"], "gap_max": task["gap"]["max"],
             "ppl_base": lm["ppl_base"], "ppl_finetuned": lm["ppl_finetuned"], "forgetting": lm["forgetting"],
             "bits_per_byte": lm["bits_per_byte"], "bits_per_byte_finetuned": lm["bits_per_byte_finetuned"],
             "examples_per_s": eff["examples_per_s"], "latency_ms_p50": eff["latency_ms_p50"]}
    return {k: (float(v) if v is not None and np.isfinite(v) else None) for k, v in facts.items()}


def gate(ev: Evaluation, p: EvaluateParams) -> None:
    """Metrics finite and in range; the optional regression thresholds with a clear message."""
    task, facts = ev.task.metrics, gate_facts(ev)
    accs = pd.DataFrame([{"split": n, "accuracy": v["accuracy"], "macro_f1": v["macro_f1"]}
                         for n, v in task["shift"].items()]
                        + [{"split": "id", "accuracy": task["id"]["accuracy"], "macro_f1": task["id"]["macro_f1"]}])
    probes = pd.DataFrame([{"split": n, "probe_accuracy": ev.capability[n]["probe_accuracy"],
                            "verdict": ev.capability[n]["verdict"]} for n in task["shift"]],
                          columns=["split", "probe_accuracy", "verdict"])
    g = Gate("evaluate").scalars("summary", facts).table("accuracies", accs).table("capability", probes)
    g.expect("capability", gxe.ExpectColumnValuesToNotBeNull(column="probe_accuracy"))
    g.expect("capability", gxe.ExpectColumnValuesToBeBetween(column="probe_accuracy", min_value=0, max_value=1))
    g.expect("capability", gxe.ExpectColumnValuesToBeInSet(column="verdict", value_set=list(VERDICTS)))
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
    for key in ("bits_per_byte", "bits_per_byte_finetuned", "examples_per_s", "latency_ms_p50"):
        g.expect("summary", gxe.ExpectColumnValuesToBeBetween(column=key, min_value=0, strict_min=True))
    g.expect("summary", gxe.ExpectColumnValuesToBeBetween(column="id_accuracy", min_value=p.gate.min_id_accuracy))
    g.expect("summary", gxe.ExpectColumnValuesToBeBetween(column="forgetting", max_value=p.gate.max_forgetting))
    g.finish(hints=gate_hints(facts, p))


def gate_hints(facts: dict[str, float | None], p: EvaluateParams) -> list[str]:
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
    return explain


def main() -> None:
    params = load_params()
    check_writable(dirs=[paths.plots_dir("evaluate")], files=[paths.metrics_file("evaluate"), paths.quality_file("evaluate")])  # before any work: a file where a folder goes fails now, not at the end
    seed_everything(params.seed)
    set_threads(params.finetune.threads)
    t0 = time.perf_counter()
    ev = evaluate(params)
    write_json(paths.metrics_file("evaluate"), ev.metrics())
    write_plots(ev)
    print_summary(ev, time.perf_counter() - t0)
    gate(ev, params.evaluate)


if __name__ == "__main__":
    run_stage(main)
