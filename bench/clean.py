"""Our quality filters and exact dedup (lmpipe/cleaning) against the equivalent datatrove
pipeline, and how the streamed clean stage scales.

    python bench/clean.py [--docs 5000] [--repeat 3] [--seed 1337]
    python bench/clean.py --scale 100000 [--num-proc 2] [--batch-rows 10000]
    python bench/clean.py --engine ray [--repeat 3] [--num-proc 2]

Both sides run in this one process, single-threaded, over the same raw documents (the generated
world corpus when lmpipe.world is importable, else synthetic text):

  ours       quality_signals + first_failure (length, Gopher repetition, Gopher quality, C4 line
             punctuation, stop words), then exact dedup on a normalized 8-byte blake2b key
  datatrove  GopherRepetitionFilter -> GopherQualityFilter -> C4QualityFilter (FineWeb's order),
             then ExactDedupSignature -> ExactFindDedups -> ExactDedupFilter on simplify_text,
             configured with our thresholds where the two have the same rule

Throughput is docs per CPU-second of this process (= docs/s per core), the best of --repeat runs,
so other load on the machine does not skew the ratio. Also printed: how often the two agree on
keep/drop, and for reference our whole clean_corpus (repairs, PII, MinHash included) on one core.
Needs the bench-only extra: pip install datatrove spacy (datatrove's English word splitter is spaCy).

--engine ray (no datatrove needed): the default world (params.yaml's world, --seed) cleaned by
`clean_parquet` with clean.engine local and ray side by side in this process, --repeat rounds in
alternating order; prints each engine's wall time (Ray's start-up and shutdown included), docs/s
per worker, the ratio ray/local (goal <= 1.3x), Ray's fixed cost on its own (start a local
instance, run one task per CPU, shut it down) and whether splits, per-document decisions, stats
and dropped samples are identical.

--scale N (no datatrove needed): the first N and 4N documents of a generated world, each cleaned
by `clean_parquet` (the stage's whole streamed path, ground-truth scoring included) in a fresh
process; prints docs/s and the peak resident memory of the main process and of its workers.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the repo root
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars (datasets, datatrove's dedup) before tqdm loads

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lmpipe.cleaning.dedup import exact_duplicates, exact_key  # noqa: E402
from lmpipe.cleaning.filters import STOP_WORDS, first_failure, quality_signals  # noqa: E402
from lmpipe.cleaning.streaming import clean_corpus, clean_parquet  # noqa: E402
from lmpipe.params import CleanParams  # noqa: E402
from lmpipe.text import dedup_words  # noqa: E402


def load_datatrove():
    """datatrove's pieces, or exit 2 with how to install them (a bench-only extra)."""
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
    logger.disable("datatrove")  # per-step log lines would be timed too
    return SimpleNamespace(
        Document=Document, ExactDedupConfig=ExactDedupConfig, ExactDedupFilter=ExactDedupFilter,
        ExactDedupSignature=ExactDedupSignature, ExactFindDedups=ExactFindDedups, C4QualityFilter=C4QualityFilter,
        GopherQualityFilter=GopherQualityFilter, GopherRepetitionFilter=GopherRepetitionFilter,
        simplify_text=simplify_text,
    )


def load_corpus(n: int, seed: int) -> tuple[list[str], str]:
    try:
        from lmpipe.world import WorldParams, generate_world
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
    keys = np.array([exact_key(dedup_words(t)) if ok else 0 for t, ok in zip(texts, verdicts)], np.uint64)
    copies = exact_duplicates(keys, np.array(verdicts))
    return [ok and copies[i] < 0 for i, ok in enumerate(verdicts)]


