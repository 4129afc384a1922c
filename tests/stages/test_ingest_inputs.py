"""Bad (and tolerably bad) inputs to the ingest stage, as a table.

Each case: the files written over a good set of inputs under data/input/, the `data` params it
changes, and what must happen: exit code 2 (lmpipe.io.BAD_INPUT) with one line that names the file
and the line or row where known, and data/raw and metrics/ingest.json exactly as they were; or,
for a tolerated problem, exit 0 with the count in metrics/ingest.json and a warning naming the file.

`run_ingest(root, params)` runs the stage's `main()` in-process and maps its outcome the way
`lmpipe.io.run_stage` does (StageError -> BAD_INPUT, SystemExit -> its code), so each case costs
a fraction of a second; `test_the_real_entry_point_exits_2_with_the_line_last` checks that mapping
once through `python -m stages.ingest`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lmpipe.io import BAD_INPUT, StageError
from lmpipe.params import Params

ROOT = Path(__file__).resolve().parents[2]
WORDS = "the service was quick and the staff were friendly while the soup arrived warm and fresh".split()


def doc(i: int) -> str:
    return f"Document {i}: " + " ".join(WORDS[i % 5:] + WORDS[: i % 5]) + "."


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def task_csv(split: str, n: int) -> str:
    return "text,label\n" + "".join(f"\"{'good' if k % 2 else 'bad'} meal {split} {k}\",{k % 2}\n" for k in range(n))


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


GOOD_FILES = {
    "data/input/corpus/a.jsonl": jsonl({"text": doc(i)} for i in range(40)),
    "data/input/task/train.csv": task_csv("train", 40),
    "data/input/task/validation.csv": task_csv("validation", 12),
    "data/input/task/test.csv": task_csv("test", 12),
}
GOOD_DATA = {
    "source": "files", "shifts": ["typos"],
    "gate": {"min_docs": 20, "min_task_rows": 10, "min_class_share": 0.25},
    "files": {"corpus": ["data/input/corpus/*.jsonl"], "task_train": "data/input/task/train.csv",
              "task_validation": "data/input/task/validation.csv", "task_test": "data/input/task/test.csv"},
}
PREVIOUS = {  # outputs of an earlier run: a failure must leave them exactly as they are
    "data/raw/corpus.parquet": b"previous corpus",
    "data/raw/task/shifts/stale.parquet": b"a shift the previous params had",
    "metrics/ingest.json": b'{"docs": 1}\n',
}


@dataclass(frozen=True)
class Case:
    id: str
    files: dict[str, str | bytes | None] = field(default_factory=dict)  # written over GOOD_FILES; None = a dir
    data: dict = field(default_factory=dict)  # deep-merged into GOOD_DATA
    code: int = BAD_INPUT
    names: tuple[str, ...] = ()  # all in the error line (code 2) or in one warning line (code 0)
    metrics: dict[str, int] = field(default_factory=dict)  # dotted key in metrics/ingest.json -> value


C, T = "data/input/corpus", "data/input/task"
BAD = [
    # globs and paths
    Case("corpus-glob-matches-nothing", data={"files": {"corpus": [f"{C}/nothing*.jsonl"]}},
         names=("data.files.corpus", f"{C}/nothing*.jsonl")),
    Case("corpus-glob-matches-a-directory", files={f"{C}/sub.jsonl": None}, data={"files": {"corpus": [f"{C}/*"]}},
         names=("data.files.corpus", f"{C}/sub.jsonl", "directory")),
    Case("task-path-is-a-directory", files={f"{T}/train": None}, data={"files": {"task_train": f"{T}/train"}},
         names=("data.files.task_train", f"{T}/train", "directory")),
    Case("task-file-missing", data={"files": {"task_test": f"{T}/nope.csv"}}, names=("data.files.task_test", "nope.csv")),
    Case("corpus-key-empty", data={"files": {"corpus": []}}, names=("data.files.corpus is empty",)),
    Case("task-key-empty", data={"files": {"task_validation": ""}}, names=("data.files.task_validation is empty",)),
    Case("unsupported-file-type", files={f"{C}/notes.md": "# notes\n"}, data={"files": {"corpus": [f"{C}/*.md"]}},
         names=(f"{C}/notes.md", "unsupported file type '.md'")),
    # jsonl
    Case("jsonl-corrupt-lines", files={f"{C}/b.jsonl": '{"text": "ok"}\n{not json\n' * 10},
         names=(f"{C}/b.jsonl", "10 of 20 lines", "not valid JSON", "first: line 2", "max_bad_line_share")),
    Case("jsonl-lines-that-are-not-objects", files={f"{C}/b.jsonl": '["a list"]\n"a string"\n'},
         names=(f"{C}/b.jsonl", "2 of 2 lines", "first: line 1")),
    Case("jsonl-null-text", files={f"{C}/b.jsonl": '{"text": "ok"}\n\n{"text": null}\n'},
         names=(f"{C}/b.jsonl", "line 3", "'text' is null or missing")),
    Case("jsonl-text-key-missing-on-a-line", files={f"{C}/b.jsonl": '{"text": "ok"}\n{"body": "x"}\n'},
         names=(f"{C}/b.jsonl", "line 2", "'text'")),
    Case("jsonl-text-not-a-string", files={f"{C}/b.jsonl": '{"text": 12}\n'},
         names=(f"{C}/b.jsonl", "line 1", "int", "not text")),
    Case("jsonl-without-text-column", files={f"{C}/b.jsonl": '{"body": "x"}\n' * 5},
         names=(f"{C}/b.jsonl", "no column 'text'", "data.files.text_column")),
    # csv / tsv
    Case("csv-unclosed-quote", files={f"{T}/train.csv": 'text,label\n"unclosed,1\nb,0\n'},
         names=(f"{T}/train.csv", "not valid CSV")),
    Case("csv-row-with-extra-fields", files={f"{T}/train.csv": "text,label\na,1\nb,0,extra\n"},
         names=(f"{T}/train.csv", "not valid CSV", "line 3")),
    Case("tsv-row-with-extra-fields", files={f"{T}/train.tsv": "text\tlabel\na\t1\nb\t0\textra\n"},
         data={"files": {"task_train": f"{T}/train.tsv"}}, names=(f"{T}/train.tsv", "not valid TSV", "line 3")),
    Case("csv-without-label-column", files={f"{T}/train.csv": "text,score\na,1\nb,0\n"},
         names=(f"{T}/train.csv", "'label'", "data.files.label_column")),
    Case("task-row-with-empty-text", files={f"{T}/validation.csv": "text,label\nfine,1\n\"\",0\n"},
         names=(f"{T}/validation.csv", "row 2", "empty")),
    Case("task-row-with-missing-label", files={f"{T}/validation.csv": "text,label\nfine,1\nno label here\n"},
         names=(f"{T}/validation.csv", "row 2", "label set")),
    Case("label-outside-the-label-set", files={f"{T}/validation.csv": task_csv("v", 4) + "odd one,2\n"},
         names=(f"{T}/validation.csv", "1 label(s) outside", "row 5", "label_map")),
    # empty files
    Case("task-empty-file", files={f"{T}/test.csv": ""}, names=(f"{T}/test.csv", "empty")),
    Case("task-header-only", files={f"{T}/test.csv": "text,label\n"}, names=(f"{T}/test.csv", "empty")),
    Case("corpus-all-files-empty", files={f"{C}/a.jsonl": "", f"{C}/b.jsonl": "\n\n"},
         names=(f"{C}/a.jsonl", f"{C}/b.jsonl", "are empty")),
    Case("corpus-txt-only-blank-lines", files={f"{C}/a.txt": "\n \n\t\n"}, data={"files": {"corpus": [f"{C}/*.txt"]}},
         names=(f"{C}/a.txt", "is empty")),
    Case("corpus-every-document-blank", files={f"{C}/a.jsonl": jsonl([{"text": " "}, {"text": ""}])},
         names=("data.files.corpus", "blank")),
    # parquet
    Case("parquet-corrupt", files={f"{C}/c.parquet": b"PAR1 garbage"}, data={"files": {"corpus": [f"{C}/*.parquet"]}},
         names=(f"{C}/c.parquet", "cannot read parquet")),
    Case("parquet-null-text", files={f"{C}/c.parquet": parquet_bytes(pd.DataFrame({"text": ["ok", None]}))},
         data={"files": {"corpus": [f"{C}/*"]}}, names=(f"{C}/c.parquet", "row 2", "null")),
    Case("parquet-text-not-strings", files={f"{C}/c.parquet": parquet_bytes(pd.DataFrame({"text": [1, 2]}))},
         data={"files": {"corpus": [f"{C}/c.parquet"]}}, names=(f"{C}/c.parquet", "row 1", "int")),
    # prompts
    Case("prompts-file-missing", data={"files": {"prompts": "data/input/prompts.jsonl"}},
         names=("data.files.prompts", "data/input/prompts.jsonl", "does not exist")),
    Case("prompts-line-not-json", files={"data/input/prompts.jsonl": '{"prompt": "a"}\n{oops\n'},
         data={"files": {"prompts": "data/input/prompts.jsonl"}}, names=("data/input/prompts.jsonl", "line 2")),
    Case("prompts-line-without-prompt", files={"data/input/prompts.jsonl": '{"text": "a"}\n'},
         data={"files": {"prompts": "data/input/prompts.jsonl"}}, names=("data/input/prompts.jsonl", "line 1", "prompt")),
    Case("prompts-not-utf8", files={"data/input/prompts.txt": b"caf\xe9\n"},
         data={"files": {"prompts": "data/input/prompts.txt"}}, names=("data/input/prompts.txt", "not UTF-8")),
    # hf, with a local builder
    Case("hf-task-null-text", files={f"{T}/t.jsonl": '{"text": "ok", "label": 1}\n{"text": null, "label": 0}\n'},
         data={"source": "hf", "hf": {
             "corpus": {"name": "json", "data_files": [f"{C}/a.jsonl"]},
             **{f"task_{s}": {"name": "json", "data_files": [f"{T}/t.jsonl"]} for s in ("train", "validation", "test")}}},
         names=("data.hf.task_train", "row 2", "null")),
]

TOLERATED = [
    Case("good-inputs", code=0, metrics={"read.files": 4, "read.empty_files": 0, "read.outside_input": 0, "docs": 40}),
    Case("a-few-corrupt-jsonl-lines", code=0, files={f"{C}/b.jsonl": jsonl({"text": doc(i)} for i in range(199)) + "{x\n"},
         names=(f"{C}/b.jsonl", "skipped 1 line(s)"), metrics={"read.bad_lines": 1, "docs": 239}),
    Case("an-empty-corpus-file-next-to-good-ones", code=0, files={f"{C}/b.jsonl": ""},
         names=("data.files.corpus", f"{C}/b.jsonl", "empty"), metrics={"read.empty_files": 1, "docs": 40}),
    Case("an-empty-task-file-next-to-a-good-one", code=0, files={f"{T}/more/train.csv": "", f"{T}/more/x.csv": task_csv("x", 4)},
         data={"files": {"task_train": f"{T}/**/*.csv"}}, names=("data.files.task_train", f"{T}/more/train.csv"),
         metrics={"read.empty_files": 1}),
    Case("blank-corpus-documents", code=0, files={f"{C}/b.jsonl": jsonl([{"text": "  "}, {"text": ""}, {"text": doc(99)}])},
         metrics={"read.blank_docs": 2, "docs": 41}),
    Case("replaced-bytes-counted-per-document", code=0,
         files={f"{C}/b.txt": b"\n\n".join(f"Doc {i} caf\xe9 with words.".encode("latin-1") for i in range(20))},
         data={"files": {"corpus": [f"{C}/*.jsonl", f"{C}/*.txt"]}}, metrics={"read.replaced_bytes_docs": 20, "docs": 60}),
    Case("a-file-outside-data-input", code=0, files={"elsewhere/extra.txt": "An extra document kept elsewhere."},
         data={"files": {"corpus": [f"{C}/*.jsonl", "elsewhere/*.txt"]}},
         names=("outside data/input/", "data.files.corpus", "elsewhere/extra.txt"), metrics={"read.outside_input": 1}),
]


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_files(root: Path, files: dict[str, str | bytes | None]) -> None:
    for rel, content in files.items():
        path = root / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def params_for(data: dict) -> dict:
    params = Params().model_dump(mode="json")  # a params file names every section
    params["data"] = merge(params["data"], merge(GOOD_DATA, data))
    return params


@dataclass
class Outcome:
    code: int
    error: str  # the StageError line ("" when none)
    stderr: str


def run_ingest(root: Path, params: dict) -> Outcome:
    """Write params.yaml into `root` and run the ingest stage there, in this process."""
    from stages import ingest

    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cwd, err = os.getcwd(), io.StringIO()
    os.chdir(root)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            ingest.main()
        return Outcome(0, "", err.getvalue())
    except StageError as e:
        return Outcome(BAD_INPUT, str(e), err.getvalue())
    except SystemExit as e:
        return Outcome(e.code if isinstance(e.code, int) else BAD_INPUT, "", err.getvalue())
    finally:
        os.chdir(cwd)


def snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for top in ("data/raw", "metrics") for p in sorted((root / top).rglob("*")) if p.is_file()}


def scratch(tmp_path: Path, case: Case) -> Path:
    root = tmp_path / "repo"
    write_files(root, {**GOOD_FILES, **PREVIOUS})
    write_files(root, case.files)
    return root


def dotted(metrics: dict, key: str):
    for part in key.split("."):
        metrics = metrics[part]
    return metrics


def test_the_table_is_large_and_ids_are_unique():
    cases = BAD + TOLERATED
    assert len(BAD) >= 30 and len({c.id for c in cases}) == len(cases)


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_a_bad_input_is_one_line_naming_the_file_and_nothing_is_written(tmp_path, case):
    root = scratch(tmp_path, case)
    before = snapshot(root)
    out = run_ingest(root, params_for(case.data))
    assert out.code == case.code, f"exit {out.code}: {out.error or out.stderr[-1500:]}"
    assert out.error and "\n" not in out.error
    for name in case.names:
        assert name in out.error, f"{name!r} not in {out.error!r}"
    assert snapshot(root) == before, "data/raw or metrics/ingest.json changed"
    leftovers = [p for p in (root / "data").rglob(".*")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


@pytest.mark.parametrize("case", TOLERATED, ids=lambda c: c.id)
def test_a_tolerated_problem_is_counted_and_named(tmp_path, case):
    root = scratch(tmp_path, case)
    out = run_ingest(root, params_for(case.data))
    assert out.code == 0, f"exit {out.code}: {out.error or out.stderr[-1500:]}"
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning: ")]
    if case.names:
        assert any(all(n in w for n in case.names) for w in warnings), f"no warning naming {case.names}: {warnings}"
    else:
        assert not warnings, warnings
    metrics = json.loads((root / "metrics/ingest.json").read_text())
    assert {k: dotted(metrics, k) for k in case.metrics} == case.metrics
    assert metrics["fingerprint"]["inputs"]
    # data/raw was replaced as a whole: nothing of the previous run is left in it
    assert not (root / "data/raw/task/shifts/stale.parquet").exists()
    assert (root / "data/raw/corpus.parquet").read_bytes() != PREVIOUS["data/raw/corpus.parquet"]
    assert (root / "data/raw/prompts.jsonl").read_text() == ""  # no prompts from raw text


def test_a_prompts_file_is_copied_to_data_raw(tmp_path):
    case = Case("prompts", files={"data/input/prompts.jsonl": '{"prompt": "Once upon a time", "domain": "story"}\n'})
    root = scratch(tmp_path, case)
    out = run_ingest(root, params_for({"files": {"prompts": "data/input/prompts.jsonl"}}))
    assert out.code == 0, out.error or out.stderr[-1500:]
    rows = [json.loads(line) for line in (root / "data/raw/prompts.jsonl").read_text().splitlines()]
    assert rows == [{"domain": "story", "prompt": "Once upon a time"}]


def test_the_real_entry_point_exits_2_with_the_line_last(tmp_path):
    case = BAD[[c.id for c in BAD].index("jsonl-null-text")]
    root = scratch(tmp_path, case)
    (root / "params.yaml").write_text(yaml.safe_dump(params_for(case.data), sort_keys=False))
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "stages.ingest"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == BAD_INPUT, proc.stderr[-1500:]
    assert lines[-1] == f"error: {run_ingest(root, params_for(case.data)).error}"
    assert "Traceback" not in proc.stderr
