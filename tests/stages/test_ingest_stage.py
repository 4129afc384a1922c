"""The ingest stage end to end (`python -m stages.ingest`) on a tiny world: outputs, metrics, gate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from lmpipe.params import parse_params

ROOT = Path(__file__).resolve().parents[2]


def test_world_ingest_stage_writes_contract(tmp_path):
    micro = yaml.safe_load((ROOT / "tests" / "params-micro.yaml").read_text())
    micro["world"]["docs"] = 200
    full = parse_params(micro).model_dump(mode="json")  # a params file names every section
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "stages.ingest"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics/ingest.json").read_text())
    assert metrics["leakage"] == 0 and metrics["docs"] > 200
    assert set(metrics["shifts"]) >= {"lexical", "domain", "leet", "rot13", "typos", "negation"}
    assert sum(metrics["noise"].values()) > 0
    for rel in ("data/raw/corpus.parquet", "data/raw/task/train.parquet", "data/raw/prompts.jsonl",
                "data/raw/task/shifts/lexical.parquet", "reports/quality/ingest.json"):
        assert (tmp_path / rel).exists(), rel
    prompts = (tmp_path / "data/raw/prompts.jsonl").read_text().splitlines()
    assert prompts and all(json.loads(line)["prompt"] for line in prompts)  # the world keeps its prompts
