"""The lmpipe DAG as a Prefect 3 flow: one task per DVC stage, in dvc.yaml's order.

Every task runs its stage *through DVC* (`dvc repro --single-item <stage>`), so dvc.lock still
decides what is up to date and a flow run and a `dvc repro` never disagree about the state of the
pipeline. Stage output is streamed line by line into the Prefect run log while it happens.

Failures come in two kinds:
  data errors   a failed data-quality gate, invalid params, unreadable inputs. Final: the task
                fails without retrying, downstream tasks never run, and the run says why.
  infra errors  anything else (a killed process, a locked repo, a lost worker). Retried with
                backoff, because the same command can succeed a minute later.

    python -m pipelines.flow                                  # the whole DAG
    python -m pipelines.flow --stages evaluate                # evaluate and its upstream stages
    python -m pipelines.flow --force --set finetune.lr=1e-3   # as a named DVC experiment
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from pipelines.dag import read_stages, with_upstream

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

GATE_MARKER = "DATA GATE FAILED"
# Exit codes our stages use for problems in the data or params (stages/artifacts.py, config.py).
DATA_EXIT_CODES = {1, 2}


class DataError(RuntimeError):
    """The stage rejected its data or params: retrying cannot help."""


class InfraError(RuntimeError):
    """The stage died for a reason outside the data: worth a retry."""


def dvc_bin() -> str:
    """The dvc next to this interpreter (the project's venv), else whatever is on PATH."""
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else "dvc"


def stream(cmd: list[str], log) -> tuple[int, list[str]]:
    """Run `cmd`, sending each output line to the Prefect log as it arrives."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    lines = []
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        log.info(line)
    return proc.wait(), lines


def only_infra_errors(task, task_run, state) -> bool:
    """retry_condition_fn: retry infrastructure failures, never data failures."""
    return not isinstance(state.data, DataError) and "DataError" not in (state.message or "")


def metrics_rows(stage_name: str) -> list[dict]:
    """Flat key/value rows of the stage's metrics files, for a table artifact."""
    from pipelines.check_metrics import flatten

    stage = read_stages()[stage_name]
    rows = []
    for path in stage.metrics:
        if Path(path).exists():
            for key, value in flatten(json.loads(Path(path).read_text())).items():
                rows.append({"file": path, "metric": key, "value": value})
    return rows


def gate_markdown(stage_name: str) -> str:
    path = Path("reports/quality") / f"{stage_name}.json"
    if not path.exists():
        return f"# {stage_name}: no gate report\n"
    q = json.loads(path.read_text())
    status = "passed" if q["success"] else "**FAILED**"
    lines = [f"# Data-quality gate `{stage_name}`: {status}", "",
             f"{q['evaluated']} expectations, {q['failed']} failed.", ""]
    for r in q["expectations"]:
        if not r["success"]:
            lines += [f"- `{r['table']}`: **{r['expectation']}** {r['kwargs']}",
                      f"  - observed: {r['observed']}", f"  - examples: {r['examples']}"]
    return "\n".join(lines) + "\n"


def _key(name: str) -> str:
    return name.replace("_", "-").lower()


@task(retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=only_infra_errors, log_prints=True)
def run_stage(stage: str, force: bool = False) -> str:
    log = get_run_logger()
    cmd = [dvc_bin(), "repro", "--single-item", stage] + (["--force"] if force else [])
    code, lines = stream(cmd, log)
    if Path(f"reports/quality/{stage}.json").exists():
        create_markdown_artifact(gate_markdown(stage), key=f"gate-{_key(stage)}",
                                 description=f"data-quality gate of {stage}")
    rows = metrics_rows(stage)
    if rows:
        create_table_artifact(rows, key=f"metrics-{_key(stage)}", description=f"metrics of {stage}")
    if code == 0:
        skipped = any("didn't change, skipping" in line for line in lines)
        return "skipped (up to date)" if skipped else "ran"
    text = "\n".join(lines[-40:])
    if GATE_MARKER in text:
        raise DataError(f"data gate of stage '{stage}' failed (final, not retried):\n{text}")
    if code in DATA_EXIT_CODES and "error:" in text:
        raise DataError(f"stage '{stage}' rejected its input or params (final, not retried):\n{text}")
    raise InfraError(f"stage '{stage}' exited with code {code}:\n{text}")


@flow(name="lmpipe", log_prints=True)
def lmpipe(stages: list[str] | None = None, force: bool = False, params: dict[str, str] | None = None,
           experiment: str | None = None) -> dict:
    """Run the DVC DAG (or `stages` and their upstream) as one Prefect task per stage.

    `params` overrides (dotted keys, as `dvc exp run -S`) are written into params.yaml and the
    finished workspace is saved as a named DVC experiment (`dvc exp save`), so it appears in
    `dvc exp show` next to runs started from the command line.
    """
    log = get_run_logger()
    dag = read_stages()
    order = with_upstream(stages, dag) if stages else list(with_upstream(list(dag), dag))
    if params:
        from pipelines.experiments import apply_overrides

        apply_overrides(Path("params.yaml"), params)
        log.info(f"params overrides applied: {params}")
    log.info(f"stages to run: {order}")
    results = {}
    for name in order:
        results[name] = run_stage.with_options(name=f"stage:{name}")(name, force)
    if params:
        from pipelines.experiments import save_experiment

        results["experiment"] = save_experiment(experiment)
    summary = ["# lmpipe run", "", "| stage | result |", "|---|---|"]
    summary += [f"| {k} | {v} |" for k, v in results.items()]
    report = Path("reports/index.html")
    if report.exists():
        summary += ["", f"HTML report: `{report.resolve()}` (open it in a browser)."]
    create_markdown_artifact("\n".join(summary) + "\n", key="lmpipe-summary", description="run summary")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the lmpipe DAG as a Prefect flow.")
    ap.add_argument("--stages", nargs="*", help="run these stages and their upstream (default: all)")
    ap.add_argument("--force", action="store_true", help="rerun stages even if dvc.lock says up to date")
    ap.add_argument("--set", "-S", action="append", default=[], metavar="KEY=VALUE",
                    help="param override (as dvc exp run -S); saves the run as a DVC experiment")
    ap.add_argument("--name", help="experiment name for --set runs")
    args = ap.parse_args(argv)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    state = lmpipe(stages=args.stages or None, force=args.force, params=overrides or None,
                   experiment=args.name, return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
