"""Our quality filters and exact dedup (stages/cleaning.py) against the equivalent datatrove pipeline.

    python bench/clean.py [--docs 5000] [--repeat 3] [--seed 1337]

Both sides run in this one process, single-threaded, over the same raw documents (the generated
world corpus when stages.world is importable, else synthetic text):

  ours       quality_signals + first_failure (length, Gopher repetition, Gopher quality, C4 line
             punctuation, stop words), then exact dedup on a normalized blake2b key
  datatrove  GopherRepetitionFilter -> GopherQualityFilter -> C4QualityFilter (FineWeb's order),
             then ExactDedupSignature -> ExactFindDedups -> ExactDedupFilter on simplify_text,
             configured with our thresholds where the two have the same rule

Throughput is docs per CPU-second of this process (= docs/s per core), the best of --repeat runs,
so other load on the machine does not skew the ratio. Also printed: how often the two agree on
keep/drop, and for reference our whole clean_corpus (repairs, PII, MinHash included) on one core.
Needs the bench-only extra: pip install datatrove spacy (datatrove's English word splitter is spaCy).
"""

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the repo root
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars (datasets, datatrove's dedup) before tqdm loads

import pandas as pd  # noqa: E402

from stages.cleaning import (  # noqa: E402
    STOP_WORDS,
    CleanParams,
    clean_corpus,
    dedup_words,
    exact_duplicates,
    exact_key,
    first_failure,
    quality_signals,
)

try:
    from datatrove.data import Document
    from datatrove.pipeline.dedup import ExactDedupConfig, ExactDedupFilter, ExactDedupSignature, ExactFindDedups
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.utils.text import simplify_text
    from datatrove.utils.word_tokenizers import load_word_tokenizer
    from loguru import logger

    load_word_tokenizer("en").word_tokenize("Check that spaCy is installed.")
except ImportError as err:
    print(f"bench/clean.py needs datatrove and spaCy (bench-only extras): {err}\n"
          "install them with: .venv/bin/pip install datatrove spacy", file=sys.stderr)
    sys.exit(2)


def load_corpus(n: int, seed: int) -> tuple[list[str], str]:
    try:
        from stages.world import WorldParams, generate_world
    except ImportError:
        rng = random.Random(seed)
        words = "the of and to in a is that for it was on with as his at by from they we this had".split()
        words += "harbour market river council kettle train garden notebook morning winter".split()
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 80))).capitalize() + "."
                 for _ in range(n)]
        return texts, "synthetic"
    corpus = generate_world(WorldParams(), seed).corpus
    return corpus["text"].head(n).tolist(), f"world (seed {seed})"


def run_ours(texts: list[str], p: CleanParams) -> list[bool]:
    verdicts = [first_failure(quality_signals(t), p)[0] == "" for t in texts]
    keys = [exact_key(dedup_words(t)) if ok else "" for t, ok in zip(texts, verdicts)]
    copies = exact_duplicates(keys, verdicts)
    return [ok and i not in copies for i, ok in enumerate(verdicts)]


def dedup_content(doc: Document) -> bytes:
    return simplify_text(doc.text).encode()  # datatrove's default xxhash64 takes bytes


def run_datatrove(texts: list[str], p: CleanParams) -> list[bool]:
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    repetition = GopherRepetitionFilter(
        dup_line_frac=p.max_dup_line_share, dup_para_frac=p.max_dup_para_share,
        dup_line_char_frac=p.max_dup_line_char_share, dup_para_char_frac=p.max_dup_para_char_share,
        top_n_grams=((2, p.max_top_2gram_share), (3, p.max_top_3gram_share), (4, p.max_top_4gram_share)),
        dup_n_grams=((10, p.max_dup_10gram_share),),  # we check 10-grams only
    )
    quality = GopherQualityFilter(
        min_doc_words=p.min_words, max_doc_words=p.max_words, min_avg_word_length=p.min_mean_word_len,
        max_avg_word_length=p.max_mean_word_len, max_symbol_word_ratio=p.max_symbol_word_ratio,
        # spaCy makes punctuation marks tokens, which datatrove counts as words without letters:
        # 0.65 of tokens is about our 0.8 of words on English prose
        max_non_alpha_words_ratio=0.65,
        stop_words=sorted(STOP_WORDS), min_stop_words=2,  # our list; datatrove's has only 8 words
    )
    c4 = C4QualityFilter(min_num_sentences=-1)  # we count no sentences
    kept = list(c4.run(quality.run(repetition.run(iter(docs)))))
    config = ExactDedupConfig(content_getter=dedup_content)
    with tempfile.TemporaryDirectory() as tmp:
        ExactDedupSignature(output_folder=f"{tmp}/sigs", config=config).run(iter(kept))
        ExactFindDedups(data_folder=f"{tmp}/sigs", output_folder=f"{tmp}/dups", config=config).run()
        survivors = {doc.id for doc in ExactDedupFilter(data_folder=f"{tmp}/dups", config=config).run(iter(kept))}
    return [str(i) in survivors for i in range(len(texts))]


def timed(fn, repeat: int):
    """(result, best CPU seconds, best wall seconds) over `repeat` runs."""
    best_cpu = best_wall = float("inf")
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        result = fn()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return result, best_cpu, best_wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args()
    logger.disable("datatrove")  # per-step log lines would be timed too

    texts, source = load_corpus(args.docs, args.seed)
    p = CleanParams(num_proc=1)
    run_ours(texts[:50], p), run_datatrove(texts[:50], p)  # warm up: imports, spaCy's tokenizer
    ours, ours_cpu, ours_wall = timed(lambda: run_ours(texts, p), args.repeat)
    theirs, dt_cpu, dt_wall = timed(lambda: run_datatrove(texts, p), args.repeat)
    corpus = pd.DataFrame({"id": [f"d{i}" for i in range(len(texts))], "text": texts, "source": "bench",
                           "domain": "bench"})
    _, full_cpu, _ = timed(lambda: clean_corpus(corpus, p, args.seed), 1)

    n = len(texts)
    agree = sum(a == b for a, b in zip(ours, theirs)) / n
    print(f"corpus: {source}, {n} docs, {sum(map(len, texts)) / n:.0f} chars/doc; best of {args.repeat}")
    print(f"{'':28s}{'docs/s/core':>12s}{'cpu s':>8s}{'wall s':>8s}{'kept':>7s}")
    print(f"{'ours (filters + exact)':28s}{n / ours_cpu:12.0f}{ours_cpu:8.2f}{ours_wall:8.2f}{sum(ours):7d}")
    print(f"{'datatrove (same)':28s}{n / dt_cpu:12.0f}{dt_cpu:8.2f}{dt_wall:8.2f}{sum(theirs):7d}")
    print(f"ratio ours/datatrove: {dt_cpu / ours_cpu:.2f}x   keep/drop agreement: {agree:.1%}")
    print(f"ours, whole clean_corpus (repairs, PII, MinHash; 1 process): {n / full_cpu:.0f} docs/s/core")


if __name__ == "__main__":
    main()
