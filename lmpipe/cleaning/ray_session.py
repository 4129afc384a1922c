"""Ray for the data stages: `ray_session` starts a Ray instance for a stage (`ray_address:
local`, `num_cpus` CPUs on this machine) or joins a cluster (`auto`, `host:port`,
`ray://host:port`), with neither usage stats nor dashboard, so nothing reaches the network.
Workers on this machine import lmpipe from this checkout; on a cluster the driver ships its
lmpipe package to them (runtime_env py_modules), so every node only needs the locked
dependencies installed.

Also the tokenize stage's encoding pass on Ray (`tokenize.engine: ray`, `encode_docs_ray`):
chunks of documents encoded by Ray tasks with the tokenizer as saved, concatenated in order.
Kept apart from the clean engine (lmpipe.cleaning.ray_engine) so tokenize depends on this alone.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from lmpipe.io import StageError

_PACKAGE = Path(__file__).resolve().parents[1]  # lmpipe/, shipped to cluster workers


@contextlib.contextmanager
def ray_session(address: str, num_cpus: int, label: str = "clean"):
    """Ray for the duration of the block: a local instance with `num_cpus` CPUs, or a connection
    to the cluster at `address`. Already connected (a caller's own ray.init): used as it is."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network, no telemetry
    import ray

    if ray.is_initialized():
        yield ray
        return
    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address == "local":
            # Workers on this machine import lmpipe from this checkout through the environment
            # they inherit from the raylet: a runtime_env would cost ~1.5 s more to set up. They
            # do the stage's work, so they run at the stage's priority, not Ray's default nice 15.
            with _environ(PYTHONPATH=str(_PACKAGE.parent), RAY_worker_niceness="0"):
                ray.init(num_cpus=num_cpus, **options)
        else:  # workers on other machines get this lmpipe package from the driver
            options.pop("include_dashboard")
            ray.init(address=address, runtime_env={"py_modules": [str(_PACKAGE)]}, **options)
    except (ConnectionError, RuntimeError) as err:  # no cluster there, or it refused this driver (auth token)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StageError(f"ray_address {address!r}: cannot connect to a Ray cluster ({first})") from None
    print(f"[{label}] ray engine: {'a local instance' if address == 'local' else address}, "
          f"{len(ray.nodes())} node(s), {cluster_cpus()} CPUs", flush=True)
    try:
        yield ray
    finally:
        ray.shutdown()


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
