"""The generate stage on the session's micro DAG run (conftest's `micro_repo`): every contract key of
metrics/generate.json, side-by-side samples; and prompts from the cleaned validation split when
ingest wrote none."""

from __future__ import annotations

import contextlib
import json
import math
import shutil

from stages import generate


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_generate_writes_every_contract_key_and_side_by_side_samples(micro_repo):
    gen = json.loads((micro_repo / "metrics/generate.json").read_text())
    assert set(gen) == {"base", "finetuned"}
    for model in gen.values():
        for key in ("distinct_1", "distinct_2", "repeat_4gram", "mean_sentence_words", "readability",
                    "degenerate_share"):
            assert finite(model[key]), key
        assert 0 <= model["distinct_1"] <= 1 and 0 <= model["degenerate_share"] <= 1
    rows = [json.loads(x) for x in (micro_repo / "data/samples/samples.jsonl").read_text().splitlines()]
    assert rows and all({"prompt", "base", "finetuned"} <= set(r) for r in rows)
    prompts = [json.loads(x)["prompt"] for x in (micro_repo / "data/raw/prompts.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts  # the world's own prompts, one sample each
    md = (micro_repo / "data/samples/samples.md").read_text()
    assert "| domain | prompt | base | finetuned |" in md and "temperature" in md


def test_empty_prompts_file_means_prompts_from_the_cleaned_validation_split(micro_repo, tmp_path):
    import pandas as pd

    for rel in ("models/base", "models/finetuned", "data/clean", "params.yaml"):
        src = micro_repo / rel
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / rel)
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "data/raw/prompts.jsonl").write_text("")  # what ingest writes for files/hf without a prompts file
    with contextlib.chdir(tmp_path):
        generate.main()
    rows = [json.loads(x) for x in (tmp_path / "data/samples/samples.jsonl").read_text().splitlines()]
    docs = pd.read_parquet(tmp_path / "data/clean/validation.parquet")["text"].tolist()
    assert rows and {r["domain"] for r in rows} == {"validation"}
    for r in rows:  # each prompt opens a cleaned validation document
        assert any(d.split()[:len(r["prompt"].split())] == r["prompt"].split() for d in docs), r["prompt"]
    assert json.loads((tmp_path / "reports/quality/generate.json").read_text())["success"] is True
