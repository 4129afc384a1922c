"""Tracked inputs: files under data/input/ are a dependency of ingest in dvc.yaml, so editing,
adding or removing one makes `dvc status` report ingest changed (a real DVC repo on a copy)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import BIN, make_repo, run

pytestmark = pytest.mark.integration

WORDS = "the service was quick and the staff were friendly while the soup arrived warm and fresh".split()


def write_inputs(repo) -> None:
    corpus = repo / "data/input/corpus"
    corpus.mkdir(parents=True)
    (corpus / "a.jsonl").write_text("".join(
        json.dumps({"text": f"Document {i}: " + " ".join(WORDS[i % 5:] + WORDS[: i % 5]) + "."}) + "\n"
        for i in range(40)))
    task = repo / "data/input/task"
    task.mkdir()
    for split, n in (("train", 40), ("validation", 12), ("test", 12)):
        rows = "".join(f"\"{'good' if k % 2 else 'bad'} meal {split} {k}\",{k % 2}\n" for k in range(n))
        (task / f"{split}.csv").write_text("text,label\n" + rows)


def ingest_status(repo) -> dict:
    out = run([str(BIN / "dvc"), "status", "--json", "ingest"], repo).stdout
    return json.loads(out or "{}").get("ingest", [])


def test_editing_adding_or_removing_an_input_reruns_ingest(tmp_path):
    repo = tmp_path / "repo"
    write_inputs(repo)
    params = {"data": {"source": "files", "shifts": ["typos"],
                       "gate": {"min_docs": 20, "min_task_rows": 10},
                       "files": {"corpus": ["data/input/corpus/*.jsonl"], "task_train": "data/input/task/train.csv",
                                 "task_validation": "data/input/task/validation.csv",
                                 "task_test": "data/input/task/test.csv"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    make_repo(repo, tmp_path / "params.yaml")
    run([str(BIN / "dvc"), "repro", "ingest"], repo, timeout=300)
    assert ingest_status(repo) == [], "ingest should be up to date right after it ran"

    def changed_input() -> bool:
        status = ingest_status(repo)
        return any("data/input" in entry.get("changed deps", {}) for entry in status)

    task = repo / "data/input/task/train.csv"
    original = task.read_bytes()
    task.write_bytes(original + b'"an appended row",1\n')
    assert changed_input(), "appending a task row must make ingest stale"
    task.write_bytes(original)
    assert ingest_status(repo) == []

    extra = repo / "data/input/corpus/b.jsonl"
    extra.write_text(json.dumps({"text": "A new document."}) + "\n")
    assert changed_input(), "adding an input file must make ingest stale"
    extra.unlink()
    assert ingest_status(repo) == []

    (repo / "data/input/corpus/a.jsonl").unlink()
    assert changed_input(), "removing an input file must make ingest stale"
