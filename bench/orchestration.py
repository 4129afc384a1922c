"""What does Prefect orchestration cost? The micro-config DAG run by plain `dvc repro` and by the
Prefect flow (`python -m pipelines.flow`: one task per stage, each a `dvc repro --single-item`
through DVC's Python API in the flow process, output streamed to the run log, artifacts per stage),
each in its own fresh copy of the repository so both do exactly the same work.
Goal: flow / dvc repro <= 1.10.

    python -m bench.orchestration               # dvc repro vs the flow on a running local server
    python -m bench.orchestration --ephemeral   # also the flow on a cold ephemeral API (as `make flow`)
    python -m bench.orchestration --repeat 5    # alternate the order, report medians and best-of
    python -m bench.orchestration --per-stage   # also the stages one by one without Prefect: one
                                                # `dvc repro --single-item` process per stage, and
                                                # the flow's in-process call (pipelines.dvc_runner)
    python -m bench.orchestration --baseline-flow /tmp/flow-before.py   # an older flow.py, same rounds

"server": a `prefect server start` on 127.0.0.1 is already up (started here, not timed), as with
deployments and workers; the flow process still imports Prefect and talks to it for every task,
log line and artifact. "ephemeral": no PREFECT_API_URL, so the flow process first starts a
temporary local API itself (what `python -m pipelines.flow` does on a machine without a server).
`--per-stage` prices what calling DVC in process saves: a `dvc repro --single-item` process per
stage starts Python, imports DVC and parses dvc.yaml, dvc.lock and params.yaml every time.

Besides wall time, each run reports CPU seconds (the process tree's user+sys, plus the running
server's for "server"), and then runs once more with nothing to do: that no-op rerun is the fixed
cost of orchestration (process start-up, one DVC call and one task run per stage, artifacts)
without any stage work. Other users of a shared machine slow some rounds a lot (the stages' two
OpenMP threads stall when a core is taken), so the summary gives medians and the best round of
each (best-of: the least disturbed), the paired ratio of each round, and the load average. It also
splits each run into the time inside stage commands (timed by a $SHELL wrapper: DVC runs every
command through $SHELL) and the time outside them, and adds each kind's outside time to the same
stage time (dvc repro's median): the ratio the run would have if nobody else had slowed it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from conftest import BIN, OFFLINE_ENV, make_repo  # noqa: E402  (the tests' repo copy, micro config)

GOAL = 1.10


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _cpu_tree(pid: int | None) -> float:
    """CPU seconds of a running process and its children (the Prefect server), 0 without psutil."""
    if pid is None:
        return 0.0
    try:
        import psutil

        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
        return sum(sum(p.cpu_times()[:4]) for p in procs)
    except Exception:
        return 0.0


# DVC runs each stage command as `$SHELL -c "<cmd>"`: with SHELL pointing here, every stage command
# appends its start and end time to $LMPIPE_BENCH_STAGE_TIMES, so a run's wall time splits into the
# stage commands' time (the same work in every kind) and the time outside them (orchestration).
TIMING_SHELL = """#!/bin/sh
start=$(date +%s.%N)
/bin/bash --noprofile --norc "$@"
rc=$?
echo "$start $(date +%s.%N)" >> "$LMPIPE_BENCH_STAGE_TIMES"
exit $rc
"""


def timed(cmd: list[str], cwd: Path, env: dict, server_pid: int | None = None) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of the command's process tree and of the server meanwhile,
    seconds spent inside stage commands)."""
    times = cwd.parent / f"{cwd.name}.stage-times"
    times.unlink(missing_ok=True)
    env = env | {"LMPIPE_BENCH_STAGE_TIMES": str(times)}
    cpu0, srv0, start = _cpu_children(), _cpu_tree(server_pid), time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed in {cwd} ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    spans = [map(float, line.split()) for line in times.read_text().splitlines()] if times.exists() else []
    return seconds, _cpu_children() - cpu0 + _cpu_tree(server_pid) - srv0, sum(end - begin for begin, end in spans)


def metrics(repo: Path) -> dict:
    return {p.name: json.loads(p.read_text()) for p in sorted((repo / "metrics").glob("*.json"))}


