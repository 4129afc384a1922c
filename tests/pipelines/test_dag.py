"""pipelines/dag.py: the DAG the Prefect flow runs is the one dvc.yaml declares."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT

from pipelines.dag import downstream, read_stages, topological_order, upstream, with_upstream

ORDER = ["check_params", "ingest", "clean", "tokenize", "pretrain", "sft", "finetune", "evaluate", "generate", "redteam",
         "report"]


@pytest.fixture(scope="module")
def stages():
    return read_stages(ROOT / "dvc.yaml")


def test_project_dag_runs_in_the_documented_order(stages):
    assert topological_order(stages) == ORDER
    assert upstream(stages)["finetune"] == {"pretrain", "ingest", "tokenize"}
    assert upstream(stages)["ingest"] == {"check_params"}  # params are checked before any work
    assert upstream(stages)["check_params"] == set()


def test_selected_stages_bring_their_upstream_in_run_order(stages):
    assert with_upstream(["evaluate"], stages) == [s for s in ORDER[:8] if s != "sft"]
    assert with_upstream(["tokenize"], stages) == ["check_params", "ingest", "clean", "tokenize"]
    assert with_upstream(["generate", "clean"], stages) == ["check_params", "ingest", "clean", "tokenize", "pretrain",
                                                            "finetune", "generate"]
    assert with_upstream(["redteam"], stages) == ["check_params", "ingest", "clean", "tokenize", "pretrain", "sft",
                                                  "redteam"]
    assert with_upstream(ORDER[::-1], stages) == ORDER
    with pytest.raises(ValueError, match="unknown stage"):
        with_upstream(["finetuning"], stages)


def test_downstream_and_device_stages(stages):
    assert downstream("finetune", stages) == ["evaluate", "generate", "report"]
    assert downstream("report", stages) == []
    assert {n for n, s in stages.items() if s.uses_device} == {"pretrain", "sft", "finetune", "evaluate", "generate",
                                                                "redteam"}
    assert "metrics/evaluate.json" in stages["evaluate"].metrics
    assert "metrics/evaluate.json" in stages["evaluate"].untracked  # cache: false -> exp save -I


def test_a_cycle_is_an_error(tmp_path: Path):
    (tmp_path / "dvc.yaml").write_text("""
stages:
  a: {cmd: "true", deps: [c.txt], outs: [a.txt]}
  b: {cmd: "true", deps: [a.txt], outs: [b/]}
  c: {cmd: "true", deps: [b/part], outs: [c.txt]}
  d: {cmd: "true", outs: [d.txt]}
""")
    stages = read_stages(tmp_path / "dvc.yaml")
    assert upstream(stages)["c"] == {"b"}  # a dep inside a directory out is an edge
    with pytest.raises(ValueError, match=r"cycle among \['a', 'b', 'c'\]"):
        topological_order(stages)
