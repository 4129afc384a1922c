"""The lmpipe DAG as a Prefect 3 flow: one task per DVC stage, in dvc.yaml's order.

Every task runs its stage *through DVC* (`dvc repro --single-item <stage>`, called through DVC's
Python API inside the flow process: see `repro`), so dvc.lock still decides what is up to date and a
flow run and a `dvc repro` never disagree about the state of the pipeline. Stage output is streamed
line by line into the Prefect run log while it happens.

Failures come in two kinds:
  data errors   a failed data-quality gate, invalid params, unreadable inputs (the stage exits 1
                or 2 after printing "DATA GATE FAILED" or "error: ..."). Final: the task fails
                without retrying, downstream tasks never run, and the run says why.
  infra errors  anything else (a killed process, a locked repo, a lost worker, a crash). Retried
                with exponential backoff, because the same command can succeed a minute later.

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
import contextvars
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from pipelines.dag import DEVICE_PARAM, Stage, read_stages, with_upstream

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

GATE_MARKER = "DATA GATE FAILED"  # stages/gates.py prints it before exiting 1
# Exit codes our stages use for problems in the data or params: 1 with "error: ..." (StageError,
# stages/artifacts.py) or a failed gate, 2 with "error: ..." (ParamsError, stages/config.py).
DATA_EXIT_CODES = {1, 2}
# `dvc repro` itself always exits 255 when a stage fails; the stage's own code is in its message.
_DVC_EXIT = re.compile(r"failed to run: .*, exited with (-?\d+)")
# DVC refusing the stage before running it: no retry makes a missing param or dependency appear.
_DVC_CONFIG_ERRORS = ("are missing from", "does not exist", "is invalid", "No such file or directory")
GPU_LIMIT = os.environ.get("LMPIPE_GPU_LIMIT", "gpu")  # one limit per GPU: e.g. gpu-0, gpu-1
RETRIES = 3
RETRY_BACKOFF_S = float(os.environ.get("LMPIPE_RETRY_BACKOFF_S", "10"))  # 10, 20, 40 s


class DataError(RuntimeError):
    """The stage rejected its data or params: retrying cannot help."""


class InfraError(RuntimeError):
    """The stage died for a reason outside the data: worth a retry."""


def dvc_bin() -> str:
    """The dvc next to this interpreter (the project's venv), else whatever is on PATH."""
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else "dvc"


def stage_env(env: dict | None = None) -> dict:
    """The environment of a stage command: unbuffered output, this venv's bin first on PATH."""
    env = dict(os.environ if env is None else env) | {"PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def log_lines(text, log, lines: list[str]) -> None:
    """Send each line of the text stream `text` to the Prefect log as it arrives (and keep it)."""
    for line in text:  # text mode: tqdm's \r also ends a line
        line = line.rstrip("\n")
        lines.append(line)
        if line.strip():
            log.info(line)


def stream(cmd: list[str], log) -> tuple[int, list[str]]:
    """Run `cmd`, sending each output line to the Prefect log as it arrives."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=stage_env(),
                            bufsize=1, errors="replace")
    lines: list[str] = []
    try:
        log_lines(proc.stdout, log, lines)
        return proc.wait(), lines
    finally:
        stop_process(proc)  # if cancelled or crashed while the stage ran: do not orphan it


def stop_process(proc: subprocess.Popen, grace: float = 30) -> None:
    """Terminate `proc` and every process under it (a shell's command, torchrun's workers), then
    kill what is left after `grace` seconds."""
    import psutil  # a dependency of dvc

    if proc.poll() is not None:
        return
    try:
        tree = [psutil.Process(proc.pid)]
        tree += tree[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in tree:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


class _SubprocessToPipe:
    """Stands in for the `subprocess` module inside `dvc.stage.run` while a stage runs: DVC starts
    the stage command with `subprocess.Popen(cmd, cwd=..., env=...)` and lets it inherit our stdout;
    this sends the command's stdout and stderr into `fd` instead, with `stage_env`, and keeps the
    processes so that an interrupted flow can stop them. Everything else is the real module."""

    def __init__(self, fd: int):
        self.fd = fd
        self.procs: list[subprocess.Popen] = []

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    def Popen(self, cmd, **kwargs):  # noqa: N802 (the name DVC calls)
        kwargs.update(stdout=self.fd, stderr=subprocess.STDOUT, env=stage_env(kwargs.get("env")))
        proc = subprocess.Popen(cmd, **kwargs)
        self.procs.append(proc)
        return proc


class _DvcLogToPipe(logging.Handler):
    """DVC's own messages ("Running stage", "Updating lock file", errors) into the same pipe as the
    stage command's output, formatted as the dvc CLI prints them, so they reach the run log in order."""

    def __init__(self, fd: int):
        from dvc.logger import ColorFormatter

        super().__init__(logging.INFO)
        self.fd = fd
        self.setFormatter(ColorFormatter(log_colors=False))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            os.write(self.fd, (self.format(record) + "\n").encode(errors="replace"))
        except OSError:  # the flow stopped reading: it was interrupted, nobody is left to tell
            pass
        except Exception:
            self.handleError(record)


_DVC_LOGGERS = ("dvc", "dvc_objects", "dvc_data")
_IN_PROCESS = threading.Lock()


def repro(stage: str, force: bool, log) -> tuple[int, list[str], bool]:
    """`dvc repro --single-item <stage> [--force]` inside this process, through DVC's Python API.

    Same work, same dvc.lock, same messages as the CLI, without starting Python and importing DVC
    again for every stage (~0.35 s of CPU each). DVC runs in a worker thread and writes, through a
    pipe, the stage command's output and its own messages; this thread sends each line to the run
    log as it arrives. Returns (0, lines, ran) or (255 as the CLI would exit, lines ending in the
    CLI's "ERROR: ..." line, False)."""
    import dvc.stage.run
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    read_fd, write_fd = os.pipe()
    popen = _SubprocessToPipe(write_fd)
    outcome = {"code": 255, "ran": False}

    def work() -> None:
        handler = _DvcLogToPipe(write_fd)
        dvc_logger = logging.getLogger("dvc")
        try:
            with _IN_PROCESS:  # the patches below are process-wide: one stage at a time
                saved = {name: (logging.getLogger(name).handlers, logging.getLogger(name).propagate,
                                logging.getLogger(name).level) for name in _DVC_LOGGERS}
                for name in _DVC_LOGGERS:  # instead of the console handlers `import dvc` installs (and root's)
                    logger = logging.getLogger(name)
                    logger.handlers, logger.propagate = [handler], False
                    # at INFO whatever an earlier in-process DVC call (dvc.cli.main, `-q`) left it at
                    logger.setLevel(logging.INFO)
                dvc.stage.run.subprocess = popen
                try:
                    with Repo() as dvc_repo:
                        outcome["ran"] = bool(dvc_repo.reproduce(stage, single_item=True, force=force))
                    outcome["code"] = 0
                except DvcException:
                    dvc_logger.exception("")  # "ERROR: failed to reproduce 'x': failed to run: ..., exited with 1"
                except BaseException:
                    dvc_logger.exception("unexpected error")
                finally:
                    dvc.stage.run.subprocess = subprocess
                    for name, (handlers, propagate, level) in saved.items():
                        logger = logging.getLogger(name)
                        logger.handlers, logger.propagate = handlers, propagate
                        logger.setLevel(level)
        finally:
            os.close(write_fd)

    worker = threading.Thread(target=work, name=f"dvc-repro-{stage}", daemon=True)
    lines: list[str] = []
    with os.fdopen(read_fd, encoding="utf-8", errors="replace") as text:
        worker.start()
        try:
            log_lines(text, log, lines)  # until DVC and every process writing to the pipe are done
            worker.join()
        finally:
            if worker.is_alive():  # cancelled or crashed while the stage ran: do not orphan it
                for proc in popen.procs:
                    stop_process(proc)
                worker.join(timeout=30)  # DVC notices, unlocks the repo and undoes its patches
    return outcome["code"], lines, outcome["ran"]


def stage_exit_code(dvc_code: int, lines: list[str]) -> int | None:
    """The stage command's own exit code, from DVC's "exited with N" (None: DVC itself failed)."""
    for line in reversed(lines):
        m = _DVC_EXIT.search(line)
        if m:
            return int(m.group(1))
    return None if dvc_code else 0


def classify_failure(stage: str, dvc_code: int, lines: list[str]) -> Exception:
    """DataError for a failed gate or rejected input/params, InfraError for everything else."""
    code = stage_exit_code(dvc_code, lines)
    tail = "\n".join(lines[-40:])
    if code in DATA_EXIT_CODES and any(GATE_MARKER in line for line in lines):
        return DataError(f"data gate of stage '{stage}' failed (final, not retried):\n{tail}")
    if code in DATA_EXIT_CODES and any(line.startswith("error: ") for line in lines):
        return DataError(f"stage '{stage}' rejected its input or params (final, not retried):\n{tail}")
    if code is None and any(line.startswith("ERROR:") and any(e in line for e in _DVC_CONFIG_ERRORS)
                            for line in lines):
        return DataError(f"dvc rejected stage '{stage}' (params, deps or dvc.yaml; final, not retried):\n{tail}")
    what = f"stage command exited with {code}" if code is not None else f"dvc exited with {dvc_code}"
    return InfraError(f"stage '{stage}': {what} (infrastructure error, retried):\n{tail}")


def only_infra_errors(task, task_run, state) -> bool:
    """retry_condition_fn: retry infrastructure failures, never data failures.

    Prefect hands the raised exception over as `state.data` (see SyncTaskRunEngine.can_retry)."""
    exc = state.data
    if isinstance(exc, BaseException):
        return not isinstance(exc, DataError)
    return "DataError" not in (state.message or "")


def metrics_rows(stage: Stage) -> list[dict]:
    """Flat key/value rows of the stage's metrics files, for a table artifact."""
    from pipelines.check_metrics import flatten

    rows = []
    for path in stage.metrics:
        if Path(path).exists():
            for key, value in flatten(json.loads(Path(path).read_text())).items():
                rows.append({"file": path, "metric": key, "value": value})
    return rows


def gate_markdown(stage_name: str, note: str = "") -> str | None:
    path = Path("reports/quality") / f"{stage_name}.json"
    if not path.exists():
        return None
    q = json.loads(path.read_text())
    status = "passed" if q["success"] else "**FAILED**"
    lines = [f"# Data-quality gate `{stage_name}`: {status}", ""]
    if note:
        lines += [f"_{note}_", ""]
    lines += [f"{q['evaluated']} expectations, {q['failed']} failed.", ""]
    failed = [r for r in q["expectations"] if not r["success"]]
    if failed:
        lines += ["| table | expectation | arguments | observed | examples |", "|---|---|---|---|---|"]
        for r in failed:
            cells = [r["table"], r["expectation"], json.dumps(r["kwargs"]), str(r["observed"]),
                     ", ".join(f"`{e}`" for e in r["examples"]) or "-"]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    passed = [r for r in q["expectations"] if r["success"]]
    if passed:
        lines += ["", "Passed: " + ", ".join(
            f"`{r['table']}.{r['expectation']}" + (f"({r['kwargs']['column']})`" if "column" in r["kwargs"] else "`")
            for r in passed)]
    return "\n".join(lines) + "\n"


def artifact_key(name: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


# Artifacts are sent from one background thread, so that an API call (which a busy server answers
# with a 503 and a 2 s client backoff) never holds up the next stage. The flow waits for them
# before it ends (`wait_for_artifacts`), so a finished run has all of them.
_ARTIFACTS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmpipe-artifacts")
_pending: list[Future] = []


def publish_in_background(create, *args, **kwargs) -> None:
    """Run an artifact call on the artifacts thread, in the caller's Prefect run context (so the
    artifact belongs to the caller's task run)."""
    _pending.append(_ARTIFACTS.submit(contextvars.copy_context().run, create, *args, **kwargs))


def wait_for_artifacts(log, timeout: float = 120) -> None:
    """Block until every artifact queued so far was sent; a failed one is a warning, never a failure."""
    while _pending:
        future = _pending.pop(0)
        try:
            future.result(timeout=timeout)
        except Exception as err:  # an artifact is never worth failing a finished run
            log.warning(f"could not publish an artifact: {err!r}")


def publish_stage_artifacts(stage: Stage, skipped: bool) -> None:
    """Read the stage's gate report and metrics now (the next stage may rewrite shared files), send
    them in the background."""
    note = "stage was up to date (dvc.lock): results of the run that produced these outputs" if skipped else ""
    md = gate_markdown(stage.name, note)
    if md:
        publish_in_background(create_markdown_artifact, md, key=f"gate-{artifact_key(stage.name)}",
                              description=f"data-quality gate of stage {stage.name}")
    rows = metrics_rows(stage)
    if rows:
        publish_in_background(create_table_artifact, rows, key=f"metrics-{artifact_key(stage.name)}",
                              description=f"metrics of stage {stage.name}")


def gpu_requested(params_file: Path = Path("params.yaml")) -> bool:
    """Will `pretrain.device` put the GPU stages on a CUDA device here? Cheap: no torch import."""
    try:
        node = yaml.safe_load(params_file.read_text()) or {}
        for key in DEVICE_PARAM.split("."):
            node = node.get(key, {}) if isinstance(node, dict) else {}
        device = node if isinstance(node, str) else "auto"
    except (OSError, yaml.YAMLError):
        device = "auto"
    if device == "cuda":
        return True
    if device != "auto" or os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


@task(retries=RETRIES, retry_delay_seconds=exponential_backoff(backoff_factor=RETRY_BACKOFF_S),
      retry_jitter_factor=0.2, retry_condition_fn=only_infra_errors, cache_policy=NO_CACHE)
def run_stage(stage: str, force: bool = False, gpu: bool = False) -> str:
    """`dvc repro --single-item <stage>` (in process), streamed to the run log; artifacts for its gate
    and metrics."""
    log = get_run_logger()
    spec = read_stages()[stage]
    if gpu and spec.uses_device:
        from prefect.concurrency.sync import concurrency

        log.info(f"waiting for a slot of concurrency limit '{GPU_LIMIT}'")
        with concurrency(GPU_LIMIT, occupy=1):
            code, lines, ran = repro(stage, force, log)
    else:
        code, lines, ran = repro(stage, force, log)
    skipped = code == 0 and not ran
    try:
        publish_stage_artifacts(spec, skipped)
    except Exception as err:  # an artifact is never worth failing (or retrying) a finished stage
        log.warning(f"could not publish artifacts of {stage}: {err!r}")
    if code == 0:
        return "skipped (up to date)" if skipped else "ran"
    raise classify_failure(stage, code, lines)


def summary_markdown(results: dict, timings: dict, failure: str = "", experiment: str = "",
                     report_ran: bool = True) -> str:
    lines = ["# lmpipe run", ""]
    if failure:
        lines += [f"**Failed:** {failure}", ""]
    lines += ["| stage | result | seconds |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {timings[k]:.1f} |" if k in timings else f"| {k} | {v} | - |"
              for k, v in results.items()]
    if experiment:
        lines += ["", f"Saved as DVC experiment: {experiment} (`dvc exp show`)."]
    report = Path("reports/index.html")
    if report.exists():
        when = "" if report_ran else " (from an earlier run: this run did not include the report stage)"
        lines += ["", f"HTML report{when}: [{report}]({report.resolve().as_uri()}) — `{report.resolve()}` on "
                      "the machine that ran the flow; `dvc metrics show` / `dvc plots show` for the rest."]
    return "\n".join(lines) + "\n"


@flow(name="lmpipe", log_prints=True)
def lmpipe(stages: list[str] | None = None, force: bool = False, params: dict[str, Any] | None = None,
           experiment: str | None = None) -> dict:
    """Run the DVC DAG (or `stages` and their upstream) as one Prefect task per stage.

    `params` overrides (dotted keys, as `dvc exp run -S`) are validated against the schema before
    any stage runs, written into params.yaml, and the finished workspace is saved as a DVC
    experiment (`dvc exp save`, named `experiment` if given; a name alone saves a run without
    overrides too), so it appears in `dvc exp show` next to runs started from the command line. As with `dvc exp run`, the workspace keeps the
    experiment's params and results afterwards.
    """
    log = get_run_logger()
    dag = read_stages()
    order = with_upstream(list(stages) if stages else list(dag), dag)
    overrides = {}
    if params:
        from pipelines.experiments import apply_overrides, validate_overrides

        overrides = validate_overrides(params)  # a bad key or value fails before any stage
        apply_overrides(Path("params.yaml"), overrides)
        log.info(f"params overrides applied to params.yaml: {overrides}")
    gpu = gpu_requested()
    log.info(f"stages to run: {order}" + (f" (GPU stages hold concurrency slot '{GPU_LIMIT}')" if gpu else ""))

    results, timings = {}, {}
    for i, name in enumerate(order):
        # Tags cost time: for a tagged task the engine first asks the API for a slot of each tag's
        # concurrency limit, and right after a stage ends a SQLite-backed API is often busy writing
        # its logs and events: a 503 and a 2 s client backoff, measured at 5 of 7 stage boundaries
        # of the micro DAG. So only GPU stages carry a tag (`gpu`, to find them in the UI).
        tags = ["gpu"] if gpu and dag[name].uses_device else []
        start = time.perf_counter()
        try:
            results[name] = run_stage.with_options(task_run_name=f"stage:{name}", tags=tags)(name, force, gpu)
        except Exception as err:  # DataError, InfraError after its retries, or anything unexpected
            timings[name] = time.perf_counter() - start
            final = isinstance(err, DataError)
            results[name] = "FAILED: data error (final, not retried)" if final else \
                f"FAILED: infrastructure error (after {RETRIES} retries)"
            not_run = order[i + 1:]
            results |= {n: "not run" for n in not_run}
            reason = (f"stage '{name}' " + ("failed its data gate or rejected its input (final, not retried)"
                                            if final else f"failed with an infrastructure error after {RETRIES} retries")
                      + f"; stages not run: {', '.join(not_run) or 'none'}")
            log.error(reason)
            wait_for_artifacts(log)
            create_markdown_artifact(summary_markdown(results, timings, reason, report_ran=False), key="lmpipe-summary",
                                     description="run summary")
            raise
        timings[name] = time.perf_counter() - start

    saved = ""
    if overrides or experiment:
        from pipelines.experiments import save_experiment

        include = sorted({p for s in dag.values() for p in s.untracked})
        saved = save_experiment(experiment, include)
        results["experiment"] = saved
        log.info(saved)
    wait_for_artifacts(log)
    create_markdown_artifact(summary_markdown(results, timings, experiment=saved, report_ran="report" in order),
                             key="lmpipe-summary", description="run summary")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the lmpipe DAG as a Prefect flow.")
    ap.add_argument("--stages", nargs="*", help="run these stages and their upstream (default: all)")
    ap.add_argument("--force", action="store_true", help="rerun stages even if dvc.lock says up to date")
    ap.add_argument("--set", "-S", action="append", default=[], metavar="KEY=VALUE",
                    help="param override (as dvc exp run -S); saves the run as a DVC experiment")
    ap.add_argument("--name", help="experiment name for --set runs")
    ap.add_argument("--serve", action="store_true",
                    help="serve the lmpipe and sweep flows from this process (no work pool or worker needed)")
    ap.add_argument("--cron", help="with --serve: schedule for the full run, e.g. '0 2 * * *'")
    args = ap.parse_args(argv)
    # Import through the package so a served deployment's entrypoint is pipelines/flow.py:lmpipe,
    # not __main__.
    from pipelines import flow as this
    from pipelines.experiments import normalize

    if args.serve:
        from prefect import serve

        from pipelines.sweep import sweep

        serve(this.lmpipe.to_deployment(name="lmpipe-serve", cron=args.cron, tags=["lmpipe"]),
              sweep.to_deployment(name="sweep-serve", tags=["lmpipe", "sweep"]))
        return 0
    state = this.lmpipe(stages=args.stages or None, force=args.force, params=normalize(args.set) or None,
                        experiment=args.name, return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
