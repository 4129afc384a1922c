"""lmpipe.generation without models: where prompts come from, and the samples page."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pandas as pd
import pytest

from lmpipe import generation
from lmpipe.io import StageError
from lmpipe.params import GenerateParams

DOCS = [f"Document {i} starts with these words and then goes on for a while." for i in range(30)] + ["too short"]


def test_validation_prompts_are_a_seeded_sample_of_opening_words():
    prompts = generation.validation_prompts(DOCS, 5, 4, seed=3)
    assert prompts == generation.validation_prompts(DOCS, 5, 4, seed=3)
    assert prompts != generation.validation_prompts(DOCS, 5, 4, seed=4)
    assert len(prompts) == 5 and len({p["prompt"] for p in prompts}) == 5
    for p in prompts:
        assert p["domain"] == "validation" and len(p["prompt"].split()) == 4
        assert any(d.startswith(p["prompt"] + " ") for d in DOCS)
    # documents with nothing left to continue are never prompts; asking for more takes all there are
    assert len(generation.validation_prompts(DOCS, 100, 4, seed=0)) == 30
    with pytest.raises(StageError, match="more than 20 words"):
        generation.validation_prompts(DOCS, 5, 20, seed=0)


def test_prompts_file_first_then_the_validation_split(tmp_path):
    p = SimpleNamespace(num_prompts=3, prompt_words=5)
    with contextlib.chdir(tmp_path):
        with pytest.raises(StageError, match="run the ingest stage first"):
            generation.load_prompts(p, seed=0)
        raw = tmp_path / "data/raw"
        raw.mkdir(parents=True)
        (raw / "prompts.jsonl").write_text('{"domain": "story", "prompt": "Once upon"}\n\n')
        assert generation.load_prompts(p, seed=0) == [{"domain": "story", "prompt": "Once upon"}]
        (raw / "prompts.jsonl").write_text("")
        (tmp_path / "data/clean").mkdir(parents=True)
        pd.DataFrame({"text": DOCS}).to_parquet(tmp_path / "data/clean/validation.parquet")
        prompts = generation.load_prompts(p, seed=0)
    assert prompts == generation.validation_prompts(DOCS, 3, 5, seed=0)


def test_markdown_escapes_cells_and_states_the_sampling():
    rows = [{"domain": "d", "prompt": "a|b", "base": "line\nbreak", "finetuned": "x"}]
    md = generation.markdown(rows, GenerateParams(), 7, {"base": {"distinct_1": 0.5}})
    assert "| d | a\\|b | line break | x |" in md
    assert "seed 7" in md and "| base | 0.500 |" in md
