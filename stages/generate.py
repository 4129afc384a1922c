"""Stage generate: continuations of the same prompts from the base and the fine-tuned LM.

Prompts, sampling and scores: lmpipe/generation.py. Writes data/samples/samples.{jsonl,md},
metrics/generate.json and the gate reports/quality/generate.json.
"""

from __future__ import annotations

import great_expectations.expectations as gxe
import pandas as pd

from lmpipe import paths
from lmpipe.gates import Gate
from lmpipe.generation import MODELS, Samples, generate_samples, load_prompts, markdown
from lmpipe.io import run_stage, write_json, write_jsonl, write_text
from lmpipe.outputs import check_writable
from lmpipe.params import load_params
from lmpipe.runtime import resolve_device, set_threads


def gate(samples: Samples, expected_rows: int) -> None:
    scores = pd.DataFrame([{"model": name, **m} for name, m in samples.metrics.items()])
    g = Gate("generate").table("samples", pd.DataFrame(samples.rows)).table("metrics", scores)
    for name in MODELS:
        g.expect("samples", gxe.ExpectColumnValuesToNotBeNull(column=name))
    g.expect("samples", gxe.ExpectTableRowCountToEqual(value=expected_rows))
    for key in samples.metrics["base"]:  # finite (NaN would be skipped by a range check) and in range
        g.expect("metrics", gxe.ExpectColumnValuesToNotBeNull(column=key))
    for key in ("distinct_1", "distinct_2", "repeat_4gram", "degenerate_share"):
        g.expect("metrics", gxe.ExpectColumnValuesToBeBetween(column=key, min_value=0, max_value=1))
    g.expect("metrics", gxe.ExpectColumnValuesToBeBetween(column="mean_sentence_words", min_value=0))
    g.finish()


def main() -> None:
    params = load_params()
    check_writable(dirs=[paths.SAMPLES], files=[paths.metrics_file("generate"), paths.quality_file("generate")])  # before any work: a file where a folder goes fails now, not at the end
    p = params.generate
    set_threads(params.finetune.threads)
    device = resolve_device(params.pretrain.device)
    prompts = load_prompts(p, params.seed)
    samples = generate_samples(prompts, p, params.seed, device)
    write_jsonl(paths.SAMPLES / "samples.jsonl", samples.rows)
    write_text(paths.SAMPLES / "samples.md", markdown(samples.rows, p, params.seed, samples.metrics))
    write_json(paths.metrics_file("generate"), samples.metrics)
    for name, m in samples.metrics.items():
        print(f"[generate] {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()), flush=True)
    gate(samples, len(prompts) * p.samples_per_prompt)


if __name__ == "__main__":
    run_stage(main)
