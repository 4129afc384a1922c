"""lmpipe.cleaning.streaming (and its parquet_io, per_document, splits): the result's shape,
the split, determinism, bad input; clean_parquet streams the corpus in batches, and neither the
batching nor the worker count changes a byte of its output; duplicates are found across batches;
memory grows far slower than the corpus; bad input fails before anything is written."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cleaning_samples import PROSE, corpus_of, edit_words, mixed_corpus

from lmpipe.cleaning.filters import FILTER_ORDER
from lmpipe.cleaning.splits import validation_mask
from lmpipe.cleaning.streaming import clean_corpus, clean_parquet
from lmpipe.io import StageError
from lmpipe.params import CleanParams, WorldParams
from lmpipe.world import generate_world

ROOT = Path(__file__).resolve().parents[3]
P = CleanParams(num_proc=1)


@pytest.fixture(scope="module")
def world() -> pd.DataFrame:
    """~2,400 generated documents with every kind of noise, near-duplicates included."""
    # the safety stages' lore at the old sizes: the default's lore and its extra encoded renderings
    # dilute the added duplicates so much that the first 500 rows this file cleans hold none
    return generate_world(WorldParams(docs=2000, encoded_share=0.03, secret_share=0.25, chat_share=0.0,
                                      lore_encoded_share=0.0), seed=5).corpus.reset_index(drop=True)


def test_result_shape_stats_and_samples():
    docs = mixed_corpus(120)
    result = clean_corpus(docs, P.model_copy(update={"dropped_sample": 3}), seed=0)
    s = result.stats
    assert list(s["drops"]) == FILTER_ORDER
    assert s["docs_in"] == 120
    assert s["docs_out"] == len(result.train) + len(result.validation) == 120 - sum(s["drops"].values())
    assert s["chars_out"] == result.train["text"].str.len().sum() + result.validation["text"].str.len().sum()
    assert s["drops"]["length"] > 0 and s["pii"]["email"] > 0 and s["repairs"]["html"] > 0
    assert list(result.train.columns) == list(docs.columns)
    assert set(result.dropped) == set(FILTER_ORDER)
    assert len(result.dropped["length"]) == 3
    assert list(result.dropped["length"].columns) == ["id", "text", "detail"]


def test_split_depends_on_id_only():
    ids = pd.Series([f"doc{i}" for i in range(20_000)])
    mask = validation_mask(ids, 0.05, seed=1)
    assert 0.04 < mask.mean() < 0.06
    assert validation_mask(ids[::3], 0.05, seed=1).equals(mask[::3])  # neighbours do not matter
    assert not validation_mask(ids, 0.05, seed=2).equals(mask)  # the seed does


def test_output_is_deterministic_and_independent_of_parallelism():
    docs = mixed_corpus(400)
    one = clean_corpus(docs, P.model_copy(update={"batch_size": 64}), seed=3)
    two = clean_corpus(docs, P.model_copy(update={"num_proc": 2, "batch_size": 64}), seed=3)
    again = clean_corpus(docs, P.model_copy(update={"num_proc": 2, "batch_size": 64}), seed=3)
    for other in (two, again):
        pd.testing.assert_frame_equal(one.train, other.train)
        pd.testing.assert_frame_equal(one.validation, other.validation)
        pd.testing.assert_frame_equal(one.decisions, other.decisions)
        assert one.stats == other.stats


@pytest.mark.parametrize("docs, message", [
    (corpus_of(PROSE).drop(columns="domain"), "lacks column"),
    (corpus_of([]), "no documents"),
    (corpus_of(PROSE).assign(text=[PROSE[0], None, PROSE[1], PROSE[2]]), "non-string text"),
    (corpus_of(PROSE).assign(id="same"), "duplicate document id"),
])
def test_bad_input_gets_a_clear_error(docs, message):
    with pytest.raises(StageError, match=message):
        clean_corpus(docs, P, seed=0)


def _run(src: Path, out: Path, p: CleanParams, seed: int = 3):
    report = clean_parquet(src, out / "clean", p, seed, decisions=out / "decisions.parquet")
    files = {name: (out / "clean" / name).read_bytes() for name in ("train.parquet", "validation.parquet")}
    return report, files, (out / "decisions.parquet").read_bytes()


def test_batching_and_workers_do_not_change_a_byte(tmp_path, world):
    src = tmp_path / "corpus.parquet"
    world.head(500).to_parquet(src, index=False)
    base = P.model_copy(update={"row_group_rows": 64})  # several row groups, cut by row count
    runs = {
        "one batch": base.model_copy(update={"batch_rows": 10_000}),
        "1 doc per batch": base.model_copy(update={"batch_rows": 1}),
        "7 per batch": base.model_copy(update={"batch_rows": 7, "batch_size": 3}),
        "2 workers": base.model_copy(update={"batch_rows": 50, "batch_size": 16, "num_proc": 2}),
    }
    results = {name: _run(src, tmp_path / name.replace(" ", "_"), p) for name, p in runs.items()}
    (ref, ref_files, ref_decisions), *others = results.values()
    assert ref.stats["drops"]["near_dup"] > 0 and ref.stats["drops"]["exact_dup"] > 0
    assert pq.ParquetFile(tmp_path / "one_batch/clean/train.parquet").metadata.num_row_groups == -(
        -ref.stats["train_docs"] // 64)
    for name, (report, files, decisions) in zip(list(results)[1:], others):
        assert files == ref_files, name
        assert decisions == ref_decisions, name
        assert report.stats == ref.stats, name
        assert report.ground_truth == ref.ground_truth, name
        for key, df in ref.dropped.items():
            pd.testing.assert_frame_equal(report.dropped[key], df, obj=f"{name}: dropped {key}")


def test_duplicates_are_found_across_batches_and_workers(tmp_path):
    edited = edit_words(PROSE[0], 0.05, random.Random(0))
    twice = edit_words(edited, 0.03, random.Random(1))  # an edited copy of the edited copy
    copy = PROSE[2].upper().replace(",", "")  # exact duplicate up to case and punctuation
    docs = corpus_of([PROSE[0], PROSE[1], PROSE[2], edited, PROSE[3], copy, twice])
    expected = ["", "", "", "near_dup", "", "exact_dup", "near_dup"]
    for p in (P.model_copy(update={"batch_rows": 1}),
              P.model_copy(update={"batch_rows": 2, "batch_size": 1, "num_proc": 2})):
        d = clean_corpus(docs, p, seed=0).decisions
        assert d["dropped_by"].tolist() == expected
        assert d["duplicate_of"].tolist() == [-1, -1, -1, 0, -1, 2, 0]  # the cluster's first document
        assert d.at[5, "detail"] == "duplicate of d0002"
        assert d.at[3, "detail"].startswith("near-duplicate of d0000 (jaccard~")


def test_bad_input_fails_before_writing_anything(tmp_path):
    out = tmp_path / "data" / "clean"
    out.parent.mkdir()
    cases = {
        "missing.parquet": "missing input",
        "corrupt.parquet": "cannot read",
        "dup_ids.parquet": r"1 duplicate document id\(s\), e.g. \['d0001'\]",
        "null_text.parquet": "1 document\\(s\\) have non-string text, e.g. ids \\['d0003'\\]",
        "no_domain.parquet": "lacks column",
    }
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 truncated garbage")
    docs = corpus_of(PROSE * 2)
    docs.assign(id=[f"d{i:04d}" for i in (0, 1, 2, 3, 4, 5, 6, 1)]).to_parquet(tmp_path / "dup_ids.parquet")
    docs.assign(text=[t if i != 3 else None for i, t in enumerate(docs["text"])]).to_parquet(
        tmp_path / "null_text.parquet")
    docs.drop(columns="domain").to_parquet(tmp_path / "no_domain.parquet")
    for name, message in cases.items():
        with pytest.raises(StageError, match=message):
            clean_parquet(tmp_path / name, out, P.model_copy(update={"batch_rows": 3}), seed=0)
    assert not out.exists()
    assert os.listdir(tmp_path / "data") == []  # no temporary or work directory left behind


def test_outputs_are_written_together_and_work_files_removed(tmp_path):
    src = tmp_path / "corpus.parquet"
    corpus_of(PROSE + [PROSE[0]]).to_parquet(src)
    out = tmp_path / "data" / "clean"
    out.mkdir(parents=True)
    (out / "stale.parquet").write_bytes(b"from an older run")
    report = clean_parquet(src, out, P.model_copy(update={"batch_rows": 2}), seed=0)
    assert sorted(os.listdir(out)) == ["train.parquet", "validation.parquet"]
    assert os.listdir(tmp_path / "data") == ["clean"]
    kept = pd.concat([pd.read_parquet(out / "train.parquet"), pd.read_parquet(out / "validation.parquet")])
    assert len(kept) == report.stats["docs_out"] == 4


MEASURE = textwrap.dedent("""
    import sys, tracemalloc
    import pyarrow as pa
    from lmpipe.cleaning import parquet_io
    from lmpipe.cleaning.streaming import clean_parquet
    from lmpipe.params import CleanParams

    warm, src, out, batch_rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    parquet_io.READ_BUFFER = 1 << 14  # a fixed cost that would dwarf these small corpora
    p = CleanParams(num_proc=1, batch_rows=batch_rows, row_group_rows=batch_rows)
    clean_parquet(warm, out + "-warm", p, seed=1)  # lazy imports, regex and ftfy caches
    tracemalloc.start()
    clean_parquet(src, out, p, seed=1)
    pools = {pa.default_memory_pool().backend_name: pa.default_memory_pool()}
    try:  # clean_parquet streams through jemalloc where pyarrow has it
        pools["jemalloc"] = pa.jemalloc_memory_pool()
    except NotImplementedError:
        pass
    print(tracemalloc.get_traced_memory()[1] + sum(pool.max_memory() for pool in pools.values()))
