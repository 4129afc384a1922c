"""The HTML report on the session's micro DAG run: every section, every image decodes; its gate
fails on a non-finite metric with a clear message and still leaves the page to read."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import shutil

import pytest

from lmpipe.reporting.inputs import STAGES
from lmpipe.reporting.page import SECTIONS
from stages import report


def test_report_renders_every_section_and_every_image_decodes(micro_repo):
    import matplotlib.image as mpimg

    page = (micro_repo / "reports/index.html").read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'id="{section}"' in page, section
    assert "not available" not in page, "a figure is missing"
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)" data-file="([^"]+)">', page)
    assert {name for _, _, name in images} == {"pretrain_loss.png", "finetune_curves.png", "shift_accuracy.png",
                                               "capability.png", "confusion.png", "redteam_asr.png"}
    for alt, data, name in images:
        pixels = mpimg.imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50, alt
        assert (micro_repo / "reports/figures" / name).read_bytes() == base64.b64decode(data)
    assert "<script" not in page and 'src="http' not in page, "the page must be self-contained"
    ev = json.loads((micro_repo / "metrics/evaluate.json").read_text())
    for name in ev["task"]["shift"]:
        assert f"<b>{name}</b>: {ev['capability'][name]['verdict']}" in page
    for stage in STAGES:
        assert f"<td>{stage}</td><td>passed</td>" in page, stage
    samples = (micro_repo / "data/samples/samples.jsonl").read_text().splitlines()
    assert page.count("<tr>") >= len(samples)
    assert json.loads((micro_repo / "reports/quality/report.json").read_text())["success"] is True


def test_report_gate_fails_on_non_finite_metric_but_writes_the_page(micro_repo, tmp_path, capsys):
    for rel in ("metrics", "plots", "reports/quality", "data/samples", "params.yaml"):
        src = micro_repo / rel
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / rel)
    path = tmp_path / "metrics/evaluate.json"
    ev = json.loads(path.read_text())
    ev["lm"]["ppl_finetuned"] = None  # what write_json makes of NaN
    path.write_text(json.dumps(ev))
    with contextlib.chdir(tmp_path), pytest.raises(SystemExit):
        report.main()
    err = capsys.readouterr().err
    assert "DATA GATE FAILED: report" in err and "evaluate.lm.ppl_finetuned" in err
    assert (tmp_path / "reports/index.html").exists()
