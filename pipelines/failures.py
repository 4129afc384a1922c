"""Why a stage run failed, and whether running it again can help.

Final (never retried: the same inputs fail the same way):
  gate      the stage's data-quality gate failed (exit 1, "DATA GATE FAILED: ...")
  input     the stage rejected its params or inputs (exit 2, "error: ...")
  crash     the stage raised a Python exception (exit 3 from lmpipe.io.run_stage, or a traceback)
  dvc       DVC refused the stage before running it (a param, dep or dvc.yaml entry is missing)
  command   the stage command could not be started at all (exit 126/127 from the shell)
Retried (the same command can succeed a minute later):
  signal    killed by a signal: the OOM killer, a lost worker, `kill` (negative codes, 128 + n)
  lock      another DVC process holds the repository lock
  other     any other exit code or DVC failure: the cause is unknown, a retry is cheap

Each failure is one line, the line the user needs: the stage's own last message (its
`error: ...`, the gate's summary, the exception) or DVC's error, so the Prefect UI and a sweep's
summary show why without opening the log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lmpipe.io import BAD_INPUT, GATE_FAILED, UNEXPECTED

# lmpipe.gates.FAILED_MARKER (a test keeps them equal); importing lmpipe.gates would load Great
# Expectations into every flow process for one string.
GATE_MARKER = "DATA GATE FAILED"
FINAL_EXIT_CODES = {GATE_FAILED, BAD_INPUT, UNEXPECTED}
SHELL_CANNOT_RUN = {126, 127}  # found but not executable / not found
# `dvc repro` itself always fails with 255; the stage command's own code is in DVC's message.
_DVC_EXIT = re.compile(r"failed to run: .*, exited with (-?\d+)")
# DVC refusing the stage before running it: no retry makes a missing param or dependency appear.
_DVC_CONFIG_ERRORS = ("are missing from", "does not exist", "is invalid", "No such file or directory")
_DVC_LOCK = "Unable to acquire lock"


class DataError(RuntimeError):
    """The stage rejected its data, params or code: retrying cannot help."""


class InfraError(RuntimeError):
    """The stage died for a reason outside the data: worth a retry."""


@dataclass(frozen=True)
class Failure:
    kind: str  # gate, input, crash, dvc, command (final); signal, lock, other (retried)
    code: int | None  # the stage command's exit code; None when DVC failed without running it
    reason: str  # one line

    @property
    def final(self) -> bool:
        return self.kind in ("gate", "input", "crash", "dvc", "command")


def stage_exit_code(dvc_code: int, lines: list[str]) -> int | None:
    """The stage command's own exit code, from DVC's "exited with N" (None: DVC itself failed)."""
    for line in reversed(lines):
        m = _DVC_EXIT.search(line)
        if m:
            return int(m.group(1))
    return None if dvc_code else 0


def _stage_lines(lines: list[str]) -> list[str]:
    """The non-empty lines before DVC's closing "ERROR: ..." block: the stage's own output."""
    end = next((i for i, line in enumerate(lines) if line.startswith("ERROR: ")), len(lines))
    return [line.rstrip() for line in lines[:end] if line.strip()]


def _dvc_error(lines: list[str]) -> str:
    return next((line for line in reversed(lines) if line.startswith("ERROR: ")), "")


def reason_line(lines: list[str]) -> str:
    """The one line that says why: the gate's summary, the stage's last `error: ...`, else the
    stage's last line (a traceback's exception), else DVC's error."""
    own = _stage_lines(lines)
    for marker in (GATE_MARKER, "error: "):
        found = [line.strip() for line in own if line.lstrip().startswith(marker)]
        if found:
            return found[-1] if marker == "error: " else found[0]
    if own:
        return own[-1].strip()  # a traceback's last line is its exception
    return _dvc_error(lines) or "no output"


def has_traceback(lines: list[str]) -> bool:
    return any(line.startswith("Traceback (most recent call last)") for line in lines)


def killed_by_signal(code: int | None) -> int | None:
    """The signal number behind an exit code: -n from Python's wait, 128 + n from a shell."""
    if code is None:
        return None
    if code < 0:
        return -code
    return code - 128 if 128 < code < 160 else None


def classify(dvc_code: int, lines: list[str]) -> Failure:
    """What kind of failure a `dvc repro --single-item` run that exited `dvc_code` with output
    `lines` was (see the module docstring)."""
    code = stage_exit_code(dvc_code, lines)
    reason = reason_line(lines)
    own = _stage_lines(lines)
    if code is None:
        error = _dvc_error(lines)
        if _DVC_LOCK in error:
            return Failure("lock", None, error)
        kind = "dvc" if any(e in error for e in _DVC_CONFIG_ERRORS) else "other"
        return Failure(kind, None, error or reason)
    if (sig := killed_by_signal(code)) is not None:
        return Failure("signal", code, f"killed by signal {sig} (exit {code}); last line: {reason}")
    if code in FINAL_EXIT_CODES or has_traceback(own):
        if any(line.lstrip().startswith(GATE_MARKER) for line in own):
            return Failure("gate", code, reason)
        if has_traceback(own) or code == UNEXPECTED:
            return Failure("crash", code, reason)
        return Failure("input", code, reason)
    if code in SHELL_CANNOT_RUN:
        return Failure("command", code, f"the stage command could not be started (exit {code}): {reason}")
    return Failure("other", code, f"exit {code}: {reason}")


_HEADLINE = {
    "gate": "data gate of stage '{stage}' failed",
    "input": "stage '{stage}' rejected its input or params",
    "crash": "stage '{stage}' crashed with a Python exception",
    "dvc": "dvc rejected stage '{stage}' (params, deps or dvc.yaml)",
    "command": "stage '{stage}' could not start its command",
    "signal": "stage '{stage}' was killed",
    "lock": "stage '{stage}' could not lock the DVC repository",
    "other": "stage '{stage}' failed",
}


def stage_exception(stage: str, dvc_code: int, lines: list[str]) -> DataError | InfraError:
    """The exception a flow task raises for a failed stage: one line, final or retried."""
    failure = classify(dvc_code, lines)
    headline = _HEADLINE[failure.kind].format(stage=stage)
    if failure.final:
        return DataError(f"{headline} (final, not retried): {failure.reason}")
    return InfraError(f"{headline} (infrastructure error, retried): {failure.reason}")
