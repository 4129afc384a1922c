"""Stage 7 — generate: continuations of the same prompts from the base and the fine-tuned LM.

Readability is one of the objectives fine-tuning competes with, so both models continue every
prompt with the same sampling settings and seed, and `metrics/generate.json` scores the samples
(distinct-n, repetition, sentence length, Flesch reading ease, share of empty/looping samples).
"""

from __future__ import annotations

import json
from pathlib import Path

import great_expectations.expectations as gxe
import pandas as pd
import torch

from lmpipe import scoring
from lmpipe.gates import Gate
from lmpipe.io import StageError, run_stage, write_json, write_jsonl, write_text
from lmpipe.params import GenerateParams, load_params
from lmpipe.runtime import resolve_device, set_threads

MODELS = {"base": "models/base", "finetuned": "models/finetuned"}
SAMPLES = Path("data/samples")


def read_prompts(path: Path = Path("data/raw/prompts.jsonl")) -> list[dict]:
    if not path.exists():
        raise StageError(f"missing {path}: run the ingest stage first")
    prompts = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise StageError(f"{path} has no prompts")
    return prompts


@torch.inference_mode()
def continue_prompts(model, tokenizer, prompts: list[str], p: GenerateParams, seed: int, device) -> list[str]:
    """Continue all prompts in one left-padded batch (one forward per new token for the whole
    batch). The generator is re-seeded per model, so both models draw from the same stream."""
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"  # new tokens must follow the prompt directly
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    sampling = p.temperature > 0
    out = model.generate(
        **enc, max_new_tokens=p.max_new_tokens, do_sample=sampling,
        temperature=p.temperature if sampling else None, top_k=p.top_k if sampling else None,
        top_p=p.top_p if sampling else None, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def quality(texts: list[str]) -> dict:
    """Generation-quality metrics of one model's samples (see stages/scoring.py)."""
    if not texts:
        raise StageError("no samples to score")
    return {
        "distinct_1": scoring.distinct_n(texts, 1),
        "distinct_2": scoring.distinct_n(texts, 2),
        "repeat_4gram": float(sum(scoring.repeat_ngram_share(t) for t in texts) / len(texts)),
        "mean_sentence_words": scoring.mean_sentence_words(texts),
        "readability": scoring.readability(texts),
        "degenerate_share": sum(map(scoring.is_degenerate, texts)) / len(texts),
    }


def markdown(rows: list[dict], p: GenerateParams | None = None, seed: int | None = None,
             metrics: dict | None = None) -> str:
    """Samples side by side (one row per prompt and sample), with the sampling settings and the
    metrics above them so the file reads on its own."""
    lines = ["# Samples: base vs fine-tuned", ""]
    if p is not None:
        lines += [f"Sampling: temperature {p.temperature}, top-k {p.top_k}, top-p {p.top_p}, "
                  f"max_new_tokens {p.max_new_tokens}, seed {seed}, {p.samples_per_prompt} sample(s) per prompt.", ""]
    if metrics:
        keys = list(next(iter(metrics.values())))
        lines += ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in keys) + " |" for name, m in metrics.items()]
        lines.append("")
    lines += ["| domain | prompt | base | finetuned |", "|---|---|---|---|"]
    cell = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    for r in rows:
        lines.append(f"| {r['domain']} | {cell(r['prompt'])} | {cell(r['base'])} | {cell(r['finetuned'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    params = load_params()
    p = params.generate
    set_threads(params.finetune.threads)
    from transformers import AutoTokenizer, GPT2LMHeadModel

    device = resolve_device(params.pretrain.device)
    prompts = read_prompts()
    tokenizer = AutoTokenizer.from_pretrained(MODELS["base"])
    rows = [{"domain": pr.get("domain", ""), "prompt": pr["prompt"], "sample": k}
            for pr in prompts for k in range(p.samples_per_prompt)]
    for name, path in MODELS.items():
        model = GPT2LMHeadModel.from_pretrained(path).to(device).eval()
        texts = continue_prompts(model, tokenizer, [r["prompt"] for r in rows], p, params.seed, device)
        for row, text in zip(rows, texts):
            row[name] = text
        print(f"[generate] {name}: {len(rows)} samples", flush=True)

    metrics = {name: quality([r[name] for r in rows]) for name in MODELS}
    write_jsonl(SAMPLES / "samples.jsonl", rows)
    write_text(SAMPLES / "samples.md", markdown(rows, p, params.seed, metrics))
    write_json("metrics/generate.json", metrics)
    for name, m in metrics.items():
        print(f"[generate] {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()), flush=True)

    scores = pd.DataFrame([{"model": name, **m} for name, m in metrics.items()])
    gate = Gate("generate").table("samples", pd.DataFrame(rows)).table("metrics", scores)
    for name in MODELS:
        gate.expect("samples", gxe.ExpectColumnValuesToNotBeNull(column=name))
    gate.expect("samples", gxe.ExpectTableRowCountToEqual(value=len(prompts) * p.samples_per_prompt))
    for key in metrics["base"]:  # finite (NaN would be skipped by a range check) and in range
        gate.expect("metrics", gxe.ExpectColumnValuesToNotBeNull(column=key))
    for key in ("distinct_1", "distinct_2", "repeat_4gram", "degenerate_share"):
        gate.expect("metrics", gxe.ExpectColumnValuesToBeBetween(column=key, min_value=0, max_value=1))
    gate.expect("metrics", gxe.ExpectColumnValuesToBeBetween(column="mean_sentence_words", min_value=0))
    gate.finish()


if __name__ == "__main__":
    run_stage(main)
