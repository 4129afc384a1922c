"""The end of `make run`: a summary a person can read (<= 25 lines), failed gates named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipelines.summary import MAX_LINES, summary

ROOT = Path(__file__).resolve().parents[2]


def test_summary_of_the_committed_run_is_short_and_has_the_headlines(tmp_path):
    lines = summary(ROOT / "metrics", ROOT / "reports/quality", tmp_path / "index.html")
    text = "\n".join(lines)
    assert len(lines) <= MAX_LINES
    assert "gates (" in text and "all passed" in text
    assert "pretrain val loss" in text and "in-distribution accuracy" in text
    assert "index.html (not written yet)" in text


def test_a_failed_gate_is_named(tmp_path):
    quality = tmp_path / "quality"
    shutil.copytree(ROOT / "reports/quality", quality)
    (quality / "clean.json").write_text(json.dumps({"stage": "clean", "success": False}))
    assert "FAILED: clean" in "\n".join(summary(ROOT / "metrics", quality, tmp_path / "x.html"))


def test_many_shifts_still_fit(tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    shifts = {f"s{i}": {"accuracy": 0.5} for i in range(40)}
    (metrics / "evaluate.json").write_text(json.dumps({"task": {"shift": shifts}}))
    lines = summary(metrics, tmp_path, tmp_path / "x.html")
    assert len(lines) <= MAX_LINES and lines[-1].startswith("every metric")
