"""pipelines/failures.py: which stage failures are final and which are retried, and the one line
that says why, from the output `dvc repro` gives for each."""

from __future__ import annotations

import pytest

from lmpipe import gates, io
from pipelines.failures import GATE_MARKER, DataError, InfraError, classify, reason_line, stage_exception

EXITED = "ERROR: failed to reproduce 'x': failed to run: python -m stages.x, exited with {}"
TRACEBACK = ["Traceback (most recent call last):", '  File "stages/x.py", line 3, in <module>',
             "RuntimeError: CUDA error: unspecified launch failure"]

CASES = [
    # (output lines, expected kind, final?, text the reason must contain)
    (["[x] ...", "DATA GATE FAILED: x (1/3 failed)", "  - docs: expect_...", EXITED.format(1)],
     "gate", True, "DATA GATE FAILED: x (1/3 failed)"),
    (["error: cannot read data/raw/corpus.parquet: ArrowInvalid", EXITED.format(2)],
     "input", True, "error: cannot read data/raw/corpus.parquet"),
    (["error: params.yaml: unknown key 'finetune.lrr'", EXITED.format(2)], "input", True, "finetune.lrr"),
    ([*TRACEBACK, EXITED.format(1)], "crash", True, "RuntimeError: CUDA error"),
    ([*TRACEBACK, "error: unexpected RuntimeError: CUDA error", EXITED.format(3)],
     "crash", True, "error: unexpected RuntimeError"),
    (["[pretrain] step 40/80", EXITED.format(-9)], "signal", False, "killed by signal 9"),
    (["[pretrain] step 40/80", EXITED.format(137)], "signal", False, "killed by signal 9"),
    (["[pretrain] step 40/80", EXITED.format(143)], "signal", False, "killed by signal 15"),
    # a traceback logged earlier does not make an OOM kill final
    ([*TRACEBACK, "[pretrain] step 41/80", EXITED.format(-9)], "signal", False, "killed by signal 9"),
    (["ERROR: failed to reproduce 'c': Parameters 'finetune.method' are missing from 'params.yaml'."],
     "dvc", True, "finetune.method"),
    (["ERROR: Unable to acquire lock. Most likely another DVC process is running"], "lock", False,
     "Unable to acquire lock"),
    (["/bin/sh: 1: pythn: not found", EXITED.format(127)], "command", True, "pythn: not found"),
    (["something odd", EXITED.format(5)], "other", False, "exit 5: something odd"),
]


@pytest.mark.parametrize(("lines", "kind", "final", "says"), CASES, ids=[c[1] + "-" + str(i) for i, c in enumerate(CASES)])
def test_failures_are_classified_from_dvc_output(lines, kind, final, says):
    failure = classify(255, lines)
    assert (failure.kind, failure.final) == (kind, final)
    assert says in failure.reason and "\n" not in failure.reason
    err = stage_exception("x", 255, lines)
    assert isinstance(err, DataError if final else InfraError)
    assert ("final, not retried" if final else "retried") in str(err) and "\n" not in str(err)


def test_reason_is_the_stages_last_error_line_not_dvcs():
    lines = ["[x] reading", "error: first problem", "error: data/raw/x.jsonl line 4: not JSON", EXITED.format(2)]
    assert reason_line(lines) == "error: data/raw/x.jsonl line 4: not JSON"


def test_exit_codes_and_gate_marker_match_the_library():
    assert GATE_MARKER == gates.FAILED_MARKER
    assert (io.GATE_FAILED, io.BAD_INPUT) == (gates.GATE_EXIT_CODE, 2)
