"""lmpipe.sources: local files and `datasets.load_dataset` (local builders, no network) -> raw data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from lmpipe.io import StageError
from lmpipe.params import parse_params
from lmpipe.sources.raw import build_raw, leakage

POS = ["a lovely calm place and the food was good", "the staff is great and kind", "we had a superb dinner here"]
NEG = ["the soup is awful and cold", "a terrible slow service", "the bread was bad and stale"]


def task_rows(n: int, offset: int = 0) -> list[dict]:
    return [{"text": f"{t} number {offset + i}", "label": "pos" if j == 0 else "neg"}
            for i in range(n) for j, t in enumerate((POS[i % 3], NEG[i % 3]))]


def write_task(tmp: Path) -> dict:
    for split, (n, off) in {"train": (20, 0), "validation": (5, 100), "test": (8, 200)}.items():
        pd.DataFrame(task_rows(n, off)).to_csv(tmp / f"{split}.csv", index=False)
    return {"task_train": str(tmp / "train.csv"), "task_validation": str(tmp / "validation.csv"),
            "task_test": str(tmp / "test.csv"), "label_map": {"neg": 0, "pos": 1}}


def files_params(tmp: Path, corpus: list[str], **extra) -> object:
    files = {"corpus": corpus, **write_task(tmp), **extra}
    return parse_params({"data": {"source": "files", "files": files, "shifts": ["typos", "rot13"]}})


def test_files_source_reads_every_format(tmp_path):
    (tmp_path / "a.txt").write_text("First document here.\n\nSecond document there.\n")
    with (tmp_path / "b.jsonl").open("w") as f:
        for i in range(200):
            f.write(json.dumps({"text": f"json doc {i}"}) + "\n")
        f.write("{not json\n")  # one corrupt line of 201: under the 1% threshold
    pd.DataFrame({"text": ["parquet doc"]}).to_parquet(tmp_path / "c.parquet")
    (tmp_path / "d.csv").write_text("text\ncsv doc\n")
    (tmp_path / "e.txt").write_bytes(b"caf\xe9 latin-1 bytes\n")  # not UTF-8
    raw = build_raw(files_params(tmp_path, [str(tmp_path / "*.txt"), str(tmp_path / "b.jsonl"),
                                            str(tmp_path / "c.parquet"), str(tmp_path / "d.csv")]))
    corpus, stats = raw.corpus, raw.read
    assert len(corpus) == 2 + 1 + 200 + 1 + 1
    assert set(corpus.columns) >= {"id", "text", "source", "domain", "noise"}
    assert stats.bad_lines == 1 and stats.replaced_bytes_docs == 1
    assert "caf\ufffd latin-1 bytes" in corpus["text"].tolist()
    assert set(raw.task["train"]["label"]) == {0, 1}
    assert set(raw.shifts) == {"typos", "rot13"}
    assert len(raw.shifts["rot13"]) == len(raw.task["test"])
    assert leakage(raw.task, raw.shifts) == 0


def test_too_many_corrupt_lines_fail(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"text": "ok"}\n{broken\n{broken too\n')
    with pytest.raises(StageError, match=r"2/3 jsonl lines are corrupt"):
        build_raw(files_params(tmp_path, [str(tmp_path / "b.jsonl")]))


@pytest.mark.parametrize(("setup", "message"), [
    (lambda t: [str(t / "nothing*.jsonl")], "no files match"),
    (lambda t: (t / "e.txt").write_text("\n\n  \n") and [str(t / "e.txt")], "corpus is empty"),
    (lambda t: (t / "w.jsonl").write_text('{"body": "x"}\n') and [str(t / "w.jsonl")], r"missing column\(s\) \['text'\]"),
])
def test_clear_errors_for_bad_corpus(tmp_path, setup, message):
    with pytest.raises(StageError, match=message):
        build_raw(files_params(tmp_path, setup(tmp_path)))


def test_labels_outside_the_label_set(tmp_path):
    (tmp_path / "c.txt").write_text("doc\n")
    params = files_params(tmp_path, [str(tmp_path / "c.txt")])
    pd.DataFrame([{"text": "x", "label": "meh"}, {"text": "y", "label": "pos"}]).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(StageError, match=r"1 label\(s\) outside the label set \['negative', 'positive'\].*meh"):
        build_raw(params)


def test_train_rows_leaking_into_test_are_removed(tmp_path):
    (tmp_path / "c.txt").write_text("doc\n")
    params = files_params(tmp_path, [str(tmp_path / "c.txt")])
    test = pd.read_csv(tmp_path / "test.csv")
    train = pd.read_csv(tmp_path / "train.csv")
    pd.concat([train, test.head(3).assign(text=lambda d: d["text"].str.upper())]).to_csv(tmp_path / "train.csv", index=False)
    raw = build_raw(params)
    assert raw.train_leaks_removed == 3
    assert leakage(raw.task, raw.shifts) == 0


def test_hf_source_with_local_json_builder(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"content": f"hub doc {i}"}) + "\n" for i in range(30)))
    specs = {}
    for split, (n, off) in {"train": (20, 0), "validation": (5, 100), "test": (8, 200)}.items():
        path = tmp_path / f"{split}.jsonl"
        rows = [dict(r, label=1 if r["label"] == "pos" else 0) for r in task_rows(n, off)]
        path.write_text("".join(json.dumps({"sentence": r["text"], "y": r["label"]}) + "\n" for r in rows))
        specs[f"task_{split}"] = {"name": "json", "data_files": [str(path)], "text_column": "sentence", "label_column": "y"}
    params = parse_params({"data": {"source": "hf", "shifts": ["leet"], "hf": {
        "corpus": {"name": "json", "data_files": [str(corpus)], "text_column": "content"}, "max_docs": 25, **specs}}})
    raw = build_raw(params)
    assert len(raw.corpus) == 25
    assert len(raw.task["test"]) == 16 and list(raw.shifts) == ["leet"]


def test_hf_unknown_dataset_offline_is_a_clear_error(tmp_path):
    spec = {"name": "no-such-org/no-such-dataset"}
    params = parse_params({"data": {"source": "hf", "hf": {
        "corpus": spec, "task_train": spec, "task_validation": spec, "task_test": spec}}})
    with pytest.raises(StageError, match="load_dataset\\('no-such-org/no-such-dataset'"):
        build_raw(params)