def start_server(env: dict, home: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = f"http://127.0.0.1:{port}/api"
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env | {"PREFECT_HOME": str(home), "PREFECT_SERVER_UI_ENABLED": "false"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{api}/health", timeout=2).json() is True:
                return proc, api
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    stop_server(proc)
    sys.exit("prefect server did not become healthy")


def stop_server(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="rounds; the order alternates between rounds")
    ap.add_argument("--ephemeral", action="store_true", help="also time the flow on a cold ephemeral API")
    ap.add_argument("--per-stage", action="store_true",
                    help="also time `dvc repro --single-item` per stage without Prefect (splits the cost)")
    ap.add_argument("--baseline-flow", type=Path, metavar="FLOW_PY",
                    help="also time this version of pipelines/flow.py on the running server, e.g. "
                         "`git show HEAD~1:pipelines/flow.py > /tmp/flow-before.py` (before/after, same rounds)")
    ap.add_argument("--keep", action="store_true", help="keep the temp repositories")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench-orchestration-"))
    shell = base / "timing-shell"
    shell.write_text(TIMING_SHELL)
    shell.chmod(0o755)
    env = os.environ | OFFLINE_ENV | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                                      "PREFECT_HOME": str(base / "prefect-home"), "SHELL": str(shell)}
    env.pop("PREFECT_API_URL", None)
    server, api = start_server(env, base / "server-home")
    flow_cmd = [sys.executable, "-m", "pipelines.flow"]
    # the flow's DVC calls without Prefect: one `dvc repro --single-item` per stage, in DAG order
    stages_cmd = [sys.executable, "-c", "import subprocess, sys; from pipelines.dag import read_stages, "
                  "topological_order; [subprocess.run([sys.argv[1], 'repro', '--single-item', s], check=True) "
                  "for s in topological_order(read_stages())]", str(BIN / "dvc")]
    # the flow's own DVC call per stage (pipelines.dvc_runner.repro, output through its pipe), no Prefect run
    inproc_cmd = [sys.executable, "-c", "import logging, sys; from pipelines.dag import read_stages, "
                  "topological_order; from pipelines.dvc_runner import repro; log = logging.getLogger('stage'); "
                  "log.setLevel(logging.INFO); sys.exit(max(repro(s, False, log)[0] "
                  "for s in topological_order(read_stages())))"]
    runs = {"dvc": ([str(BIN / "dvc"), "repro"], env)}
    if args.per_stage:
        runs["dvc-stages"] = (stages_cmd, env | {"PYTHONPATH": "."})
        runs["dvc-inproc"] = (inproc_cmd, env | {"PYTHONPATH": "."})
    runs["server"] = (flow_cmd, env | {"PREFECT_API_URL": api})
    if args.baseline_flow:
        runs["baseline"] = (flow_cmd, env | {"PREFECT_API_URL": api})
    if args.ephemeral:
        runs["ephemeral"] = (flow_cmd, env)
    results: dict[str, list[dict]] = {k: [] for k in runs}
    load = [os.getloadavg()]
    try:
        for i in range(args.repeat):
            for kind in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
                cmd, run_env = runs[kind]
                repo = make_repo(base / f"{kind}-{i}")
                if kind == "baseline":
                    shutil.copy(args.baseline_flow, repo / "pipelines" / "flow.py")
                pid = server.pid if kind in ("server", "baseline") else None
                wall, cpu, in_stages = timed(cmd, repo, run_env, pid)
                noop, _, _ = timed(cmd, repo, run_env, pid)  # everything up to date: the fixed cost
                results[kind].append({"wall": wall, "cpu": cpu, "noop": noop, "stages": in_stages,
                                      "outside": wall - in_stages})
                print(f"round {i + 1} {kind:10s}: {wall:6.1f} s wall ({wall - in_stages:4.1f} s outside stage commands),"
                      f" {cpu:6.1f} s CPU; no-op rerun {noop:5.1f} s; load {os.getloadavg()[0]:.1f}", flush=True)
            for kind in runs:
                assert metrics(base / f"{kind}-{i}").keys() == metrics(base / f"dvc-{i}").keys(), \
                    f"{kind} wrote different metrics files than dvc repro"
        load.append(os.getloadavg())
    finally:
        stop_server(server)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind])

    def best(kind: str, key: str) -> float:
        return min(r[key] for r in results[kind])

    keys = ("wall", "cpu", "noop", "stages", "outside")
    dvc = {k: med("dvc", k) for k in keys}
    dvc_best = best("dvc", "wall")
    print(f"\nmicro DAG, {args.repeat} round(s); goal: flow / dvc repro <= {GOAL:.2f}; load average (1, 5, 15 min) "
          f"before {', '.join(f'{x:.1f}' for x in load[0])}, after {', '.join(f'{x:.1f}' for x in load[-1])} "
          f"on {os.cpu_count()} cores")
    print(f"  {'':32s} {'median wall s':>13s} {'ratio':>6s} {'best wall s':>11s} {'ratio':>6s} {'CPU s':>6s} {'ratio':>6s}"
          f" {'outside stages s':>16s} {'no-op s':>8s}")
    print(f"  {'dvc repro':32s} {dvc['wall']:13.1f} {'':6s} {dvc_best:11.1f} {'':6s} {dvc['cpu']:6.1f} {'':6s}"
          f" {dvc['outside']:16.1f} {dvc['noop']:8.1f}")
    labels = {"dvc-stages": "dvc repro per stage, no Prefect", "dvc-inproc": "in-process per stage, no Prefect",
              "server": "Prefect flow, running server", "baseline": "--baseline-flow, running server",
              "ephemeral": "Prefect flow, ephemeral API"}
    for kind, label in labels.items():
        if kind in results:
            t = {k: med(kind, k) for k in keys}
            t_best = best(kind, "wall")
            paired = [r["wall"] / d["wall"] for r, d in zip(results[kind], results["dvc"])]
            # the same stage work (dvc's median time inside stage commands) plus each one's own overhead:
            # what the ratio would be if other users of the machine had slowed neither
            estimate = (dvc["stages"] + t["outside"]) / (dvc["stages"] + dvc["outside"])
            print(f"  {label:32s} {t['wall']:13.1f} {t['wall'] / dvc['wall']:6.2f} {t_best:11.1f}"
                  f" {t_best / dvc_best:6.2f} {t['cpu']:6.1f} {t['cpu'] / dvc['cpu']:6.2f} {t['outside']:16.1f}"
                  f" {t['noop']:8.1f}")
            print(f"  {'':32s} per round: {' '.join(f'{p:.2f}' for p in paired)}; outside stage commands"
                  f" +{t['outside'] - dvc['outside']:.1f} s -> {estimate:.2f} on the same stage work;"
                  f" no-op +{t['noop'] - dvc['noop']:.1f} s; goal"
                  f" {'met' if t_best / dvc_best <= GOAL else 'NOT met'} best-of,"
                  f" {'met' if t['wall'] / dvc['wall'] <= GOAL else 'NOT met'} on medians,"
                  f" {'met' if estimate <= GOAL else 'NOT met'} on the same stage work")
    return 0


if __name__ == "__main__":
    sys.exit(main())
