"""What does Prefect orchestration cost? The micro-config DAG run by plain `dvc repro` and by the
Prefect flow (`python -m pipelines.flow`: one task per stage, each `dvc repro --single-item`, output
streamed to the run log, artifacts per stage), each in its own fresh copy of the repository so both
do exactly the same work. Goal: flow / dvc repro <= 1.10.

    python -m bench.orchestration               # dvc repro vs the flow on a running local server
    python -m bench.orchestration --ephemeral   # also the flow on a cold ephemeral API (as `make flow`)
    python -m bench.orchestration --repeat 2    # alternate the order, report medians
    python -m bench.orchestration --per-stage   # also `dvc repro --single-item` per stage, no Prefect

"server": a `prefect server start` on 127.0.0.1 is already up (started here, not timed), as with
deployments and workers; the flow process still imports Prefect and talks to it for every task,
log line and artifact. "ephemeral": no PREFECT_API_URL, so the flow process first starts a
temporary local API itself (what `python -m pipelines.flow` does on a machine without a server).
The part of the difference that is not Prefect is DVC's own start-up per stage: every
`dvc repro --single-item` parses dvc.yaml, dvc.lock and params.yaml again (about 0.7-1.3 s here).

Besides wall time, each run reports CPU seconds (the process tree's user+sys, plus the running
server's for "server"), which other users of a shared machine disturb far less, and then runs once
more with nothing to do: that no-op rerun is the fixed cost of orchestration (process start-up,
one DVC invocation and one task run per stage, artifacts) without any stage work.
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


def timed(cmd: list[str], cwd: Path, env: dict, server_pid: int | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command's process tree and of the server meanwhile)."""
    cpu0, srv0, start = _cpu_children(), _cpu_tree(server_pid), time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed in {cwd} ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, _cpu_children() - cpu0 + _cpu_tree(server_pid) - srv0


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
    ap.add_argument("--keep", action="store_true", help="keep the temp repositories")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench-orchestration-"))
    env = os.environ | OFFLINE_ENV | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                                      "PREFECT_HOME": str(base / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    server, api = start_server(env, base / "server-home")
    flow_cmd = [sys.executable, "-m", "pipelines.flow"]
    # the flow's DVC calls without Prefect: one `dvc repro --single-item` per stage, in DAG order
    stages_cmd = [sys.executable, "-c", "import subprocess, sys; from pipelines.dag import read_stages, "
                  "topological_order; [subprocess.run([sys.argv[1], 'repro', '--single-item', s], check=True) "
                  "for s in topological_order(read_stages())]", str(BIN / "dvc")]
    runs = {"dvc": ([str(BIN / "dvc"), "repro"], env)}
    if args.per_stage:
        runs["dvc-stages"] = (stages_cmd, env | {"PYTHONPATH": "."})
    runs["server"] = (flow_cmd, env | {"PREFECT_API_URL": api})
    if args.ephemeral:
        runs["ephemeral"] = (flow_cmd, env)
    results: dict[str, list[dict]] = {k: [] for k in runs}
    try:
        for i in range(args.repeat):
            for kind in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
                cmd, run_env = runs[kind]
                repo = make_repo(base / f"{kind}-{i}")
                pid = server.pid if kind == "server" else None
                wall, cpu = timed(cmd, repo, run_env, pid)
                noop, _ = timed(cmd, repo, run_env, pid)  # everything up to date: the fixed cost
                results[kind].append({"wall": wall, "cpu": cpu, "noop": noop})
                print(f"round {i + 1} {kind:10s}: {wall:6.1f} s wall, {cpu:6.1f} s CPU; no-op rerun {noop:5.1f} s",
                      flush=True)
            for kind in runs:
                assert metrics(base / f"{kind}-{i}").keys() == metrics(base / f"dvc-{i}").keys(), \
                    f"{kind} wrote different metrics files than dvc repro"
    finally:
        stop_server(server)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind])

    dvc = {k: med("dvc", k) for k in ("wall", "cpu", "noop")}
    print(f"\nmicro DAG, {args.repeat} round(s), medians; goal: flow / dvc repro <= {GOAL:.2f}")
    print(f"  {'':32s} {'wall s':>7s} {'ratio':>6s} {'CPU s':>7s} {'ratio':>6s} {'no-op s':>8s}")
    print(f"  {'dvc repro':32s} {dvc['wall']:7.1f} {'':6s} {dvc['cpu']:7.1f} {'':6s} {dvc['noop']:8.1f}")
    labels = {"dvc-stages": "dvc repro per stage, no Prefect", "server": "Prefect flow, running server",
              "ephemeral": "Prefect flow, ephemeral API"}
    for kind, label in labels.items():
        if kind in results:
            t = {k: med(kind, k) for k in ("wall", "cpu", "noop")}
            fixed = t["noop"] - dvc["noop"]
            print(f"  {label:32s} {t['wall']:7.1f} {t['wall'] / dvc['wall']:6.2f} {t['cpu']:7.1f}"
                  f" {t['cpu'] / dvc['cpu']:6.2f} {t['noop']:8.1f}"
                  f"   fixed cost +{fixed:.1f} s -> {(dvc['wall'] + fixed) / dvc['wall']:.2f} of dvc's wall time"
                  f" ({'met' if t['wall'] / dvc['wall'] <= GOAL else 'NOT met'} on wall time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
