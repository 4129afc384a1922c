"""Typed schema for params.yaml.

Every stage calls `load_params()` before doing any work: an unknown key, a wrong type or an
out-of-range value stops it with a one-line error naming the key (exit code 2), so a typo in a
`dvc exp run -S` override never silently trains the wrong model.

Sections are frozen pydantic models with `extra="forbid"`; the stage that owns a section documents
its knobs here, next to their bounds, so params.yaml and this file read as one reference.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stages.cleaning import CleanParams
from stages.world import WorldParams

PARAMS_FILE = Path(os.environ.get("LMPIPE_PARAMS", "params.yaml"))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- ingest -------------------------------------------------------------------------------------


class FilesSource(Section):
    """Local files: corpus globs (txt/jsonl/parquet/csv) and task files with text + label columns."""

    corpus: list[str] = []
    text_column: str = "text"
    task_train: str = ""
    task_validation: str = ""
    task_test: str = ""
    task_text_column: str = "text"
    label_column: str = "label"
    # label value in the files -> class index; empty means labels are already 0..K-1
    label_map: dict[str, int] = {}
    prompts: str = ""  # optional jsonl with {"prompt": ...}; default: first words of validation docs


class HubSpec(Section):
    """A `datasets.load_dataset` call: name (or builder such as "json"), config, data_files, split."""

    name: str
    config: str | None = None
    data_files: list[str] | None = None
    split: str = "train"
    text_column: str = "text"
    label_column: str = "label"


class HubSource(Section):
    corpus: HubSpec | None = None
    task_train: HubSpec | None = None
    task_validation: HubSpec | None = None
    task_test: HubSpec | None = None
    max_docs: int = Field(100_000, ge=1)


class GateIngest(Section):
    min_docs: int = Field(50, ge=1)
    min_task_rows: int = Field(20, ge=1)
    min_class_share: float = Field(0.25, ge=0.0, le=1.0)  # of each class in the train split


class DataParams(Section):
    source: Literal["world", "files", "hf"] = "world"
    files: FilesSource = FilesSource()
    hf: HubSource = HubSource()
    label_names: list[str] = ["negative", "positive"]  # for files/hf; the world defines its own
    shifts: list[str] = ["typos", "leet", "rot13", "negation"]  # made from a real test split
    max_bad_line_share: float = Field(0.01, ge=0.0, le=1.0)  # corrupt jsonl lines tolerated
    gate: GateIngest = GateIngest()


# --- tokenize -----------------------------------------------------------------------------------


class GateTokenize(Section):
    roundtrip_sample: int = Field(200, ge=1)
    min_chars_per_token: float = Field(1.5, gt=0)
    max_chars_per_token: float = Field(8.0, gt=0)


class TokenizeParams(Section):
    vocab_size: int = Field(4096, ge=300, le=1_000_000)
    min_frequency: int = Field(2, ge=1)
    pretrained: str = ""  # a path (or hub name, with a network) to use instead of training one
    batch_size: int = Field(1000, ge=1)
    gate: GateTokenize = GateTokenize()


# --- pretrain -----------------------------------------------------------------------------------


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
    nproc: int = Field(1, ge=1, le=1024)  # >1: DDP via torchrun, one process per device/core
    compile: bool = False  # torch.compile: faster steps on GPU after a one-off compile cost
    threads: int = Field(0, ge=0)  # CPU threads; 0 = all cores
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_steps: int = Field(600, ge=1)
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


# --- finetune -----------------------------------------------------------------------------------


class LoraParams(Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["c_attn", "c_proj"]


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
    max_length: int = Field(64, ge=8)
    early_stopping_patience: int = Field(0, ge=0)  # 0 = off
    replay_weight: float = Field(0.0, ge=0)  # lambda: + lambda * LM loss on pretraining blocks
    replay_batch_size: int = Field(8, ge=1)
    augment: list[str] = []  # shift names applied to a share of training examples
    augment_share: float = Field(0.2, ge=0, le=1)
    threads: int = Field(0, ge=0)
    gate: GateFinetune = GateFinetune()


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
    gate: GateEvaluate = GateEvaluate()


class GenerateParams(Section):
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(0.8, ge=0)  # 0 = greedy
    top_k: int = Field(40, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    samples_per_prompt: int = Field(1, ge=1)


class ReportParams(Section):
    title: str = "lmpipe report"


class Params(Section):
    seed: int = Field(1337, ge=0, lt=2**32)
    data: DataParams = DataParams()
    world: WorldParams = WorldParams()
    clean: CleanParams = CleanParams()
    tokenize: TokenizeParams = TokenizeParams()
    pretrain: PretrainParams = PretrainParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    generate: GenerateParams = GenerateParams()
    report: ReportParams = ReportParams()

    @model_validator(mode="after")
    def _sequences_fit_the_model(self):
        # GPT-2 has learned positions: the classifier cannot read past the pretrained block size
        if self.finetune.max_length > self.pretrain.model.block_size:
            raise ValueError(f"finetune.max_length ({self.finetune.max_length}) exceeds"
                             f" pretrain.model.block_size ({self.pretrain.model.block_size})")
        return self


class ParamsError(ValueError):
    """A params file that does not match the schema; the message names the key."""


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    got = first.get("input")
    got = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    where = f"'{key}': " if first["loc"] else ""  # cross-section rules name their keys themselves
    return f"{where}{first['msg']}{got}{more}"


def parse_params(raw: dict) -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(_describe(err)) from None


def read_params(path: Path = PARAMS_FILE) -> Params:
    if not path.exists():
        raise ParamsError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}".splitlines()[0]) from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path} must be a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw)


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Validate the whole file (not just one section) and exit 2 with a one-line error if bad."""
    try:
        return read_params(path)
    except ParamsError as err:
        print(f"error: {path}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
