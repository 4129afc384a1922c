"""The clean stage on Ray (`clean.engine: ray`): the same three passes as lmpipe.cleaning.streaming,
with the work that grows with the corpus spread over a Ray cluster's CPUs and the decisions, and
so the outputs, byte for byte those of the local engine.

- Pass 1: every chunk of `batch_size` documents is a Ray task running `clean_chunk`, the local
  engine's worker function; `RayPool` stands in for its process pool, so batches still stream
  (two in flight) and chunks come back in input order. Ray starts in the background meanwhile
  (lmpipe.cleaning.ray_session.RayStart): the chunks submitted before it is up run in the local
  engine's process pool, so the cores work while Ray starts.
- Pass 2, exact dedup: the alive documents' 8-byte keys are shuffled by key into partitions, one
  task each; a key lives in one partition only, so each finds the first document of its keys.
- Pass 2, near dedup: per LSH band, the driver sorts the band's keys (8 bytes per document) to
  find the buckets of two or more; those rows and their MinHash signatures are shuffled by band
  key into tasks that verify the candidates (`near_duplicates`). A row's first match is the
  lowest row over all bands and partitions, which is how the local engine combines bands too.

The driver reads the input (any path pyarrow reads) and writes every output, as in the local
engine; only the work moves. `engine` starts or joins Ray around the passes
(lmpipe.cleaning.ray_session.starting_ray).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import FIRST_COMPLETED, Future, wait

import numpy as np

from lmpipe.cleaning import ray_session
from lmpipe.cleaning.dedup import exact_duplicates, near_duplicates
from lmpipe.cleaning.per_document import workers
from lmpipe.params import CleanParams


class RayPool:
    """The `submit(fn, *args) -> future` of a concurrent.futures pool, on Ray tasks; an argument
    every task shares (the params) travels to the object store once instead of with every task.

    Until Ray is up (`start`, a lmpipe.cleaning.ray_session.RayStart) the tasks run on this
    machine instead, so Ray's start-up costs only the CPU it takes, not idle cores: in `local`,
    the local engine's process pool, at most `slots` (one per worker) at a time (submit waits for a
    free worker or for Ray, whichever comes first), or on the driver itself when there is no pool
    (one process, or a corpus of one task). The same function on the same arguments: the same
    chunks, whoever ran them."""

    def __init__(self, start, local=None, slots: int = 1):
        self.start, self.local, self.slots, self.remote, self.shared = start, local, slots, {}, {}
        self.in_local: list[Future] = []
        self.before_ray = self.on_ray = 0

    def submit(self, fn, *args):
        while not self.start.ready():
            if self.local is None:
                self.before_ray += 1
                done: Future = Future()
                done.set_result(fn(*args))
                return done
            self.in_local = [f for f in self.in_local if not f.done()]
            if len(self.in_local) < self.slots:
                self.before_ray += 1
                self.in_local.append(self.local.submit(fn, *args))
                return self.in_local[-1]
            wait(self.in_local, timeout=0.05, return_when=FIRST_COMPLETED)  # then look at Ray again
        self.on_ray += 1
        ray = self.start.wait()
        if fn not in self.remote:
            self.remote[fn] = ray.remote(num_cpus=1, max_retries=0)(fn)
        args = [a if isinstance(a, (list, int, type(None))) else self._ref(ray, a) for a in args]
        return self.remote[fn].remote(*args).future()

    def _ref(self, ray, value):
        key = id(value)
        if key not in self.shared:
            self.shared[key] = (value, ray.put(value))  # the value is kept so its id stays unique
        return self.shared[key][1]

    def report(self, label: str) -> None:
        if self.before_ray:
            where = "in local processes" if self.local is not None else "on the driver"
            print(f"[{label}] {self.before_ray} of {self.before_ray + self.on_ray} chunks ran {where} "
                  "while Ray started", flush=True)


@contextlib.contextmanager
def engine(p: CleanParams, docs: int):
    """The ray engine for one clean, as a RayPool: the local engine's process pool for the chunks
    that come before Ray is up (lmpipe.cleaning.per_document.workers: none for one process or a
    small corpus), forked first so that it copies none of the threads Ray starts, then Ray starting
    in the background (ray_session.starting_ray). One task per CPU imports the per-document code
    before Ray counts as up, so the first Ray tasks mostly find it imported."""
    with workers(p, docs) as local:
        if local is not None:
            local.submit(int).result()  # a forked pool starts its processes at the first task
        with ray_session.starting_ray(p.ray_address, p.num_proc, warm="lmpipe.cleaning.per_document") as start:
            yield RayPool(start, local, p.num_proc)


def _exact_part(keys: np.ndarray) -> np.ndarray:
    return exact_duplicates(keys, np.ones(len(keys), bool))


def exact_duplicates_ray(keys: np.ndarray, alive: np.ndarray, parts: int) -> np.ndarray:
    """exact_duplicates with the alive keys shuffled by key into `parts` tasks."""
    import ray

    first_of = np.full(len(keys), -1, np.int64)
    rows = np.flatnonzero(alive)
    part = (keys[rows] % np.uint64(parts)).astype(np.int64)
    task = ray.remote(num_cpus=1, max_retries=0)(_exact_part)
    shards = [rows[part == q] for q in range(parts)]  # each in input order
    results = ray.get([task.remote(keys[r]) for r in shards])
    for r, local in zip(shards, results):
        hit = local >= 0
        first_of[r[hit]] = r[local[hit]]
    return first_of


def _near_part(keys: np.ndarray, signatures: np.ndarray, threshold: float, max_rows: int) -> np.ndarray:
    return near_duplicates([keys], signatures, np.ones(len(keys), bool), threshold, max_rows=max_rows)


def near_duplicates_ray(bands, signatures, alive: np.ndarray, threshold: float, parts: int,
                        max_rows: int) -> np.ndarray:
    """near_duplicates with each band's candidate rows (those sharing a bucket) and their signatures
    shuffled by band key into `parts` tasks; at most `parts` tasks' inputs are in flight."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=0)(_near_part)
    n = len(alive)
    best = np.full(n, n, np.int64)
    alive_rows = np.flatnonzero(alive)
    pending: list = []

    def merge(done: list) -> None:
        for rows, ref in done:
            local = ray.get(ref)
            hit = local >= 0
            np.minimum.at(best, rows[hit], rows[local[hit]])

    for keys in bands:
        k = keys[alive_rows]
        _, inverse, counts = np.unique(k, return_inverse=True, return_counts=True)
        candidates = counts[inverse] > 1
        rows, k = alive_rows[candidates], k[candidates]  # input order
        part = (k % np.uint64(parts)).astype(np.int64)
        for q in range(parts):
            mine = part == q
            if mine.any():
                r = rows[mine]
                pending.append((r, task.remote(k[mine], signatures[r], threshold, max_rows)))
        if len(pending) >= parts:
            merge(pending)
            pending = []
    merge(pending)
    best[best == n] = -1
    return best

