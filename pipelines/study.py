"""The remedy study: DVC experiments over groups of param overrides, and one page and table of
what they found.

    python -m pipelines.study                   # every group of GROUPS below
    python -m pipelines.study --dry-run         # the plan and its estimated wall time; runs nothing
    python -m pipelines.study --only replay,method
    python -m pipelines.study --groups '{"replay": [{"finetune.replay_weight": 0}, {"finetune.replay_weight": 1}]}'
    python -m pipelines.study --prefix study-20250101-020000   # resume that study
    python -m pipelines.study --summary         # the summary of reports/study/table.csv again

1. takes GROUPS (a group given with --groups replaces the one of that name, or adds one; --only
   keeps the named ones); each group is a list of override objects relative to params.yaml, or a
   grid object expanded as the sweep expands it; every point is checked against the schema first;
2. gives each point the experiment <prefix>-<group>-<index>; points with the same resulting params
   (the default point every group holds, say) share the first one's experiment, run once;
3. logs the plan and its wall time, estimated from the wall_s figures the workspace's metrics record
   (arithmetic, said so), then runs the experiments with the sweep machinery (pipelines/sweep.py:
   `dvc exp run --temp` each under a time limit, a finished experiment of the same prefix kept, the
   outcomes in reports/experiments/sweeps/<prefix>.json, logs in reports/experiments/logs/);
4. reads each finished experiment's metrics from its commit (`dvc exp show --json` leaves out the
   confidence intervals: lists) and writes reports/study/table.csv, one row per group point, and
   reports/study/index.html with a figure per group and a summary in numbers (pipelines/study_report.py),
   also logged at the end and published as Prefect artifacts;
5. fails (the command exits 1) when any experiment failed or hit its time limit, naming each with its
   reason; the page and table still show everything that finished.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from lmpipe import params as schema
from lmpipe import paths
from pipelines.dag import Stage, read_stages, topological_order, upstream
from pipelines.dvc_runner import dvc_bin, stage_env
from pipelines.experiments import default_time_limit_s, exp_show, set_dotted, validate_overrides
from pipelines.gpu import gpu_requested
from pipelines.study_report import build_table, read_table, summary_text, write_outputs
from pipelines.sweep import expand, plan, record_path, run_points, write_record
from pipelines.tradeoffs import FAILED, rows_from_exp_show

# group -> points; the point equal to params.yaml is in every group so each compares against it
GROUPS: dict[str, list[dict]] = {
    "augment": [{"finetune.augment": []}, {"finetune.augment": ["leet"]}, {"finetune.augment": ["leet", "rot13"]}],
    "replay": [{"finetune.replay_weight": 0}, {"finetune.replay_weight": 0.25}, {"finetune.replay_weight": 0.5},
               {"finetune.replay_weight": 1}],
    "method": [{"finetune.method": "full"}, {"finetune.method": "freeze"}, {"finetune.method": "lora"}],
    "exposure": [{"world.encoded_share": 0}, {"world.encoded_share": 0.05}, {"world.encoded_share": 0.15}],
    "safety": [{"sft.safety_augment": []}, {"sft.safety_augment": ["rot13"]}],
}
OUT_DIR = paths.STUDY_REPORT
RUNS_DIR = paths.EXPERIMENTS_REPORT  # the sweep machinery's record and logs (not committed)
METRICS_FILES = ("evaluate", "finetune", "redteam")
# The estimate's allowances: for a stage whose metrics record no wall_s, and for what DVC does per
# experiment outside stage commands (temporary workspace, cache checkout, params check, commit).
UNTIMED_STAGE_S = 20.0
EXPERIMENT_SETUP_S = 20.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")


class StudyFailed(RuntimeError):
    """Some experiments of the study failed or were stopped; the message names each with its reason."""


@dataclass
class Entry:
    """One point of a group: its overrides, the experiment that holds its results, and whether
    this entry is the one that runs it (the first with these params)."""
    group: str
    point: int
    overrides: dict
    experiment: str
    runs: bool
    changed: tuple[str, ...]  # params keys whose value differs from params.yaml


def default_prefix() -> str:
    return "study-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def select_groups(groups: dict | None = None, only: list[str] | None = None) -> dict:
    """GROUPS with `groups` laid over it (same name: replaced; new name: added), then only `only`."""
    if groups is not None and not isinstance(groups, dict):
        raise ValueError(f"--groups: give a JSON object, group name -> points, not {type(groups).__name__}")
    merged = GROUPS | (groups or {})
    if only:
        unknown = [g for g in only if g not in merged]
        if unknown:
            raise ValueError(f"--only: unknown group(s) {unknown}; the groups are {list(merged)}")
        merged = {g: merged[g] for g in only}
    if not merged:
        raise ValueError("no groups to run")
    return merged


def group_points(name: str, spec) -> list[dict]:
    """A group's points: a list of override objects, or a grid object (every combination)."""
    if not _NAME.match(str(name)):
        raise ValueError(f"group name {name!r}: letters, digits and _ only (it becomes part of experiment names)")
    if isinstance(spec, dict):
        return expand(spec)
    if isinstance(spec, list) and spec and all(isinstance(p, dict) for p in spec):
        return [dict(p) for p in spec]
    raise ValueError(f"group '{name}': give a non-empty list of override objects or a grid object, not {spec!r}")


