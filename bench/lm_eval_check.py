"""Our `lm.bits_per_byte` against lm-evaluation-harness on the same model and documents.

Run: `python bench/lm_eval_check.py` (or `python -m bench.lm_eval_check`) after the pipeline has run;
`--repo DIR` points it at another checkout (e.g. a micro-config repository), `--help` for the knobs.
Needs the bench extra (`pip install -e .[bench]`, which brings `lm-eval`).
Goal: the two numbers within 0.5% of each other.

The harness arm is lm-eval's own pipeline end to end: a task defined in a temporary folder (a
`loglikelihood_rolling` task whose documents are `data/clean/validation.parquet`, loaded through
`datasets`' parquet builder), its `HFLM` wrapper around `models/base`, and its `bits_per_byte`
aggregation, run with `lm_eval.simple_evaluate`. Our arm is `lmpipe.bits_per_byte` on the same
model and the same list of texts. Both run in fp32 on the same device.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/lm_eval_check.py` from the repo root

TASK = "lmpipe_validation_bpb"


def task_yaml(parquet: Path) -> str:
    """A harness task over our validation documents, in the shape of its wikitext task."""
    return f"""task: {TASK}
dataset_path: parquet
dataset_kwargs:
  data_files:
    validation: {parquet.resolve()}
output_type: loglikelihood_rolling
validation_split: validation
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
  - metric: byte_perplexity
metadata:
  version: 1.0
"""


def harness_bits_per_byte(model_dir: Path, parquet: Path, block_size: int, batch_size: int, device: str) -> float:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(model_dir), device=device, batch_size=batch_size, max_length=block_size,
              dtype="float32")
    with tempfile.TemporaryDirectory() as tasks:
        (Path(tasks) / f"{TASK}.yaml").write_text(task_yaml(parquet), encoding="utf-8")
        results = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=TaskManager(include_path=tasks),
                                          log_samples=False, bootstrap_iters=0)
    return float(results["results"][TASK]["bits_per_byte,none"])


def ours_bits_per_byte(model_dir: Path, block_size: int, batch_size: int, device: str) -> tuple[float, int, int]:
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from lmpipe.bits_per_byte import bits_per_byte, utf8_bytes, validation_texts

    texts = validation_texts()
    dev = torch.device(device)
    model = GPT2LMHeadModel.from_pretrained(model_dir).to(dev).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return bits_per_byte(model, tokenizer, texts, block_size, batch_size, dev), len(texts), utf8_bytes(texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=ROOT, help="checkout whose models/base and data/clean to use")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    os.chdir(args.repo)
    from lmpipe.bits_per_byte import VALIDATION_DOCS
    from lmpipe.paths import BASE_MODEL

    block = json.loads((BASE_MODEL / "config.json").read_text())["n_positions"]
    t0 = time.perf_counter()
    ours, docs, n_bytes = ours_bits_per_byte(BASE_MODEL, block, args.batch_size, args.device)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the harness's own progress lines
        theirs = harness_bits_per_byte(BASE_MODEL, VALIDATION_DOCS, block, args.batch_size, args.device)
    t_theirs = time.perf_counter() - t0
    rel = (ours - theirs) / theirs
    print(f"documents: {VALIDATION_DOCS} ({docs} docs, {n_bytes} UTF-8 bytes); model: {args.repo / BASE_MODEL}"
          f" (context {block}); device {args.device}")
    print(f"{'':24}{'bits/byte':>14}{'seconds':>10}")
    print(f"{'lmpipe.bits_per_byte':24}{ours:14.9f}{t_ours:10.1f}")
    print(f"{'lm-eval ' + version('lm_eval'):24}{theirs:14.9f}{t_theirs:10.1f}")
    print(f"relative difference: {rel:+.2e} ({rel:+.4%}; goal: within 0.5%)")
    raise SystemExit(0 if abs(rel) <= 0.005 else 1)


if __name__ == "__main__":
    main()
