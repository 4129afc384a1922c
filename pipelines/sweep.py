"""A parameter sweep over DVC experiments, as a Prefect flow.

    python -m pipelines.sweep --grid '{"finetune.replay_weight": [0, 0.5, 1], "finetune.method": ["full", "lora"]}'
    python -m pipelines.sweep --prefix sweep-20250101-020000 --grid '...'   # resume that sweep

1. expands the grid (every combination) and validates every point against the params schema: a
   bad key or value fails the sweep, with one line, before anything runs;
2. names the points <prefix>-00, -01, ...; a point whose experiment already finished with the same
   params (an earlier run of this sweep) is kept, so rerunning a sweep resumes it;
3. runs every other point as `dvc exp run --temp -S key=value ... -n <name>` (in a temporary copy
   of the workspace, which stays untouched), `jobs` at a time, each under a time limit that stops
   its whole process tree (default: sized to the config, see experiments.default_time_limit_s);
   each run's output goes to the Prefect log and to reports/experiments/logs/<name>.log;
4. builds the trade-off table (pipelines/tradeoffs.py) with every finished model's latency
   re-measured side by side, lists the failed experiments with their reason, and publishes the
   table, the fronts plot and the report path as artifacts;
5. records each experiment's outcome in reports/experiments/sweeps/<prefix>.json and fails (the
   command exits 1) when any experiment failed or hit its time limit, naming each with its reason.

On a single GPU keep `jobs=1`: each experiment holds the `gpu` concurrency slot while it runs,
so no other flow's GPU stage shares the device meanwhile.
"""

from __future__ import annotations

import argparse
import base64
import contextvars
import itertools
import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from lmpipe import paths
from pipelines.experiments import (
    Outcome,
    default_time_limit_s,
    exp_show,
    parse_value,
    run_experiment,
    validate_overrides,
)
from pipelines.gpu import gpu_requested, gpu_slot
from pipelines.tradeoffs import FAILED, FRONTS, rows_from_exp_show, to_text, tradeoff_table, write_report

DEFAULT_GRID = {"finetune.replay_weight": [0, 0.5, 1], "finetune.method": ["full", "lora"]}


class SweepFailed(RuntimeError):
    """Some experiments of the sweep failed or were stopped; the message names each with its reason."""


def expand(grid: dict[str, list]) -> list[dict]:
    """{"a": [1, 2], "b": ["x"]} -> [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}] (a scalar is one value)."""
    if not isinstance(grid, dict) or not grid:
        raise ValueError("empty grid: give a JSON object with at least one key and a list of values")
    keys = list(grid)
    values = [v if isinstance(v, (list, tuple)) else [v] for v in grid.values()]
    if any(len(v) == 0 for v in values):
        raise ValueError(f"grid key(s) without values: {[k for k, v in zip(keys, values) if not v]}")
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _equal(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b))
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def plan(names: list[str], points: list[dict], rows: list[dict]) -> tuple[list[Outcome], list[tuple[str, dict]]]:
    """(experiments kept from an earlier run of this sweep, (name, point) pairs still to run).
    A finished experiment of the same name with other params is an error: renaming is the user's call."""
    finished = {r["experiment"]: r for r in rows if r["kind"] == "experiment" and r["status"] == "done"}
    kept, todo = [], []
    for name, point in zip(names, points):
        row = finished.get(name)
        if row is None:
            todo.append((name, point))
        elif all(_equal(parse_value(v), row["params"].get(k)) for k, v in point.items()):
            kept.append(Outcome(name, point, "kept", "finished in an earlier run of this sweep"))
        else:
            raise ValueError(f"experiment '{name}' already exists with other params: use another --prefix, "
                             f"or remove it first (dvc exp remove {name})")
    return kept, todo


@task(cache_policy=NO_CACHE)
def run_point(name: str, point: dict, time_limit_s: float, log_dir: str, gpu: bool) -> dict:
    """One experiment, to the end or to its time limit; a failure is an outcome, not an exception."""
    log = get_run_logger()
    with gpu_slot(gpu, log):
        outcome = run_experiment(name, point, time_limit_s, log, Path(log_dir))
    if outcome.status in FAILED:
        log.error(f"experiment {name} {outcome.status}: {outcome.reason} (log: {outcome.log})")
    return outcome.to_dict()


def run_points(todo: list[tuple[str, dict]], time_limit_s: float, log_dir: Path, gpu: bool, jobs: int) -> list[dict]:
    """Every point through `run_point`, `jobs` at a time (each in its own thread and task run)."""
    calls = [(run_point.with_options(task_run_name=f"exp:{name}"), (name, point, time_limit_s, str(log_dir), gpu))
             for name, point in todo]
    if jobs <= 1 or len(calls) <= 1:
        return [call(*args) for call, args in calls]
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="sweep") as pool:
        # each thread runs its task in a copy of this flow run's context, so the task belongs to it
        futures = [pool.submit(contextvars.copy_context().run, call, *args) for call, args in calls]
        return [f.result() for f in futures]