def _leaves(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict) and obj:
        out = {}
        for key, value in obj.items():
            out |= _leaves(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: obj}


def _typed(doc: dict) -> dict:
    """The params as the stages see them (schema defaults filled in, 0 and 0.0 alike)."""
    return schema.parse_params(doc).model_dump(mode="json")


def build_plan(groups: dict, prefix: str, params_file: Path = paths.PARAMS) -> list[Entry]:
    """Every group point, checked against the schema, with its experiment name; raises ValueError
    (a ParamsError for a bad key or value) before anything runs."""
    base = yaml.safe_load(Path(params_file).read_text(encoding="utf-8")) or {}
    flat_base, seen, entries = _leaves(_typed(base)), {}, []
    for name, spec in groups.items():
        for i, raw in enumerate(group_points(name, spec)):
            overrides = validate_overrides(raw, params_file)
            doc = copy.deepcopy(base)
            for key, value in overrides.items():
                set_dotted(doc, key, value)
            flat = _leaves(_typed(doc))
            key = json.dumps(flat, sort_keys=True)
            runs = key not in seen
            experiment = seen.setdefault(key, f"{prefix}-{name}-{i}")
            changed = tuple(k for k in sorted(set(flat) | set(flat_base)) if flat.get(k) != flat_base.get(k))
            entries.append(Entry(name, i, overrides, experiment, runs, changed))
    return entries


# --- the estimate -----------------------------------------------------------------------------


def stale_stages() -> set[str] | None:
    """Stages whose deps changed since dvc.lock (they rerun in every experiment); None if unknown."""
    out = subprocess.run([dvc_bin(), "status", "--json"], capture_output=True, text=True, env=stage_env())
    try:
        status = json.loads(out.stdout or "{}") if out.returncode == 0 else None
    except ValueError:
        status = None
    if not isinstance(status, dict):
        return None
    return {name.split(":")[-1] for name, changes in status.items()
            if any(change != "always changed" for change in changes or [])}


def stage_seconds(stage: Stage, metrics_dir: Path) -> float | None:
    """The wall_s this stage's metrics record, None if they record none."""
    for metrics in stage.metrics:
        try:
            wall = json.loads((metrics_dir / Path(metrics).name).read_text()).get("wall_s")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(wall, (int, float)) and not isinstance(wall, bool):
            return float(wall)
    return None


def always_changed(dvc_yaml: Path = paths.DVC_YAML) -> set[str]:
    """Stages that run on every repro (the params check): part of every experiment's setup, and
    their unchanged outputs rerun nothing below them."""
    spec = yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8")) or {}
    return {n for n, s in (spec.get("stages") or {}).items() if (s or {}).get("always_changed")}


