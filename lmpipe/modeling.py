"""Shared model-side helpers: token shards, batches, LM loss, FLOPs and peaks, quiet loading.

Pretraining, fine-tuning (replay) and evaluation all read the same `.bin` shards and measure
language-modelling loss the same way, so the "forgetting" that evaluation reports compares like
with like.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmpipe.io import StageError
from lmpipe.paths import TOKENS
from lmpipe.runtime import autocast

TOKENS_DIR = TOKENS

# Dense bf16 peak FLOP/s by device-name substring (vendor datasheets, no sparsity).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
              "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


def peak_flops(device: torch.device, cpu_peak: float) -> float:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_FLOPS.items():
            if key in name:
                return flops
    return cpu_peak


def flops_per_token(n_params: int, n_layer: int, n_head: int, head_dim: int, seq_len: int) -> float:
    """Training FLOPs per token, PaLM appendix B as in nanoGPT: 6N for the weights' forward and
    backward matmuls plus 12·L·H·Q·T for attention scores and values."""
    return 6 * n_params + 12 * n_layer * n_head * head_dim * seq_len


def load_meta() -> dict:
    path = TOKENS_DIR / "meta.json"
    if not path.exists():
        raise StageError(f"missing {path}: run the tokenize stage first")
    return json.loads(path.read_text())


def open_shard(split: str, meta: dict) -> np.ndarray:
    """Memory-map a shard read-only: the OS pages it in, so corpora larger than RAM work."""
    path = TOKENS_DIR / f"{split}.bin"
    if not path.exists():
        raise StageError(f"missing {path}: run the tokenize stage first")
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")


def sample_blocks(data: np.ndarray, block: int, batch: int, rng: np.random.Generator):
    """Random (input, target) windows of `block` tokens, target shifted by one.

    One vectorized gather from the memory map (no Python loop over rows), and both tensors come
    back contiguous int64, so neither the embedding nor the loss has to copy them again."""
    if len(data) <= block + 1:
        raise StageError(f"shard has {len(data)} tokens, fewer than block_size+1 ({block + 1})")
    starts = rng.integers(0, len(data) - block - 1, size=batch)
    rows = np.asarray(data[starts[:, None] + np.arange(block + 1)], dtype=np.int64)
    return torch.from_numpy(np.ascontiguousarray(rows[:, :-1])), torch.from_numpy(np.ascontiguousarray(rows[:, 1:]))


def lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a causal LM (any module returning `.logits`).

    use_cache=False: transformers otherwise builds a KV cache (a copy of every layer's keys and
    values) on each training forward. Logits are upcast only when autocast made them low-precision:
    the loss over a large vocabulary wants fp32."""
    logits = model(input_ids=x, use_cache=False).logits
    if logits.dtype != torch.float32:
        logits = logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


class LMLoss(torch.nn.Module):
    """`lm(x)` and its next-token loss as one module: what pretraining wraps in DDP and compiles.

    With `torch.compile` the loss is then inside the compiled graph, so the compiler fuses the
    vocabulary-sized tail (logits upcast, log-softmax, NLL) instead of writing and re-reading
    B x T x vocab tensors; `bench/pretrain.py --device cuda --compile` measures what that is worth.
    Eager, it is exactly `lm_loss`."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return lm_loss(self.lm, x, y)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host batch to `device`. On CUDA through pinned memory, so the copy can be asynchronous
    (from pageable memory the host stages it synchronously), as nanoGPT's get_batch does."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@torch.no_grad()
def eval_lm_loss(model, data: np.ndarray, block: int, batch: int, batches: int, seed: int,
                 device: torch.device, dtype: str = "auto") -> float:
    """Mean LM loss on `batches` fixed random windows (same windows for every model compared)."""
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(seed)
    total = torch.zeros((), device=device)
    for _ in range(batches):
        x, y = sample_blocks(data, block, batch, rng)
        with autocast(device, dtype):
            total += lm_loss(model, to_device(x, device), to_device(y, device)).float()
    model.train(was_training)
    return total.item() / batches  # one device sync, not one per batch


def unigram_loss(train: np.ndarray, validation: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of the validation shard under the train shard's unigram
    distribution (add-one smoothed): the loss of a model that ignores context. A pretrained model
    must beat it, or it learned nothing about context."""
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    val_counts = np.bincount(validation, minlength=vocab_size)
    return float(-(val_counts * logp).sum() / max(1, val_counts.sum()))


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


class _HoldLoadReport(logging.Filter):
    """Keeps transformers' LOAD REPORT table back, so the caller decides whether it is news."""

    def __init__(self):
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            self.held.append(record)
            return False
        return True


@contextlib.contextmanager
def no_progress_bars():
    """transformers' per-call progress bars (loading, writing shards) off for a while: in a stage
    log each is a redrawn line with nothing to act on."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_quietly(cls, path: str | Path, *, stage: str, new: Iterable[str] = (), dropped: Iterable[str] = (),
                 **kwargs):
    """`cls.from_pretrained(path, **kwargs)` with one line instead of transformers' LOAD REPORT table
    when the keys it reports are the expected ones: `new` weights the checkpoint lacks (a classifier
    head added to models/base) or `dropped` ones `cls` has no place for (the head of models/finetuned
    when its body is loaded as a language model). Any other missing, unexpected or mismatched key
    is a real problem, and transformers' full report is logged as usual."""
    logger = logging.getLogger("transformers.modeling_utils")
    hold = _HoldLoadReport()
    logger.addFilter(hold)
    try:
        with no_progress_bars():
            model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    finally:
        logger.removeFilter(hold)
    missing, unexpected = set(info["missing_keys"]), set(info["unexpected_keys"])
    if missing - set(new) or unexpected - set(dropped) or info["mismatched_keys"]:
        for record in hold.held:
            logger.handle(record)
    notes = []
    if missing & set(new):
        notes.append(f"new {', '.join(sorted(missing & set(new)))} (not in the checkpoint: initialized here)")
    if unexpected & set(dropped):
        notes.append(f"left out {', '.join(sorted(unexpected & set(dropped)))} (no place for it in {cls.__name__})")
    if notes:
        print(f"[{stage}] {cls.__name__} from {path}: {'; '.join(notes)}", flush=True)
    return model
