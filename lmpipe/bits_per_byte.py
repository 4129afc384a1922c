"""Bits per byte of a causal LM over whole documents, the way lm-evaluation-harness scores a
`loglikelihood_rolling` task, so that its `bits_per_byte` and ours are the same number.

Per document: the text is tokenized as the harness does (`tokenizer(text)`, special tokens as the
tokenizer adds them by default), the first token is predicted from a prefix token (BOS, or EOS when
the tokenizer has no BOS), and the tokens are cut into disjoint windows of the model's context:
every token is predicted exactly once; the first window conditions on the prefix, every later one
on the tokens before it within one context length. Then

    bits per byte = -sum(log-likelihood) / (ln 2 * sum(UTF-8 bytes of each document))

Bytes, not tokens, are the denominator, so models with different tokenizers compare directly.
The windows are fixed by the documents alone (no sampling) and batched longest first, so the
result is deterministic for a model and a split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from lmpipe.io import read_parquet
from lmpipe.paths import CLEAN

VALIDATION_DOCS = CLEAN / "validation.parquet"


def validation_texts() -> list[str]:
    """The cleaned validation documents, exactly as stored (the text lm-eval would be given)."""
    return read_parquet(VALIDATION_DOCS, ["text"])["text"].tolist()


def rolling_windows(tokens: Sequence[int], prefix_id: int, context: int) -> list[tuple[list[int], int]]:
    """Disjoint prediction windows of one document: (sequence, k) pairs where the model reads
    `sequence[:-1]` (at most `context` tokens) and the last `k` of its predictions, which are
    `sequence[-k:]`, are scored. Together the windows score each token exactly once."""
    tokens = list(tokens)
    if not tokens:
        return []
    first = min(context, len(tokens))
    windows = [([prefix_id, *tokens[:first]], first)]
    done = first
    while done < len(tokens):
        k = min(context, len(tokens) - done)
        end = done + k
        # the window ends at the last token to predict and starts a full context before it
        windows.append((tokens[end - context - 1:end], k))
        done = end
    return windows


@torch.inference_mode()
def _window_logliks(model, windows: list[tuple[list[int], int]], batch_size: int, pad_id: int,
                    device: torch.device) -> np.ndarray:
    """Summed log-likelihood of the scored tokens of each window (float64, in window order)."""
    out = np.zeros(len(windows), dtype=np.float64)
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(windows[r][0]) - 1 for r in rows)
        x = torch.full((len(rows), width), pad_id, dtype=torch.long)
        y = torch.zeros((len(rows), width), dtype=torch.long)
        scored = torch.zeros((len(rows), width), dtype=torch.bool)
        for j, r in enumerate(rows):
            seq, k = windows[r]
            n = len(seq) - 1
            x[j, :n] = torch.tensor(seq[:-1])
            y[j, :n] = torch.tensor(seq[1:])
            scored[j, n - k:n] = True
        mask = (torch.arange(width)[None, :] < torch.tensor([len(windows[r][0]) - 1 for r in rows])[:, None])
        logits = model(input_ids=x.to(device), attention_mask=mask.long().to(device), use_cache=False).logits
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, y.to(device)[..., None])[..., 0]
        sums = torch.where(scored.to(device), logp, torch.zeros_like(logp)).double().sum(dim=1)
        out[rows] = sums.cpu().numpy()
    return out


def document_logliks(model, tokenizer, texts: Sequence[str], block_size: int, batch_size: int,
                     device: torch.device) -> np.ndarray:
    """Log-likelihood (nats) of each whole document under `model`, read in windows of
    `block_size` tokens (the model's context)."""
    if batch_size < 1 or block_size < 1:
        raise ValueError(f"batch_size and block_size must be positive (got {batch_size}, {block_size})")
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix
    # verbose=False: documents longer than the tokenizer's model_max_length are expected (they are
    # cut into windows below), so its "longer than the specified maximum" warning is noise here
    ids = tokenizer(list(texts), verbose=False)["input_ids"] if len(texts) else []
    windows, owner = [], []
    for doc, tokens in enumerate(ids):
        for window in rolling_windows(tokens, prefix, block_size):
            windows.append(window)
            owner.append(doc)
    was_training = model.training
    model.eval()
    try:
        per_window = _window_logliks(model, windows, batch_size, pad, device)
    finally:
        model.train(was_training)
    per_doc = np.zeros(len(ids), dtype=np.float64)
    np.add.at(per_doc, np.asarray(owner, dtype=np.int64), per_window)
    return per_doc


def utf8_bytes(texts: Sequence[str]) -> int:
    return sum(len(t.encode("utf-8")) for t in texts)


def bits_per_byte(model, tokenizer, texts: Sequence[str], block_size: int, batch_size: int,
                  device: torch.device) -> float:
    """Bits per UTF-8 byte of `texts` (whole documents) under a causal LM; NaN when the texts
    hold no bytes."""
    if isinstance(texts, pd.Series):
        texts = texts.tolist()
    n_bytes = utf8_bytes(texts)
    if n_bytes == 0:
        return float("nan")
    loglik = document_logliks(model, tokenizer, texts, block_size, batch_size, device).sum()
    return float(-loglik / (math.log(2) * n_bytes))
