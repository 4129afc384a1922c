"""Running DVC and stage commands for the flows: in process or as a child, output line by line,
and never leaving a process behind.

- `repro(stage, force, log)` is `dvc repro --single-item <stage>` run inside this process through
  DVC's Python API (`Repo.reproduce`): the same work, dvc.lock and messages as the CLI without
  starting Python and importing DVC again for every stage. The stage command's output and DVC's own
  messages reach `log` through a pipe, in the order they happened, while the stage runs.
- `stream(cmd, log, time_limit_s=...)` runs a command (a `dvc exp run`, say) as a child process,
  sends its output to `log` as it arrives and stops its whole process tree at the time limit.
- `stop_tree` stops a process and everything under it: a cancelled flow, an interrupted test or a
  time limit must not leave a stage (or the torchrun workers under it) running.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

DVC_LOGGERS = ("dvc", "dvc_objects", "dvc_data")
_IN_PROCESS = threading.Lock()  # DVC's logging and its subprocess module are patched process-wide


def dvc_bin() -> str:
    """The dvc next to this interpreter (the project's venv), else whatever is on PATH."""
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else "dvc"


def stage_env(env: dict | None = None) -> dict:
    """The environment of a stage or DVC command: unbuffered output, this venv's bin first on PATH
    (DVC runs `python -m stages.<name>` through the shell), no DVC analytics."""
    env = dict(os.environ if env is None else env) | {"PYTHONUNBUFFERED": "1"}
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def log_lines(text, log, lines: list[str]) -> None:
    """Send each line of the text stream `text` to `log` as it arrives (and keep it)."""
    for line in text:  # text mode: tqdm's \r also ends a line
        line = line.rstrip("\n")
        lines.append(line)
        if line.strip():
            log.info(line)


def _signal_all(procs, how: str) -> None:
    import psutil  # a dependency of dvc

    for p in procs:
        try:
            getattr(p, how)()
        except psutil.NoSuchProcess:
            pass


def stop_tree(proc: subprocess.Popen, grace: float = 30, leader_last: bool = False) -> None:
    """Terminate `proc` and every process under it, then kill what is left after `grace` seconds.

    `leader_last`: terminate only the processes under `proc` first and give `proc` itself `grace`
    seconds to notice and exit on its own. DVC needs that: it ignores SIGINT while a stage command
    runs, and when that command dies it reports the failure and removes its temporary workspace,
    which a SIGTERM to DVC itself would leave behind."""
    import psutil

    if proc.poll() is not None:
        return
    try:
        leader = psutil.Process(proc.pid)
        below = leader.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    tree = [leader, *below]
    if leader_last:
        _signal_all(below, "terminate")
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    _signal_all([p for p in tree if p.is_running()], "terminate")
    _, alive = psutil.wait_procs(tree, timeout=grace)
    _signal_all(alive, "kill")
    proc.wait()


@dataclass
class Streamed:
    code: int
    lines: list[str] = field(default_factory=list)
    timed_out: bool = False
    seconds: float = 0.0


def stream(cmd: list[str], log, time_limit_s: float | None = None, leader_last: bool = False) -> Streamed:
    """Run `cmd`, sending each output line to `log` as it arrives. Past `time_limit_s` its process
    tree is stopped (see `stop_tree`) and the result says `timed_out`."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=stage_env(),
                            bufsize=1, errors="replace")
    expired = threading.Event()

    def on_time_limit() -> None:
        expired.set()
        log.warning(f"time limit of {time_limit_s:g} s reached: stopping {' '.join(cmd[:4])} ... and its processes")
        stop_tree(proc, grace=10, leader_last=leader_last)

    timer = threading.Timer(time_limit_s, on_time_limit) if time_limit_s else None
    if timer:
        timer.daemon = True
        timer.start()
    result = Streamed(code=-1)
    try:
        log_lines(proc.stdout, log, result.lines)  # until every process writing to the pipe is gone
        result.code = proc.wait()
    finally:
        if timer:
            timer.cancel()
        stop_tree(proc, leader_last=leader_last)  # cancelled or crashed while it ran: do not orphan it
    result.timed_out, result.seconds = expired.is_set(), time.monotonic() - start
    return result


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
    stage command's output, formatted as the dvc CLI prints them, so they reach the log in order."""

    def __init__(self, fd: int):
        from dvc.logger import ColorFormatter

        super().__init__(logging.INFO)
        self.fd = fd
        self.setFormatter(ColorFormatter(log_colors=False))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            os.write(self.fd, (self.format(record) + "\n").encode(errors="replace"))
        except OSError:  # the reader stopped: the flow was interrupted, nobody is left to tell
            pass
        except Exception:
            self.handleError(record)


@contextmanager
def _dvc_through_pipe(fd: int, popen: _SubprocessToPipe):
    """DVC's loggers write only to `fd` (instead of the console handlers `import dvc` installs),
    at INFO whatever an earlier in-process DVC call left them at, and DVC starts stage commands
    through `popen`; everything is put back afterwards."""
    import dvc.stage.run

    handler = _DvcLogToPipe(fd)
    loggers = [logging.getLogger(name) for name in DVC_LOGGERS]
    saved = [(lg.handlers, lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [handler], False
        lg.setLevel(logging.INFO)
    dvc.stage.run.subprocess = popen
    try:
        yield
    finally:
        dvc.stage.run.subprocess = subprocess
        for lg, (handlers, propagate, level) in zip(loggers, saved):
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)


def _reproduce(stage: str, force: bool, write_fd: int, popen: _SubprocessToPipe, outcome: dict) -> None:
    """The worker thread of `repro`: reproduce one stage with DVC, report into `outcome`, close the
    pipe's write end when done (which ends the reader's loop once the stage's processes are gone)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with _IN_PROCESS, _dvc_through_pipe(write_fd, popen):
            dvc_logger = logging.getLogger("dvc")
            try:
                with Repo() as dvc_repo:
                    outcome["ran"] = bool(dvc_repo.reproduce(stage, single_item=True, force=force))
                outcome["code"] = 0
            except DvcException:
                dvc_logger.exception("")  # "ERROR: failed to reproduce 'x': failed to run: ..., exited with 1"
            except BaseException:
                dvc_logger.exception("unexpected error")
    finally:
        os.close(write_fd)


def repro(stage: str, force: bool, log) -> tuple[int, list[str], bool]:
    """`dvc repro --single-item <stage> [--force]` inside this process (see the module docstring).

    Returns (0, lines, ran) or (255 as the CLI would exit, lines ending in the CLI's
    "ERROR: ..." line, False)."""
    read_fd, write_fd = os.pipe()
    popen = _SubprocessToPipe(write_fd)
    outcome = {"code": 255, "ran": False}
    worker = threading.Thread(target=_reproduce, args=(stage, force, write_fd, popen, outcome),
                              name=f"dvc-repro-{stage}", daemon=True)
    lines: list[str] = []
    with os.fdopen(read_fd, encoding="utf-8", errors="replace") as text:
        worker.start()
        try:
            log_lines(text, log, lines)  # until DVC and every process writing to the pipe are done
            worker.join()
        finally:
            if worker.is_alive():  # cancelled or crashed while the stage ran: do not orphan it
                for proc in popen.procs:
                    stop_tree(proc)
                worker.join(timeout=30)  # DVC notices, unlocks the repo and undoes its patches
    return outcome["code"], lines, outcome["ran"]
