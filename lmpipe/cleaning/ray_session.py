"""Ray for the data stages: `RayStart` starts a Ray instance for a stage (`ray_address: local`,
`num_cpus` CPUs on this machine) or joins a cluster (`auto`, `host:port`, `ray://host:port`) in a
background thread, with neither usage stats nor dashboard, so nothing reaches the network;
`starting_ray` gives the stage a RayStart to use as soon as it is up (the clean stage works on
the driver meanwhile), `ray_session` waits for it. Workers on this machine import lmpipe from
this checkout; on a cluster the driver ships its lmpipe package to them (runtime_env
py_modules), so every node only needs the locked dependencies installed.

Also the tokenize stage's encoding pass on Ray (`tokenize.engine: ray`, `encode_docs_ray`):
chunks of documents encoded by Ray tasks with the tokenizer as saved, concatenated in order.
Kept apart from the clean engine (lmpipe.cleaning.ray_engine) so tokenize depends on this alone.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lmpipe.io import StageError

_PACKAGE = Path(__file__).resolve().parents[1]  # lmpipe/, shipped to cluster workers


class RayStart:
    """Ray being started (a local instance with `num_cpus` CPUs) or joined (a cluster at
    `address`) in a background thread, so that a stage does useful work while it comes up: on a
    local instance `ray.init` is ~2.5 s of waiting for processes, and a cluster connection first
    ships lmpipe to it. Already connected (a caller's own ray.init): used as it is, and left running.

    `warm`: a module that one task per cluster CPU imports before Ray counts as ready, so the
    first real tasks mostly find it imported. `ready()` does not block; `wait()` does; both raise
    the start's error (StageError) if there was one. `close()` shuts down what this object
    started (`stop_soon()` begins that in the background)."""

    def __init__(self, address: str, num_cpus: int, label: str = "clean", warm: str | None = None):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network, no telemetry
        self.address, self.num_cpus, self.label, self.warm = address, num_cpus, label, warm
        self.started = time.perf_counter()
        self._thread = self._up = self._stopping = None  # _up None: joined a caller's Ray, nothing to start or stop
        ray = sys.modules.get("ray")  # not imported: not connected either, and the import (~0.5 s) is the start's
        if ray is None or not ray.is_initialized():
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="ray-start")
            self._up = self._thread.submit(self._start)

    def ready(self) -> bool:
        if self._up is None:
            return True
        if not self._up.done():
            return False
        self._up.result()  # raises the start's error
        return True

    def wait(self):
        import ray

        if self._up is not None:
            self._up.result()
        return ray

    def stop_soon(self) -> None:
        """Shut down what this object started in the background, from now on: for a caller with
        more work that needs no Ray (the clean stage's pass 3). close() waits for it."""
        if self._up is not None and self._stopping is None:
            # From the thread that called ray.init: from another one, ray.shutdown takes 5 s longer.
            self._stopping = self._thread.submit(self._stop)  # after the start, whichever way it ends

    def close(self) -> None:
        if self._up is None:
            return
        self.stop_soon()
        self._stopping.result()
        self._thread.shutdown()

    def _stop(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()

    def _start(self) -> None:
        import ray

        options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        # ray.init from this thread leaves the process's SIGTERM handler alone, and says so.
        logging.getLogger("ray._private.worker").addFilter(_NOT_MAIN_THREAD_WARNING)  # once: same object
        try:
            if self.address == "local":
                # Workers on this machine import lmpipe from this checkout through the environment
                # they inherit from the raylet: a runtime_env would cost ~1.5 s more to set up. They
                # do the stage's work, so they run at the stage's priority, not Ray's default nice 15.
                with _environ(PYTHONPATH=str(_PACKAGE.parent), RAY_worker_niceness="0"), _lean_head():
                    ray.init(num_cpus=self.num_cpus, **options)
            else:  # workers on other machines get this lmpipe package from the driver
                options.pop("include_dashboard")
                ray.init(address=self.address, runtime_env={"py_modules": [str(_PACKAGE)]}, **options)
        except (ConnectionError, RuntimeError) as err:  # no cluster there, or it refused this driver (auth token)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise StageError(f"ray_address {self.address!r}: cannot connect to a Ray cluster ({first})") from None
        if self.warm:
            task = ray.remote(num_cpus=1, max_retries=0)(_import)
            ray.get([task.remote(self.warm) for _ in range(cluster_cpus())])
        where = "a local instance" if self.address == "local" else self.address
        print(f"[{self.label}] ray engine: {where}, {len(ray.nodes())} node(s), {cluster_cpus()} CPUs, "
              f"up in {time.perf_counter() - self.started:.1f}s", flush=True)


@contextlib.contextmanager
def starting_ray(address: str, num_cpus: int, label: str = "clean", warm: str | None = None):
    """A RayStart for the duration of the block, not waited for: see RayStart."""
    start = RayStart(address, num_cpus, label, warm)
    try:
        yield start
    finally:
        start.close()


@contextlib.contextmanager
def ray_session(address: str, num_cpus: int, label: str = "clean"):
    """Ray, up, for the duration of the block (the `ray` module): a local instance with `num_cpus`
    CPUs, or a connection to the cluster at `address`; see RayStart."""
    with starting_ray(address, num_cpus, label) as start:
        yield start.wait()


# The head processes a local instance for one stage has no use for: the API server (with
# include_dashboard=False it serves only usage stats, which are off), the autoscaler monitor (one
# node: nothing to scale) and the log monitor (log_to_driver=False: nobody follows the workers'
# logs live; they stay in the session's log directory). On 2 cores they cost ~2.4 CPU-s, while
# the stage works, and ~1.3 s of ray.init (bench/clean.py --engine ray).
_UNUSED_HEAD_PROCESSES = ("start_api_server", "start_monitor", "start_log_monitor")


@contextlib.contextmanager
def _lean_head():
    """ray.init, for the block, starting a local instance without _UNUSED_HEAD_PROCESSES. These
    are methods of Ray's private Node class (ray is pinned in the lock); a Ray that renames them
    starts them as before, and test_local_instance_starts_no_unused_head_process says so."""
    from ray._private.node import Node

    saved = {name: Node.__dict__[name] for name in _UNUSED_HEAD_PROCESSES if name in Node.__dict__}
    for name in saved:
        setattr(Node, name, _not_started)
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(Node, name, method)


def _not_started(self, *args, **kwargs) -> None:
    return None


def _import(module: str) -> None:
    importlib.import_module(module)


class _NotMainThreadWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


_NOT_MAIN_THREAD_WARNING = _NotMainThreadWarning()


@contextlib.contextmanager
def _environ(PYTHONPATH: str, **values: str):
    """os.environ with PYTHONPATH prepended and `values` set, for the block (Ray's processes copy it)."""
    before = dict(os.environ)
    os.environ.update(values, PYTHONPATH=os.pathsep.join(filter(None, [PYTHONPATH, before.get("PYTHONPATH")])))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _encode_part(tokenizer_json: str, texts: list[str], eos: int, dtype) -> np.ndarray:
    from tokenizers import Tokenizer

    ids: list[int] = []
    for enc in Tokenizer.from_str(tokenizer_json).encode_batch_fast(texts, add_special_tokens=False):
        ids += enc.ids
        ids.append(eos)
    return np.array(ids, dtype=dtype)


def encode_docs_ray(tokenizer, texts: list[str], batch_size: int, label: str, dtype) -> np.ndarray:
    """lmpipe.tokenizer.encode_docs on Ray: one task per `batch_size` documents (the tokenizer
    itself, as JSON, goes to the object store once), the same shard by construction; `dtype` is
    the shard's (lmpipe.tokenizer.shard_dtype)."""
    import ray

    from lmpipe.runtime import Progress

    task = ray.remote(num_cpus=1, max_retries=0)(_encode_part)
    spec = ray.put(tokenizer.backend_tokenizer.to_str())
    refs = [task.remote(spec, texts[s : s + batch_size], tokenizer.eos_token_id, dtype)
            for s in range(0, len(texts), batch_size)]
    chunks, progress = [], Progress(f"tokenize {label}", len(texts))
    for k, ref in enumerate(refs):
        chunks.append(ray.get(ref))
        progress.update(min((k + 1) * batch_size, len(texts)))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
