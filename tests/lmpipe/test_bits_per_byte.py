"""lmpipe.bits_per_byte: the rolling windows lm-evaluation-harness uses, the bits-per-byte formula
on a model whose answer is known, and invariance to batching."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import tiny_lm
import torch

from lmpipe.bits_per_byte import bits_per_byte, document_logliks, rolling_windows, utf8_bytes

CPU = torch.device("cpu")


def test_windows_by_hand():
    # 7 tokens, context 3: the first window reads the prefix, later ones a full context back
    assert rolling_windows([10, 11, 12, 13, 14, 15, 16], prefix_id=0, context=3) == [
        ([0, 10, 11, 12], 3),
        ([12, 13, 14, 15], 3),
        ([13, 14, 15, 16], 1),
    ]
    assert rolling_windows([5, 6], prefix_id=0, context=8) == [([0, 5, 6], 2)]
    assert rolling_windows([], prefix_id=0, context=8) == []


@pytest.mark.parametrize("context", [1, 2, 5, 16])
def test_windows_score_every_token_once_within_the_context(context):
    rng = random.Random(context)
    for n in range(0, 40):
        tokens = [rng.randint(2, 99) for _ in range(n)]
        windows = rolling_windows(tokens, prefix_id=1, context=context)
        scored = [t for seq, k in windows for t in seq[-k:]]
        assert scored == tokens
        assert all(len(seq) - 1 <= context and 1 <= k <= len(seq) - 1 for seq, k in windows)
        if tokens:
            assert windows[0][0][0] == 1


def test_windows_are_the_harness_windows():
    utils = pytest.importorskip("lm_eval.utils")  # the bench extra
    rng = random.Random(0)
    for _ in range(500):
        tokens = [rng.randint(2, 99) for _ in range(rng.randint(0, 50))]
        context = rng.randint(1, 12)
        theirs = [utils.make_disjoint_window(w)
                  for w in utils.get_rolling_token_windows(tokens, 1, context, 1)]
        # what the harness's HFLM then feeds the model: context + continuation, cut to max_length + 1
        theirs = [((a + b)[-(context + 1):][:-1], b) for a, b in theirs]
        ours = [(seq[:-1], seq[-k:]) for seq, k in rolling_windows(tokens, 1, context)]
        assert ours == theirs


class UniformLM(torch.nn.Module):
    """Equal logits for every token: log p = -ln(vocab) at every position."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


def test_uniform_model_costs_log2_vocab_bits_per_token():
    tok = tiny_lm.tokenizer()
    texts = tiny_lm.SENTENCES
    tokens = sum(len(tok(t)["input_ids"]) for t in texts)
    expected = tokens * math.log2(len(tok)) / utf8_bytes(texts)
    assert bits_per_byte(UniformLM(len(tok)), tok, texts, 4, 3, CPU) == pytest.approx(expected, rel=1e-6)  # fp32 log-softmax
    assert utf8_bytes(["Björn"]) == 6  # bytes, not characters


def test_documents_that_fit_the_context_are_one_forward_each():
    tok = tiny_lm.tokenizer()
    model = tiny_lm.lm(tok, n_positions=64)
    logliks = document_logliks(model, tok, tiny_lm.SENTENCES, 64, 4, CPU)
    for text, ll in zip(tiny_lm.SENTENCES, logliks):
        ids = torch.tensor([[tok.bos_token_id, *tok(text)["input_ids"]]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids[:, :-1]).logits.float(), dim=-1)
        expected = logp[0].gather(-1, ids[0, 1:, None]).sum().item()
        assert ll == pytest.approx(expected, rel=1e-5)


def test_batching_and_padding_do_not_change_the_result():
    tok = tiny_lm.tokenizer()
    model = tiny_lm.lm(tok, n_positions=8)  # long documents: several windows each, a short last one
    texts = tiny_lm.SENTENCES + [""]
    one = document_logliks(model, tok, texts, 8, 1, CPU)
    many = document_logliks(model, tok, texts, 8, 7, CPU)
    np.testing.assert_allclose(one, many, rtol=1e-5)
    assert one[-1] == 0.0  # an empty document has no token and no byte
    first = bits_per_byte(model, tok, texts, 8, 7, CPU)
    assert first == bits_per_byte(model, tok, texts, 8, 7, CPU)  # deterministic
    assert first == pytest.approx(-one.sum() / (math.log(2) * utf8_bytes(texts)), rel=1e-5)


def test_restores_training_mode_and_handles_no_text():
    tok = tiny_lm.tokenizer()
    model = tiny_lm.lm(tok).train()
    bits_per_byte(model, tok, ["Rain fell."], 16, 2, CPU)
    assert model.training
    assert math.isnan(bits_per_byte(model, tok, [], 16, 2, CPU))
    with pytest.raises(ValueError, match="batch_size"):
        document_logliks(model, tok, ["x"], 16, 0, CPU)
