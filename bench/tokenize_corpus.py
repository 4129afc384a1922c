"""The tokenize stage's encoding throughput against raw `tokenizers.Tokenizer.encode_batch`.

Run: `python bench/tokenize_corpus.py` (or `python -m bench.tokenize_corpus`); `--help` for the knobs.
(Not `bench/tokenize.py`: run as a script, that name would shadow the standard library's `tokenize`
for every script in bench/, which numpy and inspect import.)
Goal: `lmpipe.tokenizer.encode_docs` (what the tokenize stage runs) at >= 0.9x the raw call's throughput.

Same tokenizer (models/tokenizer when the tokenize stage has run, else one trained here), same
text (the clean train split, else generated sentences), same Rust parallelism setting
(TOKENIZERS_PARALLELISM=true, as the stage uses). The raw arm is one `encode_batch` call over every
document and nothing else: no eos separators, no conversion to a numpy shard; the stage arm does
all of that, in batches of `tokenize.batch_size` documents. Arms alternate in rounds; the ratio is
the median of per-round ratios. A serial raw arm (parallelism off) is shown for information.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/tokenize_corpus.py` from the repo root, as `make bench` does
os.chdir(ROOT)

from lmpipe.params import TokenizeParams, read_params  # noqa: E402
from lmpipe.tokenizer import encode_docs, rust_parallelism, train_tokenizer  # noqa: E402


def load_texts(limit: int) -> tuple[list[str], str]:
    path = Path("data/clean/train.parquet")
    if path.exists():
        import pandas as pd

        return pd.read_parquet(path, columns=["text"])["text"].tolist()[:limit], str(path)
    rng = random.Random(0)
    words = ("the a of river stone market bread morning wind rain children maps merchants silver "
             "coins harbor gates quiet north old new read count sells brings near every while").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(20, 200))) + "." for _ in range(limit)], \
        "generated sentences"


def load_tokenizer(texts: list[str], p: TokenizeParams):
    from transformers import AutoTokenizer

    if Path("models/tokenizer/tokenizer.json").exists():
        return AutoTokenizer.from_pretrained("models/tokenizer"), "models/tokenizer"
    return train_tokenizer(texts, p), f"trained here (vocab {p.vocab_size})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--docs", type=int, default=20_000, help="documents to encode per arm per round")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()

    p = read_params(Path(args.params)).tokenize
    texts, source = load_texts(args.docs)
    tokenizer, tok_source = load_tokenizer(texts, p)
    backend = tokenizer.backend_tokenizer
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    print(f"{len(texts)} docs, {mb:.2f} MB from {source}; tokenizer {tok_source}, vocab {len(tokenizer)};"
          f" stage batch_size {p.batch_size}; cores {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f}",
          flush=True)

    def stage():
        return len(encode_docs(tokenizer, texts, p.batch_size, "bench"))

    def raw():
        with rust_parallelism():
            return sum(len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False))

    def raw_serial():
        previous = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            return sum(len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False))
        finally:
            if previous is None:
                os.environ.pop("TOKENIZERS_PARALLELISM")
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = previous

    arms = {"raw Tokenizer.encode_batch": raw, "stage encode_docs": stage,
            "raw encode_batch, serial (info)": raw_serial}
    tokens = {name: fn() for name, fn in arms.items()}  # warm-up; token counts
    assert tokens["stage encode_docs"] == tokens["raw Tokenizer.encode_batch"] + len(texts), \
        "the stage must encode exactly the raw ids plus one eos per document"
    seconds: dict[str, list[float]] = {k: [] for k in arms}
    names = list(arms)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            arms[name]()
            seconds[name].append(time.perf_counter() - start)

    base = "raw Tokenizer.encode_batch"
    print(f"\n{'arm':34s} {'MB/s':>7s} {'tokens/s':>11s} {'s':>7s} {'vs raw':>8s}")
    for name in names:
        s = statistics.median(seconds[name])
        ratio = statistics.median(b / x for b, x in zip(seconds[base], seconds[name]))
        print(f"{name:34s} {mb / s:7.2f} {tokens[base] / s:11,.0f} {s:7.2f} {ratio:7.2f}x")
    ratio = statistics.median(b / x for b, x in zip(seconds[base], seconds["stage encode_docs"]))
    print(f"\nstage / raw: {ratio:.2f}x (goal >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'});"
          f" load avg now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
