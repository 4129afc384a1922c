"""Time generating the default world: `python -m bench.world` (goal: at most 15 s on 2 cores)."""

import time

from lmpipe.params import WorldParams
from lmpipe.world import generate_world


def main() -> None:
    start = time.perf_counter()
    world = generate_world(WorldParams(), seed=0)
    seconds = time.perf_counter() - start
    corpus = world.corpus
    mb = sum(len(t.encode("utf-8")) for t in corpus["text"]) / 1e6
    print(f"generate_world(WorldParams(), seed=0): {seconds:.2f} s")
    print(f"corpus: {len(corpus)} docs, {mb:.2f} MB of UTF-8 text; task: "
          + ", ".join(f"{k}={len(v)}" for k, v in world.task.items())
          + f"; {len(world.shifts)} shifts of {len(world.task['test'])} rows")


if __name__ == "__main__":
    main()