def run_datatrove(texts: list[str], p: CleanParams, dt: SimpleNamespace) -> list[bool]:
    def dedup_content(doc) -> bytes:
        return dt.simplify_text(doc.text).encode()  # datatrove's default xxhash64 takes bytes

    docs = [dt.Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    repetition = dt.GopherRepetitionFilter(
        dup_line_frac=p.max_dup_line_share, dup_para_frac=p.max_dup_para_share,
        dup_line_char_frac=p.max_dup_line_char_share, dup_para_char_frac=p.max_dup_para_char_share,
        top_n_grams=((2, p.max_top_2gram_share), (3, p.max_top_3gram_share), (4, p.max_top_4gram_share)),
        dup_n_grams=((10, p.max_dup_10gram_share),),  # we check 10-grams only
    )
    quality = dt.GopherQualityFilter(
        min_doc_words=p.min_words, max_doc_words=p.max_words, min_avg_word_length=p.min_mean_word_len,
        max_avg_word_length=p.max_mean_word_len, max_symbol_word_ratio=p.max_symbol_word_ratio,
        # spaCy makes punctuation marks tokens, which datatrove counts as words without letters:
        # 0.65 of tokens is about our 0.8 of words on English prose
        max_non_alpha_words_ratio=0.65,
        stop_words=sorted(STOP_WORDS), min_stop_words=2,  # our list; datatrove's has only 8 words
    )
    c4 = dt.C4QualityFilter(min_num_sentences=-1)  # we count no sentences
    kept = list(c4.run(quality.run(repetition.run(iter(docs)))))
    config = dt.ExactDedupConfig(content_getter=dedup_content)
    with tempfile.TemporaryDirectory() as tmp:
        dt.ExactDedupSignature(output_folder=f"{tmp}/sigs", config=config).run(iter(kept))
        dt.ExactFindDedups(data_folder=f"{tmp}/sigs", output_folder=f"{tmp}/dups", config=config).run()
        survivors = {doc.id for doc in dt.ExactDedupFilter(data_folder=f"{tmp}/dups", config=config).run(iter(kept))}
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


def arrow_pool():
    """The Arrow allocator clean_parquet streams through: jemalloc where pyarrow has it."""
    import pyarrow as pa

    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:
        return pa.default_memory_pool()


def scale_child(path: str, num_proc: int, batch_rows: int, seed: int) -> None:
    """One clean_parquet run in this fresh process; prints its figures as JSON."""
    import resource

    with tempfile.TemporaryDirectory(dir=Path(path).parent) as out:
        start = time.perf_counter()
        report = clean_parquet(path, Path(out) / "clean", CleanParams(num_proc=num_proc, batch_rows=batch_rows), seed)
        wall = time.perf_counter() - start
    # Peak RSS of this process: VmHWM, since ru_maxrss carries over the parent's peak across exec
    status = Path("/proc/self/status")
    hwm = [line for line in status.read_text().splitlines() if line.startswith("VmHWM")] if status.exists() else []
    print(json.dumps({
        "docs": report.stats["docs_in"], "wall_s": wall, "kept": report.stats["docs_out"],
        "rss_mb": int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,  # the largest worker
        "arrow_peak_mb": arrow_pool().max_memory() / 2**20,
    }))


def scale(n: int, num_proc: int, batch_rows: int, seed: int) -> None:
    from lmpipe.world import WorldParams, generate_world

    corpus = generate_world(WorldParams(docs=min(2_000_000, 4 * n)), seed).corpus
    if len(corpus) < 4 * n:
        sys.exit(f"the world made {len(corpus)} docs, fewer than 4 x {n}")
    rows = []
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parents[1] / "data") as tmp:
        paths = {}
        for size in (n, 4 * n):
            paths[size] = Path(tmp) / f"corpus{size}.parquet"
            corpus.head(size).to_parquet(paths[size], index=False)
        chars = corpus["text"].head(4 * n).str.len().mean()
        del corpus
        for path in paths.values():
            cmd = [sys.executable, __file__, "--child", str(path), "--num-proc", str(num_proc),
                   "--batch-rows", str(batch_rows), "--seed", str(seed)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"world (seed {seed}), {chars:.0f} chars/doc; clean_parquet with num_proc={num_proc}, "
          f"batch_rows={batch_rows}; cores {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f}")
    print(f"{'docs':>9s}{'wall s':>9s}{'docs/s':>9s}{'peak RSS MB':>13s}{'workers MB':>12s}{'arrow MB':>10s}")
    for r in rows:
        print(f"{r['docs']:9d}{r['wall_s']:9.1f}{r['docs'] / r['wall_s']:9.0f}{r['rss_mb']:13.0f}"
              f"{r['workers_rss_mb']:12.0f}{r['arrow_peak_mb']:10.1f}")
    small, big = rows
    grow = (big["rss_mb"] - small["rss_mb"]) * 2**20 / (big["docs"] - small["docs"])
    print(f"peak RSS 4N / N: {big['rss_mb'] / small['rss_mb']:.2f}x; growth {grow:.0f} bytes per added document")


