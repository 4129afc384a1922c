"""A parameter sweep over DVC experiments, as a Prefect flow.

    python -m pipelines.sweep --grid '{"finetune.replay_weight": [0, 0.5, 1], "finetune.method": ["full", "lora"]}'

1. expands the grid (every combination), validates every point against the params schema (a bad
   key or value fails the sweep before anything is queued);
2. queues one `dvc exp run --queue -S key=value ... -n <prefix>-<i>` per point;
3. runs the queue in the foreground with `dvc exp run --run-all -j <jobs>` (DVC 3.67: each queued
   experiment runs in its own temp dir, so the workspace is untouched), streaming its log;
4. reads `dvc exp show --json`, builds the trade-off table (pipelines/tradeoffs.py), marks the
   Pareto-optimal experiments and publishes table, fronts plot and report path as artifacts.

A point that fails (e.g. its data gate) shows up as `failed` in the table; the sweep fails only
when no point succeeds. On a single GPU keep `jobs=1`: the queue holds the `gpu` concurrency slot
for its whole run, so no other flow's GPU stage shares the device meanwhile.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import math
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipelines.experiments import _env, exp_show, overrides_args, validate_overrides
from pipelines.flow import GPU_LIMIT, InfraError, dvc_bin, gpu_requested, stream
from pipelines.tradeoffs import FRONTS, build_table, to_text, write_report

DEFAULT_GRID = {"finetune.replay_weight": [0, 0.5, 1], "finetune.method": ["full", "lora"]}


def expand(grid: dict[str, list]) -> list[dict]:
    """{"a": [1, 2], "b": ["x"]} -> [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}] (a scalar is one value)."""
    if not grid:
        raise ValueError("empty grid: give at least one key with a list of values")
    keys = list(grid)
    values = [v if isinstance(v, (list, tuple)) else [v] for v in grid.values()]
    if any(len(v) == 0 for v in values):
        raise ValueError(f"grid key(s) without values: {[k for k, v in zip(keys, values) if not v]}")
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def queue_point(point: dict, name: str) -> str:
    cmd = [dvc_bin(), "exp", "run", "--queue", "-n", name, *overrides_args(point)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    if out.returncode:
        raise InfraError(f"{' '.join(cmd)} failed: {out.stderr.strip() or out.stdout.strip()}")
    get_run_logger().info(f"queued {name}: {point}")
    return name


@task(cache_policy=NO_CACHE)
def run_queue(jobs: int, gpu: bool) -> int:
    """`dvc exp run --run-all` (the queue's celery workers, followed in the foreground)."""
    log = get_run_logger()
    cmd = [dvc_bin(), "exp", "run", "--run-all", "-j", str(jobs)]
    if gpu:
        from prefect.concurrency.sync import concurrency

        with concurrency(GPU_LIMIT, occupy=1):
            code, _ = stream(cmd, log)
    else:
        code, _ = stream(cmd, log)
    if code:  # a failed experiment does not fail --run-all; this is the queue itself failing
        raise InfraError(f"dvc exp run --run-all exited with {code}")
    return code


def _jsonable(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


@task(cache_policy=NO_CACHE)
def collect(names: list[str], out_dir: str, title: str) -> list[dict]:
    log = get_run_logger()
    table = build_table(exp_show(), names=names)
    paths = write_report(table, Path(out_dir), title=title)
    log.info("\n" + to_text(table))
    records = [{k: _jsonable(v) for k, v in r.items()} for r in table.to_dict(orient="records")]
    create_table_artifact(records, key="sweep-tradeoffs", description=f"{title}: params, metrics, Pareto flags")
    best = table[table["pareto"].astype(bool)]["experiment"].tolist()
    fronts = [f"- {t}: " + (", ".join(table[table[c].astype(bool)]["experiment"]) or "none") for c, t, _, _ in FRONTS]
    png = base64.b64encode(paths["png"].read_bytes()).decode()
    md = "\n".join([f"# {title}", "", f"Pareto-optimal on all objectives: {', '.join(best) or 'none'}", "",
                    "Per front:", *fronts, "", f"![trade-off fronts](data:image/png;base64,{png})", "",
                    f"Report: `{paths['html'].resolve()}`, table: `{paths['csv'].resolve()}` "
                    "(or `python -m pipelines.tradeoffs`)."])
    create_markdown_artifact(md, key="sweep-pareto", description="trade-off fronts and Pareto-optimal experiments")
    return records


@flow(name="lmpipe-sweep", log_prints=True)
def sweep(grid: dict[str, list] | None = None, prefix: str | None = None, jobs: int = 1,
          out_dir: str = "reports/experiments") -> list[dict]:
    """Queue one DVC experiment per grid point, run the queue, publish the trade-off table."""
    log = get_run_logger()
    points = expand(grid or DEFAULT_GRID)
    points = [validate_overrides(p) for p in points]  # all of them, before queueing any
    prefix = prefix or "sweep-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    names = [f"{prefix}-{i:02d}" for i in range(len(points))]
    log.info(f"{len(points)} grid points: " + "; ".join(f"{n}: {p}" for n, p in zip(names, points)))
    for point, name in zip(points, names):
        queue_point.with_options(task_run_name=f"queue:{name}")(point, name)
    gpu = gpu_requested() or any(str(p.get("pretrain.device")) == "cuda" for p in points)
    run_queue(jobs, gpu)
    records = collect(names, out_dir, f"sweep {prefix}")
    ours = [r for r in records if r["experiment"] in names]
    failed = [r["experiment"] for r in ours if r["status"] != "done"]
    if failed:
        log.warning(f"{len(failed)} of {len(names)} experiments did not finish: {failed} "
                    "(see `dvc queue logs <name>`)")
    if len(failed) == len(names):
        raise RuntimeError(f"every experiment of the sweep failed: {failed}")
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Sweep a grid of params as queued DVC experiments.")
    ap.add_argument("--grid", default=json.dumps(DEFAULT_GRID), help="JSON object: key -> list of values")
    ap.add_argument("--prefix", help="experiment name prefix (default: sweep-<UTC time>)")
    ap.add_argument("--jobs", "-j", type=int, default=1, help="experiments run in parallel (1 per GPU)")
    ap.add_argument("--out", default="reports/experiments")
    args = ap.parse_args(argv)
    from pipelines import sweep as this  # a clean flow entrypoint when run with -m

    state = this.sweep(grid=json.loads(args.grid), prefix=args.prefix, jobs=args.jobs, out_dir=args.out,
                       return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
