"""Every mistake a user can make gets one clear line, before any work, and loses nothing.

One table, one row per mistake: what is wrong, the stage that meets it, the exit code it must end
with (2 = bad params or input, fix and rerun; see lmpipe.io), and the words the last line must
contain (the key or the file, and the row or line where known). For every row the test also checks
that the last line printed is the error (no traceback or shutdown noise after it) and that no
output that existed before was half-written or deleted, and no temporary file was left behind.

Each case runs the real stage module (`python -m stages.<name>`) in a scratch directory holding a
valid params.yaml, dvc.yaml and good input files, after one mutation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lmpipe.params import Params

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the service was quick and the staff were friendly while the soup arrived warm and the bread was"
         " fresh from the oven so we stayed for dessert and coffee before the long walk home").split()


def _doc(i: int) -> str:
    # varied, sentence-like English: enough to pass ingest's gate, nothing to clean away
    words = WORDS[i % 7:] + WORDS[: i % 7]
    return f"Document {i}: " + " ".join(words) + "."


def good_params() -> dict:
    params = Params().model_dump(mode="json")
    params["data"] |= {"source": "files", "gate": {"min_docs": 20, "min_task_rows": 10, "min_class_share": 0.25}}
    params["data"]["files"] |= {"corpus": ["data/input/corpus/*.jsonl"], "task_train": "data/input/task/train.csv",
                                "task_validation": "data/input/task/validation.csv",
                                "task_test": "data/input/task/test.csv"}
    return params


def write_inputs(root: Path) -> None:
    corpus = root / "data/input/corpus"
    corpus.mkdir(parents=True)
    (corpus / "a.jsonl").write_text("".join(json.dumps({"text": _doc(i)}) + "\n" for i in range(40)))
    (corpus / "b.jsonl").write_text("".join(json.dumps({"text": _doc(i)}) + "\n" for i in range(40, 60)))
    task = root / "data/input/task"
    task.mkdir(parents=True)
    for split, n in (("train", 40), ("validation", 12), ("test", 12)):
        rows = ["text,label"] + [f"\"{'good' if k % 2 else 'bad'} meal number {split} {k}\",{k % 2}" for k in range(n)]
        (task / f"{split}.csv").write_text("\n".join(rows) + "\n")


@dataclass(frozen=True)
class Case:
    id: str
    stage: str
    mutate: Callable[[Path, dict], None]  # (scratch dir, params dict) -> None, edits either in place
    needles: tuple[str, ...]  # all must appear in the last line
    code: int = 2
    params_text: str | None = None  # written verbatim instead of the params dict (YAML mistakes)


def _set(path: str, value):
    def mutate(root: Path, params: dict) -> None:
        *head, last = path.split(".")
        node = params
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    return mutate


def _drop(section: str):
    return lambda root, params: params.pop(section)


def _write(rel: str, content: bytes | str):
    def mutate(root: Path, params: dict) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.rmtree(path)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return mutate


def _mkdir(rel: str):
    return lambda root, params: (root / rel).mkdir(parents=True, exist_ok=True)


def _both(*mutations):
    def mutate(root: Path, params: dict) -> None:
        for m in mutations:
            m(root, params)
    return mutate


def _noop(root: Path, params: dict) -> None:
    return None


PARAMS_CASES = [
    Case("unknown-top-level-key", "check_params", _set("bogus", 1), ("unknown key 'bogus'",)),
    Case("misspelled-section", "check_params", _set("pretrian.max_steps", 5), ("'pretrian'", "did you mean 'pretrain'")),
    Case("misspelled-key", "check_params", _set("finetune.learning_rate", 0.1), ("'finetune.learning_rate'",)),
    Case("missing-section", "check_params", _drop("clean"), ("missing section 'clean'",)),
    Case("empty-section", "check_params", _set("tokenize", None), ("empty section 'tokenize'",)),
    Case("wrong-type", "check_params", _set("pretrain.max_steps", "many"), ("'pretrain.max_steps'", "'many'")),
    Case("out-of-range", "check_params", _set("finetune.lr", -1.0), ("'finetune.lr'",)),
    Case("bad-choice", "check_params", _set("finetune.method", "qlora"), ("'finetune.method'",)),
    Case("label-mapping-shift-on-categorical-task", "check_params", _set("data.shifts", ["typos", "negation"]),
         ("negation", "categorical")),
    Case("max-length-over-block-size", "check_params", _set("finetune.max_length", 4096),
         ("finetune.max_length", "block_size")),
    Case("yaml-syntax-error", "check_params", _noop, ("not valid YAML", "line 4", "line 3, column 11"),
         params_text="seed: 1\ndata:\n  source: [files\n"),
    Case("params-not-a-mapping", "check_params", _noop, ("must be a mapping",), params_text="- seed\n- data\n"),
    Case("params-not-utf8", "check_params", _noop, ("not UTF-8",), params_text="seed: 1\n# caf\udce9\n"),
    Case("params-check-also-guards-every-stage", "ingest", _set("pretrain.max_stepz", 1), ("'pretrain.max_stepz'",)),
]

INGEST_CASES = [
    Case("corpus-glob-matches-nothing", "ingest", _set("data.files.corpus", ["data/input/nothing/*.jsonl"]),
         ("data/input/nothing/*.jsonl",)),
    Case("corpus-glob-matches-a-directory", "ingest",
         _both(_mkdir("data/input/corpus/sub.jsonl"), _set("data.files.corpus", ["data/input/corpus/*"])),
         ("data/input/corpus/sub.jsonl", "directory")),
    Case("corrupt-jsonl-lines", "ingest", _write("data/input/corpus/b.jsonl", "{\"text\": \"ok\"}\n{not json\n" * 10),
         ("data/input/corpus/b.jsonl", "line 2")),
    Case("jsonl-without-text-column", "ingest", _write("data/input/corpus/b.jsonl", "{\"body\": \"x\"}\n" * 5),
         ("data/input/corpus/b.jsonl", "text")),
    Case("jsonl-null-text", "ingest", _write("data/input/corpus/b.jsonl", "{\"text\": null}\n" * 3),
         ("data/input/corpus/b.jsonl", "line 1")),
    Case("malformed-csv", "ingest", _write("data/input/task/train.csv", "text,label\n\"unclosed,1\nb,0\n"),
         ("data/input/task/train.csv",)),
    Case("csv-without-label-column", "ingest", _write("data/input/task/train.csv", "text,score\na,1\nb,0\n"),
         ("data/input/task/train.csv", "label")),
    Case("task-file-missing", "ingest", _set("data.files.task_train", "data/input/task/nope.csv"),
         ("data/input/task/nope.csv",)),
    Case("task-empty-file", "ingest", _write("data/input/task/test.csv", ""), ("data/input/task/test.csv", "empty")),
    Case("label-outside-the-label-set", "ingest",
         _write("data/input/task/validation.csv", "text,label\n" + "".join(f"t{k},{k % 3}\n" for k in range(12))),
         ("data/input/task/validation.csv", "label")),
    Case("corrupt-parquet-corpus", "ingest",
         _both(_write("data/input/corpus/c.parquet", b"PAR1 garbage"),
               _set("data.files.corpus", ["data/input/corpus/*.parquet"])),
         ("data/input/corpus/c.parquet",)),
    Case("corpus-all-empty-files", "ingest",
         _both(_write("data/input/corpus/a.jsonl", ""), _write("data/input/corpus/b.jsonl", "")),
         ("data/input/corpus/a.jsonl", "empty")),
]

STAGE_CASES = [
    Case("clean-input-corrupt", "clean", _write("data/raw/corpus.parquet", b"PAR1 truncated"),
         ("data/raw/corpus.parquet",)),
    Case("clean-input-missing", "clean", _noop, ("data/raw/corpus.parquet",)),
    Case("tokenize-pretrained-path-missing", "tokenize_corpus", _set("tokenize.pretrained", "models/nope"),
         ("models/nope",)),
    Case("pretrain-output-is-a-file", "pretrain", _write("models/base", "not a directory"), ("models/base",)),
    Case("pretrain-checkpoints-is-a-file", "pretrain", _write("data/checkpoints", "x"), ("data/checkpoints",)),
    Case("pretrain-absent-gpu", "pretrain", _set("pretrain.device", "cuda"), ("cuda",)),
    Case("finetune-output-is-a-file", "finetune", _write("models/finetuned", "x"), ("models/finetuned",)),
    Case("evaluate-inputs-missing", "evaluate", _noop, ("is missing", "run the upstream stage")),
]

CASES = PARAMS_CASES + INGEST_CASES + STAGE_CASES


def snapshot(root: Path) -> dict[str, str]:
    """Hash of every file under data/, models/, metrics/, reports/ (what a failure must not touch)."""
    out = {}
    for top in ("data", "models", "metrics", "reports"):
        for path in sorted((root / top).rglob("*")) if (root / top).exists() else []:
            if path.is_file():
                out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def scratch(tmp_path: Path, case: Case) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy2(ROOT / "dvc.yaml", root / "dvc.yaml")
    write_inputs(root)
    # an output of an earlier run that a failure must leave alone
    (root / "metrics").mkdir()
    (root / "metrics/ingest.json").write_text('{"docs": 1}\n')
    params = good_params()
    case.mutate(root, params)
    if case.params_text is not None:
        (root / "params.yaml").write_bytes(case.params_text.encode("utf-8", "surrogateescape"))
    else:
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def run_stage(root: Path, stage: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                        "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_table_covers_at_least_30_mistakes():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_mistake_gets_one_clear_line_and_loses_nothing(tmp_path, case):
    root = scratch(tmp_path, case)
    before = snapshot(root)
    proc = run_stage(root, case.stage)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == case.code, f"exit {proc.returncode}\nstdout: {proc.stdout[-1500:]}\nstderr: {proc.stderr[-1500:]}"
    assert lines and lines[-1].startswith("error: "), f"last line is not the error:\n{proc.stderr[-1500:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
    for needle in case.needles:
        assert needle in lines[-1], f"{needle!r} not in {lines[-1]!r}"
    after = snapshot(root)
    assert {k: v for k, v in before.items() if k in after} == {k: after[k] for k in before if k in after}
    assert set(before) <= set(after) | {k for k in before if k.startswith("data/input/")}, "an output was deleted"
    leftovers = [p for p in root.rglob(".*") if p.name not in {".gitkeep"} and p.parent != root]
    assert not leftovers, f"temporary files left behind: {leftovers}"
