"""lmpipe.sources: local files and `datasets.load_dataset` (local builders, no network) -> raw data.

The one-line errors for bad inputs are the table in tests/stages/test_ingest_inputs.py; this file
covers what is read and counted when the inputs are good (or tolerably bad)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from lmpipe.io import StageError
from lmpipe.params import parse_params
from lmpipe.sources.raw import build_raw, leakage
from lmpipe.sources.readers import read_table

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
    (tmp_path / "f.tsv").write_text("id\ttext\n1\ttsv, with a comma\n")
    (tmp_path / "e.txt").write_bytes(b"caf\xe9 latin-1 bytes\n")  # not UTF-8
    raw = build_raw(files_params(tmp_path, [str(tmp_path / "*.txt"), str(tmp_path / "b.jsonl"),
                                            str(tmp_path / "c.parquet"), str(tmp_path / "d.csv"),
                                            str(tmp_path / "f.tsv")]))
    corpus, stats = raw.corpus, raw.read
    assert len(corpus) == 2 + 1 + 200 + 1 + 1 + 1
    assert set(corpus.columns) >= {"id", "text", "source", "domain", "noise"}
    assert stats.bad_lines == 1 and stats.replaced_bytes_docs == 1 and stats.files == 6 + 3
    assert "caf\ufffd latin-1 bytes" in corpus["text"].tolist()
    assert "tsv, with a comma" in corpus["text"].tolist()
    assert any("b.jsonl: skipped 1 line(s)" in w for w in stats.warnings)
    assert set(raw.task["train"]["label"]) == {0, 1}
    assert set(raw.shifts) == {"typos", "rot13"}
    assert len(raw.shifts["rot13"]) == len(raw.task["test"])
    assert leakage(raw.task, raw.shifts) == 0


@pytest.mark.parametrize("name,sep", [("a.csv", ","), ("b.tsv", "\t")])
@pytest.mark.parametrize("bad_row", [1, 3])
def test_a_row_with_more_fields_than_the_header_is_an_error_naming_it(tmp_path, name, sep, bad_row):
    """The first row too: pandas would take its extra leading field for an index, silently."""
    rows = [sep.join(["id", "text"])] + [sep.join([str(i), f"doc {i}"]) for i in range(1, 5)]
    rows[bad_row] += sep + "stray"
    (tmp_path / name).write_text("\n".join(rows) + "\n")
    with pytest.raises(StageError, match=rf"{name}: not valid {name[-3:].upper()}: .*line {bad_row + 1}") as err:
        read_table(tmp_path / name, max_bad_share=0.0)
    if bad_row == 1:
        assert "row 1 (line 2) has 3 fields for the header's 2 columns" in str(err.value)


def test_replaced_bytes_are_counted_per_document(tmp_path):
    """20 documents with a Latin-1 byte in one file count 20, not 1, in every line-free format."""
    docs = [f"doc {i} caf\xe9".encode("latin-1") for i in range(20)] + [b"clean doc", "caf\u00e9 ok".encode()]
    (tmp_path / "a.txt").write_bytes(b"\n\n".join(docs))
    (tmp_path / "b.csv").write_bytes(b"text\n" + b"\n".join(docs) + b"\n")
    (tmp_path / "c.jsonl").write_bytes(b"".join(b'{"text": "' + d + b'"}\n' for d in docs))
    for name in ("a.txt", "b.csv", "c.jsonl"):
        table = read_table(tmp_path / name, max_bad_share=0.0)
        assert table.replaced_bytes_docs == 20, name
        assert table.frame["text"].tolist()[:2] == ["doc 0 caf\ufffd", "doc 1 caf\ufffd"], name
        assert table.frame["text"].tolist()[-1] == "caf\u00e9 ok", name  # valid UTF-8 is left alone


def test_txt_split_and_repair_match_a_whole_file_decode(tmp_path):
    """Blocks are split and repaired per block; the text must equal decoding the whole file with
    errors="replace" and then splitting (a truncated multi-byte sequence next to a break included)."""
    raw = b"one \xe2\x82\n\ntwo \xff\xfe words\n \n\nthree \xc3\xa9t\xc3\n"
    (tmp_path / "a.txt").write_bytes(raw)
    table = read_table(tmp_path / "a.txt", max_bad_share=0.0)
    expected = [b.strip() for b in re.split(r"\n\s*\n", raw.decode("utf-8", "replace")) if b.strip()]
    assert table.frame["text"].tolist() == expected and table.replaced_bytes_docs == 3


def test_an_empty_file_next_to_good_ones_is_counted_and_named(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5)))
    (tmp_path / "b.jsonl").write_text("")
    (tmp_path / "c.csv").write_text("text\n")  # a header and no rows is empty too
    raw = build_raw(files_params(tmp_path, [str(tmp_path / "*.jsonl"), str(tmp_path / "c.csv")]))
    assert len(raw.corpus) == 5 and raw.read.empty_files == 2
    assert [w for w in raw.read.warnings if "empty file" in w] == [
        f"data.files.corpus: skipped 2 empty file(s): {tmp_path / 'b.jsonl'}, {tmp_path / 'c.csv'}"]


def test_blank_corpus_documents_are_dropped_and_counted(tmp_path):
    (tmp_path / "a.csv").write_text("text\nkept doc\n\"   \"\n\"\"\nanother\n")
    raw = build_raw(files_params(tmp_path, [str(tmp_path / "a.csv")]))
    assert raw.corpus["text"].tolist() == ["kept doc", "another"] and raw.read.blank_docs == 2


def test_a_glob_matching_a_file_twice_reads_it_once(tmp_path):
    (tmp_path / "a.txt").write_text("only doc\n")
    raw = build_raw(files_params(tmp_path, [str(tmp_path / "a.txt"), str(tmp_path / "*.txt")]))
    assert raw.corpus["text"].tolist() == ["only doc"]


def test_files_outside_data_input_are_read_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/input").mkdir(parents=True)
    (tmp_path / "data/input/a.txt").write_text("tracked doc\n")
    (tmp_path / "b.txt").write_text("untracked doc\n")
    raw = build_raw(files_params(tmp_path / "data/input", ["data/input/a.txt", "b.txt"]))
    assert raw.corpus["text"].tolist() == ["tracked doc", "untracked doc"]
    outside = [w for w in raw.read.warnings if "outside data/input/" in w]
    assert len(outside) == 1 and "data.files.corpus" in outside[0] and "b.txt" in outside[0]
    assert raw.read.outside_input == 1  # the task files are under data/input/


def test_labels_outside_the_label_set(tmp_path):
    (tmp_path / "c.txt").write_text("doc\n")
    params = files_params(tmp_path, [str(tmp_path / "c.txt")])
    pd.DataFrame([{"text": "x", "label": "pos"}, {"text": "y", "label": "meh"}]).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(StageError, match=r"train.csv: 1 label\(s\) outside the label set \['negative', 'positive'\]"
                                         r" \(first: row 2: 'meh'"):
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


def test_files_source_writes_no_prompts_without_a_prompts_file(tmp_path):
    """Prompts never come from raw text: without data.files.prompts the list is empty and the
    generate stage takes them from the cleaned validation split."""
    (tmp_path / "c.txt").write_text("First words of a raw document that skipped cleaning.\n")
    assert build_raw(files_params(tmp_path, [str(tmp_path / "c.txt")])).prompts == []


def test_prompts_file_is_checked_and_copied(tmp_path):
    (tmp_path / "c.txt").write_text("doc\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "Once upon", "domain": "story", "extra": 1}\n\n{"prompt": "The"}\n')
    raw = build_raw(files_params(tmp_path, [str(tmp_path / "c.txt")], prompts=str(tmp_path / "p.jsonl")))
    assert raw.prompts == [{"domain": "story", "prompt": "Once upon"}, {"domain": "prompts", "prompt": "The"}]
    (tmp_path / "p.txt").write_text("First prompt\n\n  Second prompt  \n")
    raw = build_raw(files_params(tmp_path, [str(tmp_path / "c.txt")], prompts=str(tmp_path / "p.txt")))
    assert [p["prompt"] for p in raw.prompts] == ["First prompt", "Second prompt"]
    assert raw.fingerprint["inputs"]  # the prompts file is part of what was read


def test_files_fingerprint_follows_content(tmp_path):
    (tmp_path / "c.txt").write_text("doc one\n")
    first = build_raw(files_params(tmp_path, [str(tmp_path / "c.txt")])).fingerprint
    again = build_raw(files_params(tmp_path, [str(tmp_path / "c.txt")])).fingerprint
    (tmp_path / "c.txt").write_text("doc two\n")
    changed = build_raw(files_params(tmp_path, [str(tmp_path / "c.txt")])).fingerprint
    assert first == again and first["inputs"] != changed["inputs"]


def hub_params(tmp_path: Path, max_docs: int = 25) -> object:
    corpus = tmp_path / "corpus.jsonl"
    if not corpus.exists():
        corpus.write_text("".join(json.dumps({"content": f"hub doc {i}"}) + "\n" for i in range(30)))
    specs = {}
    for split, (n, off) in {"train": (20, 0), "validation": (5, 100), "test": (8, 200)}.items():
        path = tmp_path / f"{split}.jsonl"
        rows = [dict(r, label=1 if r["label"] == "pos" else 0) for r in task_rows(n, off)]
        if not path.exists():
            path.write_text("".join(json.dumps({"sentence": r["text"], "y": r["label"]}) + "\n" for r in rows))
        specs[f"task_{split}"] = {"name": "json", "data_files": [str(path)], "text_column": "sentence", "label_column": "y"}
    return parse_params({"data": {"source": "hf", "shifts": ["leet"], "hf": {
        "corpus": {"name": "json", "data_files": [str(corpus)], "text_column": "content"}, "max_docs": max_docs, **specs}}})


def test_hf_source_with_local_json_builder(tmp_path):
    raw = build_raw(hub_params(tmp_path))
    assert len(raw.corpus) == 25
    assert len(raw.task["test"]) == 16 and list(raw.shifts) == ["leet"]
    assert set(raw.fingerprint) == {"corpus", "train", "validation", "test"}
    assert raw.prompts == []


def test_hf_fingerprint_changes_with_the_dataset(tmp_path):
    """A changed dataset is visible in metrics/ingest.json even where DVC cannot see it."""
    before = build_raw(hub_params(tmp_path)).fingerprint
    assert build_raw(hub_params(tmp_path)).fingerprint == before
    with (tmp_path / "train.jsonl").open("a") as f:
        f.write(json.dumps({"sentence": "an appended row that was not there", "y": 1}) + "\n")
    after = build_raw(hub_params(tmp_path)).fingerprint
    assert after["train"] != before["train"]
    assert {k: after[k] for k in ("corpus", "validation", "test")} == {k: before[k] for k in ("corpus", "validation", "test")}


def test_hf_null_text_names_the_spec_and_row(tmp_path):
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"content": "ok"}) + "\n" + json.dumps({"content": None}) + "\n")
    with pytest.raises(StageError, match=r"data\.hf\.corpus .*row 2: 'content' is null or missing"):
        build_raw(hub_params(tmp_path))


def test_hf_unknown_dataset_offline_is_a_clear_error(tmp_path):
    spec = {"name": "no-such-org/no-such-dataset"}
    params = parse_params({"data": {"source": "hf", "hf": {
        "corpus": spec, "task_train": spec, "task_validation": spec, "task_test": spec}}})
    with pytest.raises(StageError, match="data.hf.corpus: load_dataset\\('no-such-org/no-such-dataset'") as err:
        build_raw(params)
    assert "\n" not in str(err.value)