""")


def test_peak_memory_grows_far_slower_than_the_corpus(tmp_path, world):
    """Peak memory (Python objects and numpy arrays via tracemalloc, plus Arrow's allocations) of
    cleaning N and 4N documents in fresh processes. Streamed in batches of 50 it grows by the
    dedup state only; the same code given one batch for the whole corpus grows many times faster
    per document, which shows the measurement can tell the two apart."""
    small = world.head(600)
    # 4N = four copies of the N documents (the later ones edited, so near-dedup has work): the
    # same longest document, so the same per-batch peak, and only the corpus size differs
    big = pd.concat([small] + [small.assign(id=small["id"] + f"-{k}", text=small["text"] + f" Copy {k}.")
                               for k in (1, 2, 3)], ignore_index=True)
    paths = {name: tmp_path / f"{name}.parquet" for name in ("warm", "n", "4n")}
    for name, docs in (("warm", world.tail(40)), ("n", small), ("4n", big)):
        # small pages and dictionaries: parquet's defaults (1 MiB each, held while a column chunk is
        # read) are fixed costs that would hide these small corpora's growth
        pq.write_table(pa.Table.from_pandas(docs, preserve_index=False), paths[name], data_page_size=8192,
                       dictionary_pagesize_limit=8192)
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = {(size, batch): subprocess.Popen(
        [sys.executable, str(script), str(paths["warm"]), str(paths[size]), str(tmp_path / f"out-{size}-{batch}"),
         str(batch)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for size in ("n", "4n") for batch in (50, 100_000)}
    peak = {}
    for key, proc in runs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        peak[key] = int(out.strip().splitlines()[-1])
    assert peak["4n", 50] < 1.5 * peak["n", 50], peak
    # bytes per added document, streamed and with the corpus in one batch
    streamed, whole = ((peak["4n", b] - peak["n", b]) / (len(big) - len(small)) for b in (50, 100_000))
    assert streamed < whole / 5, (streamed, whole, peak)
