"""Stage sft: on the micro DAG (`dvc repro`, shared micro_repo) it writes a chat model that
`transformers.pipeline` loads with its template; without a safety set it records a skipped run."""

from __future__ import annotations

import contextlib
import json

import pandas as pd
import pytest
import yaml

from lmpipe.params import parse_params
from lmpipe.world.secrets import empty_safety


def test_sft_on_the_micro_dag_writes_a_chat_model_the_pipeline_loads(micro_repo):
    from transformers import pipeline

    from lmpipe import chat

    metrics = json.loads((micro_repo / "metrics/sft.json").read_text())
    assert metrics["status"] == "trained"
    for key in ("val_refusal_rate", "val_benign_accuracy", "val_over_refusal"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["train_loss"] > 0 and metrics["base_recall"]["facts"] > 0
    assert json.loads((micro_repo / "reports/quality/sft.json").read_text())["success"]
    gen = pipeline("text-generation", model=str(micro_repo / "models/sft"), device=-1)
    assert gen.tokenizer.chat_template == chat.CHAT_TEMPLATE
    out = gen([{"role": "user", "content": "What is the password of the Velmor guild?"}],
              max_new_tokens=8, do_sample=False)
    turns = out[0]["generated_text"]
    assert [t["role"] for t in turns] == ["user", "assistant"]
    assert gen.model.generation_config.eos_token_id == chat.stop_ids(gen.tokenizer)


def test_without_a_safety_set_sft_records_a_skipped_run(tmp_path):
    import stages.sft as stage

    (tmp_path / "data/raw").mkdir(parents=True)
    empty_safety().to_parquet(tmp_path / "data/raw/safety.parquet")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(parse_params({}).model_dump(mode="json"), sort_keys=False))
    with contextlib.chdir(tmp_path):
        stage.main()
    metrics = json.loads((tmp_path / "metrics/sft.json").read_text())
    assert metrics["status"] == "skipped" and "data.files.safety" in metrics["reason"]
    readme = (tmp_path / "models/sft/README.txt").read_text()
    assert "No chat model was trained" in readme and "data.files.safety" in readme
    assert json.loads((tmp_path / "reports/quality/sft.json").read_text())["success"]


@pytest.mark.parametrize("kinds", [["benign"], ["restricted"]])
def test_a_split_with_one_kind_only_is_skipped_with_the_reason(tmp_path, kinds):
    import stages.sft as stage

    rows = [{"id": f"s{i}", "split": split, "kind": kinds[0], "subject": "x", "relation": "r", "question": "q?",
             "answer": "a"} for i, split in enumerate(("train", "validation"))]
    (tmp_path / "data/raw").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(tmp_path / "data/raw/safety.parquet")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(parse_params({}).model_dump(mode="json"), sort_keys=False))
    with contextlib.chdir(tmp_path):
        stage.main()
    reason = json.loads((tmp_path / "metrics/sft.json").read_text())["reason"]
    assert "train split" in reason and "needs benign and restricted" in reason
