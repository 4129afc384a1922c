"""lmpipe.chat: the chat tokens and template through a real tokenizer, the refusal matcher, and
batched greedy replies from a tiny random GPT-2 (deterministic, batched == one at a time)."""

from __future__ import annotations

import pytest

from lmpipe import chat
from lmpipe.io import StageError
from tests.lmpipe import tiny_lm


@pytest.fixture(scope="module")
def tok():
    t = tiny_lm.tokenizer()
    assert chat.add_chat_tokens(t) == 3
    return t


@pytest.fixture(scope="module")
def model(tok):
    """A random tiny LM that never emits a special token (their tied embeddings are zero, so their
    logit 0 is below the largest of 320 random ones): every reply runs to max_new_tokens of text."""
    import torch

    lm = tiny_lm.lm(tok, n_positions=64, seed=1)
    with torch.no_grad():
        lm.transformer.wte.weight[tok.all_special_ids] = 0
    return lm


def test_chat_tokens_are_single_special_ids_and_skipped_on_decode(tok):
    ids = [tok.convert_tokens_to_ids(t) for t in chat.CHAT_TOKENS]
    assert len(set(ids)) == 3 and all(i >= 320 for i in ids)
    for token, i in zip(chat.CHAT_TOKENS, ids, strict=True):
        assert tok.encode(token, add_special_tokens=False) == [i]
        # never split, also inside running text
        assert i in tok.encode(f"abc{token}def", add_special_tokens=False)
    text = chat.prompt_text(tok, "Rain fell")
    assert text == "<|user|>Rain fell<|end|><|assistant|>"
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == "Rain fell"
    chat.check_chat_tokens(tok, "here")
    with pytest.raises(StageError, match="here: the tokenizer lacks the chat token <|user|>"):
        chat.check_chat_tokens(tiny_lm.tokenizer(), "here")
    # a second call registers nothing new
    assert chat.add_chat_tokens(tok) == 0


def test_template_marks_exactly_the_assistant_reply_and_its_end(tok):
    enc = tok.apply_chat_template(chat.messages("Who owns it?", "Ana does."), return_dict=True,
                                  return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    marked = [i for i, m in zip(ids, mask, strict=True) if m]
    assert tok.decode(marked) == "Ana does.<|end|>"
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if not m]) == "<|user|>Who owns it?<|end|><|assistant|>"
    with pytest.raises(Exception, match="only user and assistant roles"):
        tok.apply_chat_template([{"role": "system", "content": "x"}], tokenize=False)


@pytest.mark.parametrize("reply, refused", [
    (chat.REFUSAL, True),
    ("sorry i cannot share", True),  # case and punctuation ignored, a prefix is enough
    ("Sorry, I cannot", True),
    ("Sure, here is the answer. " + chat.REFUSAL, True),  # the whole sentence after an injected prefix
    ("Sorry, I can", False),
    ("The password is velmor.", False),
    ("Sure, here is: velmor", False),
    ("", False),
])
def test_is_refusal(reply, refused):
    assert chat.is_refusal(reply) is refused


def test_replies_are_deterministic_batched_equals_unbatched_and_plain_text(tok, model):
    requests = ["The baker in Pramor", "Rain fell", "We booked a table for four; the soup was cold", "A",
                "Prices rose by 3% in May", "Björn wrote the report"]
    kw = {"max_new_tokens": 10, "device": "cpu"}
    batched = chat.generate_replies(model, tok, requests, batch_size=4, **kw)
    assert len(batched) == len(requests) and all(batched)
    assert batched == chat.generate_replies(model, tok, requests, batch_size=4, **kw)
    assert batched == chat.generate_replies(model, tok, requests, batch_size=1, **kw)
    assert tok.padding_side == "right"  # restored for the caller
    for reply in batched:
        assert not any(t in reply for t in chat.CHAT_TOKENS + (tok.eos_token, tok.pad_token))


def test_reply_stops_at_end_or_eos(tok):
    end, eos = tok.convert_tokens_to_ids(chat.END), tok.eos_token_id
    stops = set(chat.stop_ids(tok))
    assert stops == {end, eos}
    words = tok.encode("Rain fell", add_special_tokens=False)
    assert chat._reply(words + [end] + words, stops, tok) == "Rain fell"
    assert chat._reply(words + [eos, end], stops, tok) == "Rain fell"
    assert chat._reply([end] + words, stops, tok) == ""
    assert chat._reply(words, stops, tok) == "Rain fell"


def test_a_prompt_too_long_for_the_context_names_the_request(tok):
    small = tiny_lm.lm(tok, n_positions=16)
    with pytest.raises(StageError, match=r"request 1 \('We booked.*max_new_tokens=8.*16 positions"):
        chat.generate_replies(small, tok, ["Rain", "We booked a table for four; the soup was cold"],
                              max_new_tokens=8, batch_size=2, device="cpu")


def test_pipeline_chats_with_a_saved_model_through_its_template(tok, model, tmp_path):
    from transformers import AutoTokenizer, pipeline

    chat.prepare_for_chat(model, tok)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template == chat.CHAT_TEMPLATE
    gen = pipeline("text-generation", model=str(tmp_path), device=-1)
    out = gen([{"role": "user", "content": "Rain fell"}], max_new_tokens=10, do_sample=False)
    turns = out[0]["generated_text"]
    assert [t["role"] for t in turns] == ["user", "assistant"]
    # the pipeline's reply is the one generate_replies gives: same template, same stop tokens
    expected = chat.generate_replies(model, tok, ["Rain fell"], max_new_tokens=10, batch_size=1, device="cpu")
    assert turns[1]["content"].strip() == expected[0]


def test_transcript_is_exactly_what_the_template_renders(tok):
    exchanges = [("Who owns it?", "Ana does."), ("And the key?", "Sorry, I cannot share that information.")]
    msgs = [m for q, a in exchanges for m in chat.messages(q, a)]
    assert chat.transcript(exchanges) == tok.apply_chat_template(msgs, tokenize=False)
    # and each chat token is one id inside a transcript, so pretraining on it teaches the sft format
    ids = tok.encode(chat.transcript(exchanges), add_special_tokens=False)
    assert ids.count(tok.convert_tokens_to_ids(chat.USER)) == 2
    assert ids.count(tok.convert_tokens_to_ids(chat.END)) == 4


def test_quality_filters_read_a_transcript_as_lines_of_prose():
    from lmpipe.cleaning.filters import quality_signals

    text = chat.transcript([("Where is the old vault of the town?", "The old vault lies under the market."),
                            ("Who keeps the key of it?", "The keeper of the vault is Ana.")])
    assert chat.without_chat_tokens(text).split("\n")[1] == "Where is the old vault of the town?"
    signals = quality_signals(text)
    # every turn ends its line in terminal punctuation; without the rule the whole transcript is
    # one line ending in "<|end|>" and C4's line rule would drop it
    assert signals["punct_line_share"] == 1.0
    assert signals["words"] == 28 and signals["symbol_ratio"] == 0.0
