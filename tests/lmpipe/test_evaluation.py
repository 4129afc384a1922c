"""lmpipe.evaluation on a tiny random GPT-2: batching that does not change predictions, the
per-character LM loss, the task metrics and their typed result, and which max_length the
classifier is read with. (The capability section and its verdicts: test_capability.py.)"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tiny_lm
import torch

from lmpipe import capability, evaluation
from lmpipe.io import StageError
from lmpipe.params import EvaluateParams

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tok():
    t = tiny_lm.tokenizer()
    t.padding_side = "right"
    return t


def test_length_sorted_batches_do_not_change_predictions(tok):
    model = tiny_lm.classifier(tok)
    texts = tiny_lm.SENTENCES * 3
    batched = evaluation.predict(model, tok, texts, 5, 24, CPU)
    single = np.concatenate([evaluation.predict(model, tok, [t], 1, 24, CPU) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, atol=1e-6)


def test_per_char_loss_is_the_same_surprisal_over_the_predicted_characters(tok):
    lm = tiny_lm.lm(tok, n_positions=32)
    ids = evaluation.encode(tok, tiny_lm.SENTENCES[:3])
    loss = evaluation.text_lm_loss(lm, tok, ids, 2, 32, CPU)
    chars = sum(len(tok.decode(x[1:32])) for x in ids)
    tokens = sum(len(x[:32]) - 1 for x in ids)
    assert loss["per_char"] == pytest.approx(loss["per_token"] * tokens / chars, rel=1e-6)
    other_batches = evaluation.text_lm_loss(lm, tok, ids, 3, 32, CPU)
    assert loss["per_token"] == pytest.approx(other_batches["per_token"], rel=1e-5)


def task_data(n: int = 24) -> evaluation.TaskData:
    texts = [tiny_lm.SENTENCES[i % len(tiny_lm.SENTENCES)] + f" {i}" for i in range(n)]
    test = pd.DataFrame({"text": texts, "label": [i % 2 for i in range(n)]})
    upper = pd.DataFrame({"text": [t.upper() for t in texts], "label": test["label"]})
    return evaluation.TaskData(["negative", "positive"], test, {"upper": upper})


def test_task_metrics_and_their_typed_result(tok):
    data, p = task_data(), EvaluateParams(bootstrap=50)
    model = tiny_lm.classifier(tok)
    ids = {"id": evaluation.encode(tok, data.test["text"]), "upper": evaluation.encode(tok, data.shifts["upper"]["text"])}
    result = evaluation.evaluate_task(model, ids, data, p, 7, 24, tok.pad_token_id, CPU)
    task = result.metrics
    assert list(task) == ["id", "shift", "gap"]
    assert np.array(task["id"]["confusion"]).sum() == len(data.test) == task["id"]["n"]
    assert task["id"]["accuracy"] == pytest.approx((result.y_pred == result.y_true).mean())
    assert task["gap"]["upper"] == pytest.approx(task["id"]["accuracy"] - task["shift"]["upper"]["accuracy"])
    assert task["gap"]["mean"] == task["gap"]["max"] == task["gap"]["upper"]
    lo, hi = task["gap"]["upper_ci"]
    assert lo <= hi
    lm = tiny_lm.lm(tok, n_positions=32)
    labels = {"id": data.test["label"].to_numpy(), "upper": data.shifts["upper"]["label"].to_numpy()}
    cap = capability.capability(lm, tok, ids, labels, task["gap"], p, seed=7, max_length=24, n_classes=2, device=CPU)
    assert cap["upper"]["verdict"] in capability.VERDICTS and cap["ratio_threshold"] == p.capability_ratio
    ev = evaluation.Evaluation(result, {"ppl_base": 2.0}, cap, {"params": 1}, data.label_names)
    metrics = ev.metrics()
    assert list(metrics) == ["task", "lm", "capability", "efficiency", "labels"]
    assert not [k for k in metrics if k.startswith("_")]


def test_trained_max_length_prefers_what_finetune_recorded():
    tok = tiny_lm.tokenizer()
    tok.model_max_length = 1 << 30  # a tokenizer saved without it
    assert evaluation.trained_max_length(tok, 48, 128) == 48
    with pytest.raises(StageError, match="rerun the finetune stage"):
        evaluation.trained_max_length(tok, "auto", 128)
    tok.model_max_length = 57
    assert evaluation.trained_max_length(tok, "auto", 128) == 57
    assert evaluation.trained_max_length(tok, 48, 128) == 57
