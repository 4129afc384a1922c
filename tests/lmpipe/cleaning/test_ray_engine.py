"""The Ray engine of the clean stage (lmpipe.cleaning.ray_engine) and the Ray session and encoder
(lmpipe.cleaning.ray_session): the distributed exact and near dedup make the local engine's
decisions whatever the number of partitions, a whole clean gives the same files, stats and
samples as the local engine, the Ray encoder (and the tokenize stage's encoding pass on it) the
same shards; bad addresses fail in one line.

One local Ray instance (2 CPUs) serves the module: starting one costs seconds."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pytest
from pydantic import ValidationError

from lmpipe.cleaning.dedup import band_keys, exact_duplicates, lsh_bands, near_duplicates
from lmpipe.cleaning.ray_engine import exact_duplicates_ray, near_duplicates_ray
from lmpipe.cleaning.ray_session import encode_docs_ray, ray_session
from lmpipe.cleaning.streaming import clean_parquet
from lmpipe.io import StageError
from lmpipe.params import CleanParams, TokenizeParams, WorldParams
from lmpipe.tokenizer import encode_docs, shard_dtype, train_tokenizer
from lmpipe.world import generate_world

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_up():
    with ray_session("local", 2) as ray:
        yield ray


def clustered_signatures(n: int, num_perm: int, seed: int) -> np.ndarray:
    """Signatures in families: members of a family share most values, so bands collide often
    and verification has work to do (matches, near misses and chance collisions)."""
    rng = np.random.default_rng(seed)
    bases = rng.integers(0, 2**32, (n // 8 + 1, num_perm), dtype=np.uint32)
    sig = bases[rng.integers(0, len(bases), n)].copy()
    flip = rng.random((n, num_perm)) < rng.choice([0.02, 0.1, 0.3], n)[:, None]
    sig[flip] = rng.integers(0, 2**32, int(flip.sum()), dtype=np.uint32)
    return sig


@pytest.mark.parametrize("parts", [1, 3, 8])
def test_exact_dedup_on_ray_matches_local(ray_up, parts):
    rng = np.random.default_rng(parts)
    keys = rng.integers(0, 50, 2000).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    alive = rng.random(2000) < 0.8
    expected = exact_duplicates(keys, alive)
    assert (expected >= 0).sum() > 100  # the test has duplicates to find
    assert np.array_equal(exact_duplicates_ray(keys, alive, parts), expected)


@pytest.mark.parametrize("parts", [1, 4])
def test_near_dedup_on_ray_matches_local(ray_up, parts):
    sig = clustered_signatures(1500, 64, seed=parts)
    bands = band_keys(sig, *lsh_bands(0.8, 64))
    alive = np.random.default_rng(0).random(len(sig)) < 0.9
    expected = near_duplicates((bands[:, b] for b in range(bands.shape[1])), sig, alive, 0.8, max_rows=64)
    assert (expected >= 0).sum() > 100
    got = near_duplicates_ray((bands[:, b] for b in range(bands.shape[1])), sig, alive, 0.8, parts, max_rows=64)
    assert np.array_equal(got, expected)


def test_clean_on_ray_writes_what_the_local_engine_writes(ray_up, tmp_path):
    corpus = generate_world(WorldParams(docs=600), seed=3).corpus
    corpus.to_parquet(tmp_path / "corpus.parquet", index=False)
    reports = {}
    for engine in ("local", "ray"):
        p = CleanParams(engine=engine, num_proc=2, batch_size=100, batch_rows=300)
        reports[engine] = clean_parquet(tmp_path / "corpus.parquet", tmp_path / engine, p, 3,
                                        decisions=tmp_path / f"{engine}-decisions.parquet")
    local, ray = reports["local"], reports["ray"]
    assert local.stats["drops"]["exact_dup"] > 0 and local.stats["drops"]["near_dup"] > 0
    for name in ("local/train.parquet", "local/validation.parquet", "local-decisions.parquet"):
        assert filecmp.cmp(tmp_path / name, tmp_path / name.replace("local", "ray"), shallow=False), name
    assert ray.stats == local.stats and ray.ground_truth == local.ground_truth
    assert ray.dropped.keys() == local.dropped.keys()
    assert all(ray.dropped[k].equals(local.dropped[k]) for k in local.dropped)


def test_encoding_on_ray_gives_the_local_shard(ray_up):
    texts = generate_world(WorldParams(docs=300), seed=5).corpus["text"].tolist()
    tok = train_tokenizer(texts, TokenizeParams(vocab_size=320))
    expected = encode_docs(tok, texts, 64, "test")
    got = encode_docs_ray(tok, texts, 64, "test", shard_dtype(len(tok)))
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_joined_session_is_left_running(ray_up):
    with ray_session("local", 1) as ray:  # already connected: reused, not restarted or shut down
        assert ray is ray_up
    assert ray_up.is_initialized()


@pytest.mark.parametrize("address", ["", "http://head:8265", "head", "ray://head", "local:1:2"])
def test_bad_ray_address_is_a_param_error(address):
    with pytest.raises(ValidationError, match="ray_address"):
        CleanParams(ray_address=address)
    with pytest.raises(ValidationError, match="ray_address"):
        TokenizeParams(ray_address=address)


@pytest.mark.parametrize("address", ["auto", "127.0.0.1:6379", "ray://head-node.example:10001"])
def test_cluster_addresses_are_accepted(address):
    assert CleanParams(ray_address=address).ray_address == address


@pytest.mark.parametrize("error", [ConnectionError("could not find any running Ray instance"),
                                   RuntimeError("Failed to connect to GCS.\nLast connection error: ...")])
def test_unreachable_cluster_is_a_stage_error(monkeypatch, error):
    import ray

    def refuse(**kwargs):
        raise error

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(StageError, match=r"ray_address '127.0.0.1:1': cannot connect .*\((could|Failed)[^\n]*\)$"):
        with ray_session("127.0.0.1:1", 1):
            pass


def test_tokenize_stage_encodes_on_ray_into_the_local_shards(ray_up):
    from lmpipe.params import parse_params
    from stages.tokenize_corpus import encode_splits

    texts = {s: generate_world(WorldParams(docs=200), seed=k).corpus["text"].tolist()
             for k, s in enumerate(("train", "validation"))}
    tok = train_tokenizer(texts["train"], TokenizeParams(vocab_size=320))
    local = encode_splits(tok, texts, parse_params({"tokenize": {"batch_size": 50}}))
    ray = encode_splits(tok, texts, parse_params({"tokenize": {"batch_size": 50, "engine": "ray"}}))
    assert local.keys() == ray.keys() and all(np.array_equal(local[s], ray[s]) for s in local)


class _Starting:
    """A RayStart stand-in that comes up after `after` calls to ready()."""

    def __init__(self, after: int, ray):
        self.calls, self.after, self.ray = 0, after, ray

    def ready(self) -> bool:
        self.calls += 1
        return self.calls > self.after

    def wait(self):
        return self.ray


def test_pool_runs_tasks_on_the_driver_until_ray_is_up(ray_up):
    from lmpipe.cleaning.ray_engine import RayPool

    pool = RayPool(_Starting(after=2, ray=ray_up))
    futures = [pool.submit(json.dumps, [k]) for k in range(5)]  # a function Ray's workers can import
    assert [f.result() for f in futures] == [f"[{k}]" for k in range(5)]  # in order, whoever ran them
    assert (pool.before_ray, pool.on_ray) == (2, 3)


def test_pool_runs_tasks_in_local_processes_until_ray_is_up_one_per_worker(ray_up):
    import multiprocessing
    import time
    from concurrent.futures import ProcessPoolExecutor

    from lmpipe.cleaning.ray_engine import RayPool

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as local:
        start = _Starting(after=10**9, ray=ray_up)  # not up until the test says so
        pool = RayPool(start, local, slots=2)
        slow = [pool.submit(time.sleep, 0.3) for _ in range(2)]
        assert pool.in_local == slow and not any(f.done() for f in slow)  # both workers busy
        third = pool.submit(json.dumps, [3])  # waited for a free worker
        assert any(f.done() for f in slow) and pool.before_ray == 3
        start.after = 0  # Ray is up: the rest goes to it
        rest = [pool.submit(json.dumps, [k]) for k in range(4, 6)]
        assert [f.result() for f in [third, *rest]] == ["[3]", "[4]", "[5]"]
        assert (pool.before_ray, pool.on_ray) == (3, 2)


def test_local_instance_starts_no_unused_head_process(ray_up):
    import psutil
    from ray._private.node import Node

    from lmpipe.cleaning.ray_session import _UNUSED_HEAD_PROCESSES, _not_started

    # the patch lasts for ray.init only: a later ray.init in this process starts a full head
    assert all(Node.__dict__[name] is not _not_started for name in _UNUSED_HEAD_PROCESSES)
    started = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]
    assert any("raylet" in c for c in started)  # the instance is there, and it is this process's
    for script in ("autoscaler/_private/monitor.py", "_private/log_monitor.py", "dashboard/dashboard.py"):
        assert not any(script in c for c in started), script


def test_a_start_that_fails_fails_the_pool_at_the_next_task(monkeypatch):
    import ray

    from lmpipe.cleaning.ray_engine import RayPool
    from lmpipe.cleaning.ray_session import RayStart

    def refuse(**kwargs):
        raise ConnectionError("could not find any running Ray instance")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    start = RayStart("127.0.0.1:1", 1)
    with pytest.raises(StageError, match="cannot connect"):
        start.wait()  # the background start has failed
    with pytest.raises(StageError, match="cannot connect"):
        RayPool(start).submit(json.dumps, [2])
    start.close()