def _jsonable(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _pareto_markdown(table, title: str, paths_: dict, failures: list[dict]) -> str:
    best = table[table["pareto"].astype(bool)]["experiment"].tolist()
    fronts = [f"- {t}: " + (", ".join(table[table[c].astype(bool)]["experiment"]) or "none") for c, t, _, _ in FRONTS]
    failed = [f"- **{f['name']}** {f['status']}: {f['reason']} (log: `{f['log']}`)" for f in failures]
    png = base64.b64encode(paths_["png"].read_bytes()).decode()
    return "\n".join([f"# {title}", "", *([f"**{len(failed)} experiment(s) failed:**", *failed, ""] if failed else []),
                      f"Pareto-optimal on all objectives: {', '.join(best) or 'none'}", "", "Per front:", *fronts, "",
                      f"![trade-off fronts](data:image/png;base64,{png})", "",
                      f"Report: `{paths_['html'].resolve()}`, table: `{paths_['csv'].resolve()}` "
                      "(or `python -m pipelines.tradeoffs`)."])


@task(cache_policy=NO_CACHE)
def collect(names: list[str], outcomes: list[dict], out_dir: str, title: str, measure: bool) -> list[dict]:
    """The trade-off table and report of the sweep's experiments, and their artifacts."""
    log = get_run_logger()
    failures = [o for o in outcomes if o["status"] in FAILED]
    table = tradeoff_table(exp_show(), names=names, failures=failures, measure=measure, log=log.info)
    paths_ = write_report(table, Path(out_dir), title=title)
    log.info("\n" + to_text(table))
    records = [{k: _jsonable(v) for k, v in r.items()} for r in table.to_dict(orient="records")]
    create_table_artifact(records, key="sweep-tradeoffs", description=f"{title}: params, metrics, Pareto flags")
    create_markdown_artifact(_pareto_markdown(table, title, paths_, failures), key="sweep-pareto",
                             description="trade-off fronts, Pareto-optimal and failed experiments")
    return records


def record_path(out_dir: Path, prefix: str) -> Path:
    return Path(out_dir) / "sweeps" / f"{prefix}.json"


def write_record(out_dir: Path, prefix: str, grid: dict, time_limit_s: float, outcomes: list[dict]) -> Path:
    path = record_path(out_dir, prefix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"prefix": prefix, "grid": grid, "time_limit_s": time_limit_s, "outcomes": outcomes},
                               indent=2, default=str) + "\n", encoding="utf-8")
    return path


@flow(name="lmpipe-sweep", log_prints=True)
def sweep(grid: dict[str, list] | None = None, prefix: str | None = None, jobs: int = 1,
          out_dir: str = str(paths.EXPERIMENTS_REPORT), time_limit_s: float | None = None,
          measure: bool = True) -> list[dict]:
    """Run one DVC experiment per grid point (resuming a sweep of the same prefix), publish the
    trade-off table; fail naming every experiment that failed or hit its time limit."""
    log = get_run_logger()
    grid = grid or DEFAULT_GRID
    points = [validate_overrides(p) for p in expand(grid)]  # all of them, before running any
    prefix = prefix or "sweep-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    names = [f"{prefix}-{i:02d}" for i in range(len(points))]
    kept, todo = plan(names, points, rows_from_exp_show(exp_show()))
    limit = time_limit_s or default_time_limit_s()
    log.info(f"{len(points)} grid points, {len(kept)} kept from an earlier run, time limit {limit:g} s each: "
             + "; ".join(f"{n}: {p}" for n, p in zip(names, points)))
    gpu = gpu_requested() or any(str(p.get("pretrain.device")) == "cuda" for p in points)
    ran = run_points(todo, limit, Path(out_dir) / "logs", gpu, jobs)
    outcomes = sorted([k.to_dict() for k in kept] + ran, key=lambda o: names.index(o["name"]))
    write_record(Path(out_dir), prefix, grid, limit, outcomes)
    records = collect(names, outcomes, out_dir, f"sweep {prefix}", measure)
    bad = [o for o in outcomes if o["status"] in FAILED]
    if bad:
        raise SweepFailed(f"{len(bad)} of {len(names)} experiments of sweep {prefix} did not finish: "
                          + "; ".join(f"{o['name']} {o['status']}: {o['reason']}" for o in bad))
    return records


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Sweep a grid of params as DVC experiments.")
    ap.add_argument("--grid", default=json.dumps(DEFAULT_GRID), help="JSON object: key -> list of values")
    ap.add_argument("--prefix", help="experiment name prefix (default: sweep-<UTC time>); the same prefix resumes")
    ap.add_argument("--jobs", "-j", type=int, default=1, help="experiments run at the same time (1 per GPU)")
    ap.add_argument("--time-limit", type=float, metavar="SECONDS",
                    help="per experiment (default: sized to the config from the workspace's metrics)")
    ap.add_argument("--no-measure", action="store_true", help="do not re-measure latency side by side")
    ap.add_argument("--out", default=str(paths.EXPERIMENTS_REPORT))
    return ap


def _report_failure(out_dir: str, prefix: str, message: str) -> None:
    path = record_path(Path(out_dir), prefix)
    bad = [o for o in json.loads(path.read_text())["outcomes"] if o["status"] in FAILED] if path.exists() else []
    for o in bad:
        print(f"error: experiment {o['name']} {o['status']}: {o['reason']} (log: {o['log']})", file=sys.stderr)
    if not bad:
        print(f"error: sweep {prefix}: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    prefix = args.prefix or "sweep-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    try:
        grid = json.loads(args.grid)
        [validate_overrides(p) for p in expand(grid)]
    except ValueError as err:  # bad JSON, an empty grid, a bad key or value (ParamsError)
        print(f"error: --grid: {err}", file=sys.stderr)
        return 2
    state = sweep(grid=grid, prefix=prefix, jobs=args.jobs, out_dir=args.out, time_limit_s=args.time_limit,
                  measure=not args.no_measure, return_state=True)
    if state.is_completed():
        return 0
    _report_failure(args.out, prefix, state.message or "failed")
    return 1


if __name__ == "__main__":
    sys.exit(main())