def ray_fixed_cost(num_cpus: int) -> float:
    """Seconds to start a local Ray instance, run one trivial task per CPU and shut it down."""
    from lmpipe.cleaning.ray_session import ray_session

    start = time.perf_counter()
    with ray_session("local", num_cpus, "bench") as ray:
        ray.get([ray.remote(lambda: None).remote() for _ in range(num_cpus)])
    return time.perf_counter() - start


def same_outputs(a: Path, b: Path, reports: dict) -> dict[str, bool]:
    import filecmp

    same = {name: filecmp.cmp(a / name, b / name, shallow=False)
            for name in ("out/train.parquet", "out/validation.parquet", "decisions.parquet")}
    local, ray = reports["local"], reports["ray"]
    same["stats + ground truth"] = local.stats == ray.stats and local.ground_truth == ray.ground_truth
    same["dropped samples"] = all(local.dropped[k].equals(ray.dropped[k]) for k in local.dropped)
    return same


def engine_bench(repeat: int, seed: int, num_proc: int) -> None:
    """clean.engine local vs ray on the default world, side by side (see the module docstring)."""
    from lmpipe.params import load_params
    from lmpipe.world import generate_world

    world = load_params(Path(__file__).resolve().parents[1] / "params.yaml").world
    corpus = generate_world(world, seed).corpus
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        tmp = Path(tmp)
        corpus.to_parquet(tmp / "corpus.parquet", index=False)
        reports = {}
        for r in range(repeat):
            for engine in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
                out = tmp / f"{engine}{r}"
                start = time.perf_counter()
                reports[engine] = clean_parquet(tmp / "corpus.parquet", out / "out",
                                                CleanParams(engine=engine, num_proc=num_proc), seed,
                                                decisions=out / "decisions.parquet")
                walls[engine].append(time.perf_counter() - start)
        same = same_outputs(tmp / "local0", tmp / "ray0", reports)
    fixed = ray_fixed_cost(num_proc)
    n = len(corpus)
    print(f"default world (seed {seed}): {n} docs, {corpus['text'].str.len().mean():.0f} chars/doc; "
          f"{num_proc} workers; cores {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f}; {repeat} rounds")
    print(f"{'engine':8s}{'best s':>8s}{'median s':>10s}{'docs/s':>8s}{'docs/s/worker':>15s}")
    for engine, w in walls.items():
        best = min(w)
        print(f"{engine:8s}{best:8.1f}{float(np.median(w)):10.1f}{n / best:8.0f}{n / best / num_proc:15.0f}")
    ratios = [b / a for a, b in zip(walls["local"], walls["ray"])]
    print(f"ray / local wall time: {min(walls['ray']) / min(walls['local']):.2f}x best-of, "
          f"{float(np.median(ratios)):.2f}x median per round (goal <= 1.3x, start-up included)")
    print("per round: " + " ".join(f"{r:.2f}x" for r in ratios))
    print(f"Ray's fixed cost (start a local instance, {num_proc} trivial tasks, shut down): {fixed:.1f} s")
    print("identical outputs: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()))
    if not all(same.values()):
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--scale", type=int, metavar="N", help="clean N and 4N world docs, compare memory")
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--batch-rows", type=int, default=CleanParams().batch_rows)
    ap.add_argument("--engine", choices=["ray"], help="clean.engine local vs ray on the default world")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        return engine_bench(args.repeat, args.seed, args.num_proc)
    if args.child:
        return scale_child(args.child, args.num_proc, args.batch_rows, args.seed)
    if args.scale:
        return scale(args.scale, args.num_proc, args.batch_rows, args.seed)
    dt = load_datatrove()

    texts, source = load_corpus(args.docs, args.seed)
    p = CleanParams(num_proc=1)
    run_ours(texts[:50], p), run_datatrove(texts[:50], p, dt)  # warm up: imports, spaCy's tokenizer
    ours, ours_cpu, ours_wall = timed(lambda: run_ours(texts, p), args.repeat)
    theirs, dt_cpu, dt_wall = timed(lambda: run_datatrove(texts, p, dt), args.repeat)
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
