"""Optimizer and schedule: AdamW with decay/no-decay groups, linear warmup then cosine decay."""

from __future__ import annotations

import math

import torch

from lmpipe.params import PretrainParams


def param_groups(model, weight_decay: float):
    """Decay matrices (2-D weights) only; biases and LayerNorm gains are not regularized."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, p: PretrainParams) -> torch.optim.AdamW:
    """AdamW over the decay groups. fused=True: one kernel over all tensors (CUDA, and CPU since
    torch 2.4) instead of about a dozen elementwise ops per parameter tensor, so the optimizer step
    is several times faster on CPU and a loaded machine has far fewer OpenMP barriers to stall on."""
    return torch.optim.AdamW(param_groups(model, p.weight_decay), lr=p.lr, betas=(p.beta1, p.beta2),
                             fused=True)


def lr_at(step: int, p: PretrainParams, total: int) -> float:
    """Linear warmup to `lr`, then cosine decay that reaches lr * min_lr_ratio at the last step."""
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    progress = (step - p.warmup_steps) / max(1, total - 1 - p.warmup_steps)
    coeff = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return p.lr * (p.min_lr_ratio + (1 - p.min_lr_ratio) * coeff)


def total_steps(p: PretrainParams, world: int) -> int:
    """`max_tokens` (a token budget over all ranks) when set, else `max_steps`."""
    if p.max_tokens:
        per_step = p.batch_size * p.grad_accum * p.model.block_size * world
        return max(1, math.ceil(p.max_tokens / per_step))
    return p.max_steps
