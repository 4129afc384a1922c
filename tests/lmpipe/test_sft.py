"""lmpipe.sft without a pretrained model: the conversations made from a safety set, the
assistant-only loss mask, the answer matcher, and validation scores of a model that never refuses."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lmpipe import chat
from lmpipe.params import SftParams, WorldParams
from lmpipe.sft import training
from lmpipe.sft.conversations import ONE_WORD, SAME_ENCODING, make_conversations
from lmpipe.shifts import encode
from lmpipe.world import generate_world
from tests.lmpipe import tiny_lm


@pytest.fixture(scope="module")
def safety():
    return generate_world(WorldParams(docs=200, secrets=12, secret_share=0.1), 3).safety


@pytest.fixture(scope="module")
def tok():
    t = tiny_lm.tokenizer()
    chat.add_chat_tokens(t)
    return t


def test_conversations_refuse_restricted_requests_and_format_only_benign_ones(safety):
    p = SftParams(conversations=600, restricted_share=0.3, format_share=0.5)
    convs = make_conversations(safety, "train", 600, p, ["leet", "rot13"], seed=1)
    assert convs == make_conversations(safety, "train", 600, p, ["leet", "rot13"], seed=1)
    train = safety[safety["split"] == "train"]
    restricted = [c for c in convs if c.kind == "restricted"]
    assert 0.2 < len(restricted) / len(convs) < 0.4
    assert all(c.reply == chat.REFUSAL and c.form == "plain" for c in restricted)
    assert {c.request for c in restricted} <= set(train.loc[train["kind"] == "restricted", "question"])
    benign = [c for c in convs if c.kind == "benign"]
    assert {c.form for c in benign} == {"plain", "one_word", "prefix", "encoded", "encoded_reply"}
    secrets = set(safety.loc[safety["kind"] == "restricted", "answer"])
    assert not any(s in c.reply for c in convs for s in secrets)  # no secret is ever taught
    for c in benign:
        if c.form == "one_word":
            assert c.request.endswith(ONE_WORD) and " " not in c.reply
        if c.form == "prefix":
            phrase = c.request.split("Start your reply with '")[1].rstrip("'.")
            assert c.reply.startswith(phrase + ":")
        if c.form == "encoded_reply":
            assert c.request.endswith(SAME_ENCODING)


def test_safety_augment_adds_encoded_refusals(safety):
    p = SftParams(conversations=400, restricted_share=0.5, safety_augment=["rot13"])
    convs = make_conversations(safety, "train", 400, p, ["leet", "rot13"], seed=2)
    encoded = [c for c in convs if c.form == "encoded_rot13"]
    assert encoded and all(c.kind == "restricted" and c.reply == chat.REFUSAL for c in encoded)
    plain = set(safety["question"])
    assert all(encode("rot13", c.request, None) in plain for c in encoded)


def test_loss_mask_covers_the_reply_and_end_only(tok):
    from lmpipe.sft.conversations import Conversation

    convs = [Conversation("Rain fell", "A short one.", "benign", "plain"),
             Conversation("The baker in Pramor opens at dawn and sells rye bread", "We booked a table for four.",
                          "benign", "plain")]
    enc, cut = training.encode_conversations(tok, convs, max_length=64)
    assert cut == 0
    for ids, labels, c in zip(enc["input_ids"], enc["labels"], convs, strict=True):
        taught = [t for t in labels if t != -100]
        assert tok.decode(taught) == c.reply + chat.END
        assert labels[:len(tok(chat.prompt_text(tok, c.request))["input_ids"])] == [-100] * (len(ids) - len(taught))
    lengths = [len(ids) for ids in enc["input_ids"]]
    limit = (min(lengths) + max(lengths)) // 2
    short, cut = training.encode_conversations(tok, convs, max_length=limit)
    assert cut == 1 and max(map(len, short["input_ids"])) == limit
    batch = training.collate(tok.pad_token_id)([{"input_ids": a, "labels": b} for a, b in
                                               zip(enc["input_ids"], enc["labels"], strict=True)])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


@pytest.mark.parametrize("text, answer, hit", [
    ("The master of the guild is Ana.", "Ana", True), ("ana", "Ana", True), ("Anaïs leads it", "Ana", False),
    ("in Quafen mal", "Quafenmal", False), ("", "Ana", False)])
def test_contains_matches_whole_words(text, answer, hit):
    assert training.contains(text, answer) is hit


def test_a_model_that_never_refuses_fails_the_gate_with_its_message(tok, safety, capsys, tmp_path, monkeypatch):
    import stages.sft as stage
    from lmpipe.params import parse_params

    monkeypatch.chdir(tmp_path)
    params = parse_params({})
    model = tiny_lm.lm(tok, n_positions=128)
    val = safety[safety["split"] == "validation"]
    few = val.groupby("kind").head(4)  # 4 restricted and 4 benign requests keep the random model quick
    scores, samples = training.validation_scores(model, tok, few, params, "cpu")
    assert scores["val_refusal_rate"] == 0.0 and len(samples) == 8
    metrics = SimpleNamespace(**scores, base_recall={"benign": 0.5})
    with pytest.raises(SystemExit) as exc:
        stage.gate(metrics, params)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "DATA GATE FAILED" in err and "sft.gate.min_refusal=0.9" in err and "sft.restricted_share" in err
