"""The lmpipe DAG as a Prefect 3 flow: one task per DVC stage, in dvc.yaml's order.

Every task runs its stage *through DVC* (`dvc repro --single-item <stage>`, called through DVC's
Python API inside the flow process: pipelines/dvc_runner.py), so dvc.lock still decides what is up
to date and a flow run and a `dvc repro` never disagree about the state of the pipeline. Stage
output is streamed line by line into the Prefect run log while it happens.

A failed stage is either final or retried (pipelines/failures.py has the rules):
  final    a failed data-quality gate (exit 1), rejected params or inputs (exit 2), a Python
           exception in the stage, DVC refusing the stage. The task fails without retrying,
           downstream tasks never run, and the run's message is the stage's one-line reason.
  retried  a kill by a signal (OOM, a lost worker), DVC lock contention, an unknown exit code, a
           Prefect API error: exponential backoff, because the same command can succeed later.

Stages that read `pretrain.device` (pretrain, finetune, evaluate, generate) hold a slot of the
global concurrency limit `gpu` while they run on a GPU (create it once with
`prefect gcl create gpu --limit 1`), so two GPU stages never share one GPU, whichever flow runs them.
They are also tagged `gpu` in the UI.

    python -m pipelines.flow                                  # the whole DAG
    python -m pipelines.flow --stages evaluate                # evaluate and its upstream stages
    python -m pipelines.flow --force -S finetune.lr=1e-3 --name lr-1e-3   # a named DVC experiment
    python -m pipelines.flow --serve [--cron "0 2 * * *"]     # serve it (and the sweep), no worker
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from lmpipe import paths
from lmpipe.params import ParamsError
from pipelines import artifacts
from pipelines.dag import read_stages, with_upstream
from pipelines.dvc_runner import repro
from pipelines.experiments import apply_overrides, normalize, save_experiment, validate_overrides
from pipelines.failures import DataError, stage_exception
from pipelines.gpu import GPU_LIMIT, gpu_requested, gpu_slot

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

RETRIES = 3
RETRY_BACKOFF_S = float(os.environ.get("LMPIPE_RETRY_BACKOFF_S", "10"))  # 10, 20, 40 s


def only_infra_errors(task, task_run, state) -> bool:
    """retry_condition_fn: retry infrastructure failures, never data failures.

    Prefect hands the raised exception over as `state.data` (see SyncTaskRunEngine.can_retry)."""
    exc = state.data
    if isinstance(exc, BaseException):
        return not isinstance(exc, DataError)
    return "DataError" not in (state.message or "")


@task(retries=RETRIES, retry_delay_seconds=exponential_backoff(backoff_factor=RETRY_BACKOFF_S),
      retry_jitter_factor=0.2, retry_condition_fn=only_infra_errors, cache_policy=NO_CACHE)
def run_stage(stage: str, force: bool = False, gpu: bool = False) -> str:
    """`dvc repro --single-item <stage>` (in process), streamed to the run log; artifacts for its gate
    and metrics."""
    log = get_run_logger()
    spec = read_stages()[stage]
    with gpu_slot(gpu and spec.uses_device, log):
        code, lines, ran = repro(stage, force, log)
    skipped = code == 0 and not ran
    try:
        artifacts.publish_stage_artifacts(spec, skipped)
    except Exception as err:  # an artifact is never worth failing (or retrying) a finished stage
        log.warning(f"could not publish artifacts of {stage}: {err!r}")
    if code == 0:
        return "skipped (up to date)" if skipped else "ran"
    raise stage_exception(stage, code, lines)


def _failure_summary(name: str, err: Exception, not_run: list[str]) -> tuple[str, str]:
    """(the stage's result cell, the run's one-line failure reason) for a stage that failed."""
    if isinstance(err, DataError):
        cell = "FAILED (final, not retried)"
    else:
        cell = f"FAILED (infrastructure error, after {RETRIES} retries)"
    reason = f"{err}; stages not run: {', '.join(not_run) or 'none'}"
    return cell, reason


def _run_stages(order: list[str], force: bool, gpu: bool, log) -> tuple[dict, dict]:
    """Run the stages in order; on a failure publish the summary and re-raise (nothing after runs)."""
    dag = read_stages()
    results, timings = {}, {}
    for i, name in enumerate(order):
        # Only GPU stages carry a tag: for a tagged task Prefect first asks the API for a slot of
        # each tag's concurrency limit, a round trip a busy API answers slowly (see README).
        tags = ["gpu"] if gpu and dag[name].uses_device else []
        start = time.perf_counter()
        try:
            results[name] = run_stage.with_options(task_run_name=f"stage:{name}", tags=tags)(name, force, gpu)
        except Exception as err:  # DataError, InfraError after its retries, or anything unexpected
            timings[name] = time.perf_counter() - start
            not_run = order[i + 1:]
            results[name], reason = _failure_summary(name, err, not_run)
            results |= {n: "not run" for n in not_run}
            log.error(reason)
            artifacts.wait_for_artifacts(log)
            artifacts.publish_summary(artifacts.summary_markdown(results, timings, reason, report_ran=False))
            raise
        timings[name] = time.perf_counter() - start
    return results, timings


@flow(name="lmpipe", log_prints=True)
def lmpipe(stages: list[str] | None = None, force: bool = False, params: dict[str, Any] | None = None,
           experiment: str | None = None) -> dict:
    """Run the DVC DAG (or `stages` and their upstream) as one Prefect task per stage.

    `params` overrides (dotted keys, as `dvc exp run -S`) are validated against the schema before
    any stage runs, written into params.yaml, and the finished workspace is saved as a DVC
    experiment (`dvc exp save`, named `experiment` if given; a name alone saves a run without
    overrides too), so it appears in `dvc exp show` next to runs started from the command line.
    As with `dvc exp run`, the workspace keeps the experiment's params and results afterwards.
    """
    log = get_run_logger()
    dag = read_stages()
    order = with_upstream(list(stages) if stages else list(dag), dag)
    overrides = {}
    if params:
        overrides = validate_overrides(params)  # a bad key or value fails before any stage
        apply_overrides(paths.PARAMS, overrides)
        log.info(f"params overrides applied to {paths.PARAMS}: {overrides}")
    gpu = gpu_requested()
    log.info(f"stages to run: {order}" + (f" (GPU stages hold concurrency slot '{GPU_LIMIT}')" if gpu else ""))
    results, timings = _run_stages(order, force, gpu, log)
    saved = ""
    if overrides or experiment:
        include = sorted({p for s in dag.values() for p in s.untracked})
        saved = save_experiment(experiment, include)
        results["experiment"] = saved
        log.info(saved)
    artifacts.wait_for_artifacts(log)
    artifacts.publish_summary(artifacts.summary_markdown(results, timings, experiment=saved,
                                                         report_ran="report" in order))
    return results


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Run the lmpipe DAG as a Prefect flow.")
    ap.add_argument("--stages", nargs="*", help="run these stages and their upstream (default: all)")
    ap.add_argument("--force", action="store_true", help="rerun stages even if dvc.lock says up to date")
    ap.add_argument("--set", "-S", action="append", default=[], metavar="KEY=VALUE",
                    help="param override (as dvc exp run -S); saves the run as a DVC experiment")
    ap.add_argument("--name", help="experiment name for --set runs")
    ap.add_argument("--serve", action="store_true",
                    help="serve the lmpipe and sweep flows from this process (no work pool or worker needed)")
    ap.add_argument("--cron", help="with --serve: schedule for the full run, e.g. '0 2 * * *'")
    return ap


def check_arguments(stages: list[str] | None, overrides: list[str]) -> dict:
    """The flow's arguments checked before Prefect starts: unknown stages, malformed or invalid
    overrides raise ValueError / ParamsError with a one-line message. Returns the overrides."""
    if stages:
        with_upstream(stages, read_stages())
    return validate_overrides(normalize(overrides)) if overrides else {}


def serve(cron: str | None) -> None:
    """Serve this flow and the sweep from this process: no work pool or worker needed."""
    from prefect import serve as prefect_serve

    from pipelines.sweep import sweep

    # The deployment's entrypoint is the file that defines the flow (pipelines/flow.py:lmpipe),
    # also when this module runs as __main__.
    prefect_serve(lmpipe.to_deployment(name="lmpipe-serve", cron=cron, tags=["lmpipe"]),
                  sweep.to_deployment(name="sweep-serve", tags=["lmpipe", "sweep"]))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.serve:
        serve(args.cron)
        return 0
    try:
        overrides = check_arguments(args.stages, args.set)
    except (ValueError, ParamsError) as err:  # ParamsError is a ValueError; named for the reader
        print(f"error: {err}", file=sys.stderr)
        return 2
    state = lmpipe(stages=args.stages or None, force=args.force, params=overrides or None,
                   experiment=args.name, return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
