"""Sections of the model stages: pretrain, finetune, evaluate, generate and report."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lmpipe.params.base import Section


class ModelShape(Section):
    n_layer: int = Field(4, ge=1, le=96)
    n_head: int = Field(4, ge=1, le=128)
    n_embd: int = Field(128, ge=8, le=16384)
    block_size: int = Field(128, ge=8, le=32768)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


class GatePretrain(Section):
    max_val_loss_ratio: float = Field(1.0, gt=0)  # val_loss must be < ratio * unigram_loss


class PretrainParams(Section):
    model: ModelShape = ModelShape()
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 autocast on CUDA
    nproc: int = Field(2, ge=1, le=1024)  # >1: DDP via torchrun, one process per device/core
    # multi-node DDP through torchrun's c10d rendezvous (lmpipe/pretraining/launch.py): every node
    # runs the stage with the same nnodes / rdzv_endpoint / rdzv_id and its own node_rank
    nnodes: int = Field(1, ge=1, le=4096)
    node_rank: int = Field(0, ge=0)
    rdzv_endpoint: str = ""  # host:port that every node reaches (node 0 hosts it); needed when nnodes > 1
    rdzv_id: str = "lmpipe"  # names the run at the endpoint: a new id for a new run on the same endpoint
    compile: bool = False  # torch.compile: faster steps on GPU after a one-off compile cost
    threads: int = Field(0, ge=0)  # CPU threads; 0 = all cores
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_steps: int = Field(450, ge=1)
    max_tokens: int = Field(0, ge=0)  # token budget; overrides max_steps when > 0
    lr: float = Field(3e-3, gt=0, le=1.0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1.0)
    warmup_steps: int = Field(40, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)
    eval_every: int = Field(100, ge=1)
    eval_batches: int = Field(20, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(20, ge=1)
    cpu_peak_flops: float = Field(2.0e11, gt=0)  # for MFU on CPU; no reliable table exists
    gate: GatePretrain = GatePretrain()

    @model_validator(mode="after")
    def _nodes_meet(self) -> PretrainParams:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank={self.node_rank} must be below nnodes={self.nnodes}")
        if self.nnodes > 1 and not re.fullmatch(r"[\w.-]+:\d{1,5}", self.rdzv_endpoint):
            raise ValueError(f"nnodes={self.nnodes} needs rdzv_endpoint as host:port, got {self.rdzv_endpoint!r}")
        return self


# --- finetune -----------------------------------------------------------------------------------


class LoraParams(Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    # which GPT-2 modules get adapters: attention = attn.c_attn + attn.c_proj; attention_mlp adds
    # mlp.c_fc + mlp.c_proj. (A bare "c_proj" would match both the attention and the MLP projection.)
    targets: Literal["attention", "attention_mlp"] = "attention"


class GateFinetune(Section):
    min_val_accuracy: float = Field(0.6, ge=0, le=1)
    min_class_share: float = Field(0.25, ge=0, le=1)
    max_truncated_share: float = Field(0.05, ge=0, le=1)


class FinetuneParams(Section):
    method: Literal["full", "freeze", "lora"] = "full"
    freeze_layers: int = Field(2, ge=0)  # bottom blocks frozen (with embeddings) when method=freeze
    lora: LoraParams = LoraParams()
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-4, gt=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    # tokens per example; auto = max_length_percentile of the tokenized train lengths, capped at the
    # model's positions, so a real task is not silently truncated and a short one wastes no compute
    max_length: int | Literal["auto"] = "auto"
    max_length_percentile: float = Field(99.0, ge=50, le=100)
    early_stopping_patience: int = Field(1, ge=0)  # 0 = off
    replay_weight: float = Field(0.0, ge=0)  # lambda: + lambda * LM loss on pretraining blocks
    replay_batch_size: int = Field(8, ge=1)
    augment: list[str] = []  # shift names applied to a share of training examples
    augment_share: float = Field(0.2, ge=0, le=1)
    threads: int = Field(1, ge=0)
    gate: GateFinetune = GateFinetune()

    @field_validator("max_length")
    @classmethod
    def _long_enough(cls, value: int | str) -> int | str:
        if value != "auto" and value < 8:
            raise ValueError(f"must be 'auto' or at least 8 tokens (got {value})")
        return value


# --- evaluate / generate / report ---------------------------------------------------------------


class GateEvaluate(Section):
    min_id_accuracy: float = Field(0.0, ge=0, le=1)
    max_forgetting: float = Field(1e9, ge=0)


class EvaluateParams(Section):
    batch_size: int = Field(64, ge=1)
    bootstrap: int = Field(1000, ge=10)
    ece_bins: int = Field(10, ge=2)
    latency_runs: int = Field(30, ge=1)
    lm_batches: int = Field(16, ge=1)
    capability_rows: int = Field(128, ge=1)  # texts per split for the capability check
    # verdicts per shift: base-model LM loss per character at most this many times its loss on
    # plain text = "the model can read it" (encodings never seen in pretraining sit at 3x or more)
    capability_ratio: float = Field(1.5, gt=1.0)
    gap_threshold: float = Field(0.05, ge=0, le=1)  # accuracy gap that counts as "did not transfer"
    # Capability probe: a logistic regression on the frozen base model's mean-pooled hidden states,
    # fit on probe_k labelled rows of each shifted split and scored on the others. It asks whether
    # the base model's representations carry the task signal for that text, which an LM-loss
    # ratio (the text looks familiar) cannot tell.
    probe_k: int = Field(64, ge=4)
    probe_layer: int = -1  # hidden layer that feeds the probe; -1 = the last
    probe_margin: float = Field(0.1, ge=0, le=1)  # probe CI lower bound above chance + this = "can read it"
    # ... and its lead over the same probe on an untrained twin model (paired CI lower bound) above
    # this: the reading comes from pretraining, not from the probe fitting surface cues
    probe_control_margin: float = Field(0.05, ge=0, le=1)
    gate: GateEvaluate = GateEvaluate()


class GenerateParams(Section):
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(0.8, ge=0)  # 0 = greedy
    top_k: int = Field(40, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    samples_per_prompt: int = Field(1, ge=1)
    # without a prompts file (files/hf sources): this many prompts, each the first prompt_words
    # words of a seeded sample of cleaned validation documents
    num_prompts: int = Field(16, ge=1)
    prompt_words: int = Field(8, ge=1)


class ReportParams(Section):
    title: str = "lmpipe report"