@dataclass
class Dag:
    """The DAG facts the estimate needs, worked out once (pipelines.dag compares every dep with
    every out on each call)."""
    stages: dict[str, Stage]
    order: list[str]
    below: dict[str, set[str]]  # stage -> every stage downstream of it
    every: set[str]  # always_changed stages

    @classmethod
    def read(cls, dvc_yaml: Path = paths.DVC_YAML) -> Dag:
        stages = read_stages(dvc_yaml)
        parents = upstream(stages)
        below = {n: set() for n in stages}
        for name in topological_order(stages)[::-1]:  # children first: their sets are complete
            for parent in parents[name]:
                below[parent] |= {name} | below[name]
        return cls(stages, topological_order(stages), below, always_changed(dvc_yaml))


def reruns(changed: tuple[str, ...], dag: Dag, stale: set[str]) -> list[str]:
    """The stages an experiment with these changed params reruns, in run order (always_changed
    stages left out: they are part of its setup)."""
    def covers(param: str, key: str) -> bool:
        return param == key or key.startswith(param + ".") or param.startswith(key + ".")

    hit = {n for n, s in dag.stages.items() if any(covers(p, k) for p in s.params for k in changed)}
    hit = (hit | stale) & (set(dag.stages) - dag.every)
    for name in list(hit):
        hit |= dag.below[name]
    return [n for n in dag.order if n in hit and n not in dag.every]


def estimate(entries: list[Entry], kept: set[str], metrics_dir: Path = paths.METRICS) -> tuple[float, list[str]]:
    """(seconds, lines): the wall time of the experiments still to run, from the recorded wall_s."""
    dag = Dag.read()
    stale = stale_stages()
    timed = {n: stage_seconds(s, metrics_dir) for n, s in dag.stages.items()}
    total, lines = 0.0, []
    for e in entries:
        if not e.runs or e.experiment in kept:
            continue
        names = reruns(e.changed, dag, stale or set())
        seconds = EXPERIMENT_SETUP_S + sum(timed[n] if timed[n] is not None else UNTIMED_STAGE_S for n in names)
        total += seconds
        lines.append(f"  {e.experiment}: reruns {', '.join(names) or 'nothing'}: ~{seconds:.0f} s")
    used = sorted({n for e in entries if e.runs for n in reruns(e.changed, dag, stale or set())})
    recorded = ", ".join(f"{n} {timed[n]:.0f} s" for n in used if timed[n] is not None) or "none"
    untimed = ", ".join(n for n in used if timed[n] is None) or "none"
    lines.append(f"estimated wall time (arithmetic from the workspace's metrics, not a measurement): {total:,.0f} s "
                 f"(~{total / 60:.0f} min) = per experiment {EXPERIMENT_SETUP_S:g} s of DVC setup + its stages: "
                 f"{recorded} (the wall_s their metrics record); {untimed}: {UNTIMED_STAGE_S:g} s each (an "
                 "allowance: their metrics record no wall time)"
                 + ("" if stale is not None else "; dvc status failed: stages changed since dvc.lock not counted")
                 + (f"; changed since dvc.lock, rerun by every experiment: {', '.join(sorted(stale - dag.every))}"
                    if stale and stale - dag.every else ""))
    return total, lines


def plan_lines(entries: list[Entry], kept: set[str], limit_s: float) -> tuple[float, list[str]]:
    experiments = [e.experiment for e in entries if e.runs]
    groups = list(dict.fromkeys(e.group for e in entries))
    lines = [f"{len(entries)} points in {len(groups)} groups ({', '.join(groups)}) -> {len(experiments)} experiments "
             f"(points with the same params share one), {len(kept)} kept from an earlier run, time limit "
             f"{limit_s:g} s each"]
    for e in entries:
        shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in e.overrides.items())
        note = "" if e.runs else " (the same params as an earlier point: shares its experiment)"
        lines.append(f"  {e.group}[{e.point}] {shown} -> {e.experiment}"
                     + (" (kept from an earlier run)" if e.runs and e.experiment in kept else note))
    seconds, est = estimate(entries, kept)
    return seconds, lines + est


# --- running and publishing ---------------------------------------------------------------------


