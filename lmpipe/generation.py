"""Continuations of the same prompts from the base and the fine-tuned LM, and their scores.

Readability is one of the objectives fine-tuning competes with, so both models continue every
prompt with the same sampling settings and seed, and the samples are scored (distinct-n,
repetition, sentence length, Flesch reading ease, share of empty/looping samples).

Prompts come from `data/raw/prompts.jsonl` when ingest wrote any (the world's own, or a prompts
file among the user's inputs); otherwise from the opening words of a seeded sample of the cleaned
validation documents. Never from raw corpus text: that skipped cleaning and PII scrubbing.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lmpipe import scoring
from lmpipe.io import StageError, read_parquet
from lmpipe.modeling import load_quietly
from lmpipe.params import GenerateParams
from lmpipe.paths import BASE_MODEL, CLEAN, FINETUNED_MODEL, RAW_PROMPTS

MODELS = {"base": BASE_MODEL, "finetuned": FINETUNED_MODEL}
VALIDATION_DOCS = CLEAN / "validation.parquet"
VALIDATION_DOMAIN = "validation"


@dataclass
class Samples:
    """One row per prompt and sample ({"domain", "prompt", "sample", "base", "finetuned"}) and the
    quality metrics of each model's samples (metrics/generate.json)."""

    rows: list[dict]
    metrics: dict[str, dict[str, float]]


def read_prompts(path: Path = RAW_PROMPTS) -> list[dict]:
    """The prompts ingest wrote; an empty file means "take them from the validation split"."""
    if not path.is_file():
        raise StageError(f"missing {path}: run the ingest stage first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def validation_prompts(texts: Sequence[str], count: int, words: int, seed: int) -> list[dict]:
    """The first `words` words of `count` documents drawn (seeded) from `texts`; documents with
    no more than `words` words are skipped, so every prompt leaves text to continue."""
    candidates = [t for t in texts if len(t.split()) > words]
    if not candidates:
        raise StageError(f"{VALIDATION_DOCS}: no document has more than {words} words "
                         "(generate.prompt_words) to make a prompt from")
    picked = random.Random(seed).sample(candidates, min(count, len(candidates)))
    return [{"domain": VALIDATION_DOMAIN, "prompt": " ".join(t.split()[:words])} for t in picked]


def load_prompts(p: GenerateParams, seed: int) -> list[dict]:
    prompts = read_prompts()
    if prompts:
        return prompts
    texts = read_parquet(VALIDATION_DOCS, ["text"])["text"].tolist()
    return validation_prompts(texts, p.num_prompts, p.prompt_words, seed)


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
    """Generation-quality metrics of one model's samples (see lmpipe/scoring.py)."""
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


def generate_samples(prompts: list[dict], p: GenerateParams, seed: int, device) -> Samples:
    """Every model in MODELS continues every prompt `p.samples_per_prompt` times."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(BASE_MODEL)
    rows = [{"domain": pr.get("domain", ""), "prompt": pr["prompt"], "sample": k}
            for pr in prompts for k in range(p.samples_per_prompt)]
    for name, path in MODELS.items():
        # models/finetuned's classifier head has no place in the LM: left out, said in one line
        model = load_quietly(GPT2LMHeadModel, path, stage="generate", dropped=("score.weight",)).to(device).eval()
        texts = continue_prompts(model, tokenizer, [r["prompt"] for r in rows], p, seed, device)
        for row, text in zip(rows, texts):
            row[name] = text
        print(f"[generate] {name}: {len(rows)} samples", flush=True)
    return Samples(rows, {name: quality([r[name] for r in rows]) for name in MODELS})


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