def experiment_metrics(rev: str) -> dict[str, dict]:
    """The metrics files of an experiment's commit (they are git-tracked: cache: false)."""
    out = {}
    for stage in METRICS_FILES:
        shown = subprocess.run(["git", "show", f"{rev}:{paths.metrics_file(stage).as_posix()}"],
                               capture_output=True, text=True)
        try:
            out[stage] = json.loads(shown.stdout) if shown.returncode == 0 else {}
        except ValueError:
            out[stage] = {}
    return out


def _jsonable(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


@task(cache_policy=NO_CACHE)
def publish(entries: list[dict], outcomes: list[dict], out_dir: str, meta: dict) -> dict:
    """table.csv, index.html and the artifacts, from the metrics of every finished experiment."""
    log = get_run_logger()
    revs = {r["experiment"]: r["full_rev"] for r in rows_from_exp_show(exp_show(all_commits=True))
            if r["kind"] == "experiment"}
    by_name = {o["name"]: o for o in outcomes}
    # A point equal to params.yaml reproduces HEAD: `dvc exp run` finds every stage up to date and
    # records no experiment commit, so its metrics are the committed ones.
    unchanged = {e["experiment"] for e in entries if not e["changed"]}
    revs |= {n: "HEAD" for n in unchanged if n not in revs}
    metrics = {n: experiment_metrics(revs[n]) for n, o in by_name.items() if o["status"] not in FAILED and n in revs}
    table = build_table(entries, by_name, metrics)
    written = write_outputs(table, Path(out_dir), meta)
    records = [{k: _jsonable(v) for k, v in r.items()} for r in table.to_dict(orient="records")]
    create_table_artifact(records, key="study-table", description=f"study {meta['prefix']}: one row per group point")
    failed = [f"- **{o['name']}** {o['status']}: {o['reason']} (log: `{o['log']}`)" for o in outcomes
              if o["status"] in FAILED]
    create_markdown_artifact("\n".join([f"# Remedy study {meta['prefix']}", "", meta["about"], "",
                                        *([f"**{len(failed)} experiment(s) failed:**", *failed, ""] if failed else []),
                                        *[f"- {line}" for line in written["summary"].splitlines()], "",
                                        f"Page: `{written['html'].resolve()}`, table: `{written['csv'].resolve()}`"]),
                             key="study-summary", description="what the remedy study found, in numbers")
    log.info(f"wrote {written['html']} and {written['csv']}")
    return {"summary": written["summary"], "html": str(written["html"]), "csv": str(written["csv"])}


def _about(entries: list[Entry], outcomes: list[dict], estimated_s: float, seconds: float) -> str:
    ran = [o for o in outcomes if o["status"] != "kept"]
    return (f"{len(entries)} group points ran as {len(outcomes)} DVC experiments (points with the same params share "
            f"one), each relative to params.yaml. This run: {len(ran)} run, {len(outcomes) - len(ran)} kept from an "
            f"earlier run; {seconds:,.0f} s wall (measured; estimated beforehand: {estimated_s:,.0f} s), finished "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.")


@flow(name="lmpipe-study", log_prints=True)
def study(groups: dict | None = None, only: list[str] | None = None, prefix: str | None = None, jobs: int = 1,
          out_dir: str = str(OUT_DIR), time_limit_s: float | None = None) -> dict:
    """Run the study's experiments (resuming a study of the same prefix), write its page, table and
    summary; fail naming every experiment that failed or hit its time limit."""
    log, started = get_run_logger(), time.monotonic()
    prefix = prefix or default_prefix()
    chosen = select_groups(groups, only)
    entries = build_plan(chosen, prefix)  # all of them checked, before running any
    names = [e.experiment for e in entries if e.runs]
    points = [e.overrides for e in entries if e.runs]
    # every commit's experiments: a study resumed after a commit (or one committed to while it ran)
    # still finds the experiments it finished on the commit before
    kept, todo = plan(names, points, rows_from_exp_show(exp_show(all_commits=True)))
    limit = time_limit_s or default_time_limit_s()
    estimated, lines = plan_lines(entries, {k.name for k in kept}, limit)
    log.info(f"study {prefix}: " + "\n".join(lines))
    gpu = gpu_requested() or any(str(p.get("pretrain.device")) == "cuda" for p in points)
    ran = run_points(todo, limit, RUNS_DIR / "logs", gpu, jobs)
    outcomes = sorted([k.to_dict() for k in kept] + ran, key=lambda o: names.index(o["name"]))
    write_record(RUNS_DIR, prefix, chosen, limit, outcomes)
    meta = {"prefix": prefix, "about": _about(entries, outcomes, estimated, time.monotonic() - started)}
    result = publish([asdict(e) for e in entries], outcomes, out_dir, meta)
    log.info(f"study {prefix} summary:\n{result['summary']}")
    bad = [o for o in outcomes if o["status"] in FAILED]
    if bad:
        raise StudyFailed(f"{len(bad)} of {len(names)} experiments of study {prefix} did not finish: "
                          + "; ".join(f"{o['name']} {o['status']}: {o['reason']}" for o in bad))
    return result


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="The remedy study: groups of DVC experiments, one page and table.")
    ap.add_argument("--groups", help="JSON object: group name -> list of override objects (or a grid object); "
                                     "replaces the default group of that name or adds one")
    ap.add_argument("--only", help="comma-separated group names to run (default: all)")
    ap.add_argument("--prefix", help="experiment name prefix (default: study-<UTC time>); the same prefix resumes")
    ap.add_argument("--jobs", "-j", type=int, default=1, help="experiments run at the same time (1 per GPU)")
    ap.add_argument("--time-limit", type=float, metavar="SECONDS",
                    help="per experiment (default: sized to the config from the workspace's metrics)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and its estimated wall time, run nothing")
    ap.add_argument("--summary", action="store_true", help="print the summary of the last study's table.csv")
    ap.add_argument("--out", default=str(OUT_DIR))
    return ap


def _print_summary(out_dir: str, prefix: str | None) -> bool:
    """Print the summary of out_dir/table.csv if it is that of study `prefix` (None: any study)."""
    csv = Path(out_dir) / "table.csv"
    table = read_table(csv) if csv.exists() else None
    if table is None or (prefix and not all(str(n).startswith(prefix + "-") for n in table["experiment"])):
        return False
    print(f"\n== what the study found ({csv})\n{summary_text(table)}\npage: {Path(out_dir) / 'index.html'}")
    return True


def _report_failure(prefix: str, message: str) -> None:
    path = record_path(RUNS_DIR, prefix)
    bad = [o for o in json.loads(path.read_text())["outcomes"] if o["status"] in FAILED] if path.exists() else []
    for o in bad:
        print(f"error: experiment {o['name']} {o['status']}: {o['reason']} (log: {o['log']})", file=sys.stderr)
    if not bad:
        print(f"error: study {prefix}: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.summary:
        if _print_summary(args.out, None):
            return 0
        print(f"error: no study table under {args.out}: run the study first", file=sys.stderr)
        return 2
    prefix = args.prefix or default_prefix()
    try:
        groups = json.loads(args.groups) if args.groups else None
        only = [g.strip() for g in args.only.split(",") if g.strip()] if args.only else None
        entries = build_plan(select_groups(groups, only), prefix)
    except ValueError as err:  # bad JSON, an unknown group, a bad key or value (ParamsError)
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        try:
            runs = [e for e in entries if e.runs]
            kept, _ = plan([e.experiment for e in runs], [e.overrides for e in runs], rows_from_exp_show(exp_show()))
        except (RuntimeError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"study {prefix} (dry run): " + "\n".join(plan_lines(entries, {k.name for k in kept},
                                                                   args.time_limit or default_time_limit_s())[1]))
        return 0
    state = study(groups=groups, only=only, prefix=prefix, jobs=args.jobs, out_dir=args.out, time_limit_s=args.time_limit,
                  return_state=True)
    _print_summary(args.out, prefix)
    if state.is_completed():
        return 0
    _report_failure(prefix, state.message or "failed")
    return 1


if __name__ == "__main__":
    sys.exit(main())
