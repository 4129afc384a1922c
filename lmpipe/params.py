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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmpipe.params_errors import describe, describe_yaml_error

PARAMS_FILE = Path(os.environ.get("LMPIPE_PARAMS", "params.yaml"))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Names the schema checks against; lmpipe.shifts and lmpipe.world hold the code behind them (a test
# keeps these in step), so this module imports nothing heavier than pydantic and yaml.
ENCODING_NAMES = ("leet", "rot13", "reverse", "typos")
# Shifts that change the label (negation mirrors it): defined only for an ordered polarity task.
LABEL_MAPPING_SHIFTS = ("negation",)
MAX_FACTS = 60  # people in the world's name list, each fact needs one


# --- world (the generated default corpus) -------------------------------------------------------

ReviewDomain = Literal["restaurant_review", "movie_review", "product_review"]


class NoiseRates(Section):
    """Share of `docs` that gets each noise kind. html, mojibake, control and pii edit documents in
    place (a document can get several); the others add documents."""

    exact_dup: float = Field(0.03, ge=0, le=0.5)
    near_dup: float = Field(0.03, ge=0, le=0.5)
    html: float = Field(0.02, ge=0, le=0.5)
    mojibake: float = Field(0.01, ge=0, le=0.1)  # only documents with non-ASCII text qualify
    control: float = Field(0.01, ge=0, le=0.5)
    short: float = Field(0.02, ge=0, le=0.5)
    gibberish: float = Field(0.01, ge=0, le=0.5)
    spam: float = Field(0.01, ge=0, le=0.5)
    pii: float = Field(0.02, ge=0, le=0.5)


class TaskSizes(Section):
    train: int = Field(2000, ge=2, le=50_000)
    validation: int = Field(400, ge=2, le=20_000)
    test: int = Field(500, ge=2, le=20_000)  # also the size of every shift split
    classes: int = Field(2, ge=2, le=3)  # 3 adds "neutral": reviews mixing a positive and a negative aspect


class WorldParams(Section):
    docs: int = Field(20_000, ge=10, le=2_000_000)  # pretraining documents before noise; ~5 MB at 20k
    encoded_share: float = Field(0.05, ge=0, le=1)  # per encoding, share of docs also rendered encoded
    parallel_share: float = Field(0.5, ge=0, le=1)  # of those, share rendered as plain/encoded line pairs
    encodings: list[str] = ["leet", "rot13", "reverse"]  # names in ENCODING_NAMES (lmpipe.shifts)
    noise: NoiseRates = NoiseRates()
    task: TaskSizes = TaskSizes()
    task_domain: ReviewDomain = "restaurant_review"  # the in-distribution fine-tuning domain
    shift_domain: ReviewDomain = "movie_review"  # the `domain` shift
    facts: int = Field(30, ge=3, le=MAX_FACTS)  # countries and people in the fact table

    @field_validator("encodings")
    @classmethod
    def _known_encodings(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in ENCODING_NAMES]
        if unknown:
            raise ValueError(f"unknown encodings {unknown}; valid: {', '.join(ENCODING_NAMES)}")
        if len(set(names)) != len(names):
            raise ValueError(f"encodings must not repeat: {names}")
        return names

    @model_validator(mode="after")
    def _distinct_domains(self) -> WorldParams:
        if self.task_domain == self.shift_domain:
            raise ValueError(f"shift_domain must differ from task_domain (both {self.task_domain!r})")
        return self

# --- clean ---


class MinHashParams(Section):
    enabled: bool = True
    # estimated Jaccard similarity of shingle sets at or above which a doc is a near-duplicate
    threshold: float = Field(0.85, ge=0.1, le=1.0)
    # more permutations = a tighter Jaccard estimate, linearly more hashing time
    num_perm: int = Field(128, ge=16, le=1024)
    # Characters per shingle. Character shingles, not word shingles: a typo then costs a few
    # shingles and a different word (another name, another adjective) many, which is what tells
    # an edited copy from another document made from the same template.
    shingle_size: int = Field(4, ge=1, le=64)


class CleanParams(Section):
    """Knobs of the clean stage. A filter whose threshold is at its neutral bound (a minimum of 0,
    a maximum of 1 for shares) never drops anything, which is how a single filter is switched off."""

    # repairs
    fix_unicode: bool = True  # ftfy: mojibake, broken UTF-8, terminal escapes
    normalization: Literal["NFC", "NFKC", "none"] = "NFC"  # NFKC also folds width, ligatures, ...
    strip_html: bool = True
    remove_control: bool = True
    normalize_whitespace: bool = True
    pii: bool = True

    # documents of these domains skip the quality and repetition filters (still repaired,
    # deduplicated and scrubbed, and dropped if empty): the world's "encoded" domain is
    # leetspeak/rot13 on purpose
    keep_domains: list[str] = ["encoded"]

    # quality (Gopher, C4)
    min_words: int = Field(10, ge=0)
    max_words: int = Field(100_000, ge=1)
    max_chars: int = Field(1_000_000, ge=1)  # also the clean gate's ceiling on kept text length
    min_mean_word_len: float = Field(3.0, ge=0, le=100)
    max_mean_word_len: float = Field(10.0, ge=1, le=1000)
    max_symbol_word_ratio: float = Field(0.1, ge=0, le=100)  # "#" and ellipses per word
    # C4's line rule on prose, weighted by words: the share of words in lines that end a sentence
    # (. ! ? " ' ...), a hard-wrapped paragraph's lines counting as one line with its last
    min_punct_line_share: float = Field(0.1, ge=0, le=1)
    min_alpha_share: float = Field(0.8, ge=0, le=1)  # words with a letter in them
    min_stopword_share: float = Field(0.15, ge=0, le=1)  # English heuristic, no model needed

    # repetition (Gopher table A1)
    max_dup_para_share: float = Field(0.3, ge=0, le=1)
    max_dup_para_char_share: float = Field(0.2, ge=0, le=1)
    max_dup_line_share: float = Field(0.3, ge=0, le=1)
    max_dup_line_char_share: float = Field(0.2, ge=0, le=1)
    # Share of characters in the most frequent word 2/3/4-gram (if seen 3+ times). Above Gopher's
    # 0.20/0.18/0.16, which were set for 50+-word web pages: short dialogues repeat their question.
    max_top_2gram_share: float = Field(0.25, ge=0, le=1)
    max_top_3gram_share: float = Field(0.30, ge=0, le=1)
    max_top_4gram_share: float = Field(0.30, ge=0, le=1)
    # Share of characters in word 10-grams that repeat an earlier one: copied passages, which the
    # top n-grams miss when a long sentence repeats (Gopher's 5- to 10-gram limits suit long pages).
    max_dup_10gram_share: float = Field(0.30, ge=0, le=1)

    # --- code documents ---
    # A document whose lines mostly look like code (lmpipe.cleaning.code) is judged by code rules
    # (The Stack's: longest line, mean line length, alphanumeric share) instead of the prose and
    # repetition rules above, which drop nearly all source files; false: prose rules for all.
    keep_code: bool = True
    min_code_line_share: float = Field(0.5, gt=0, le=1)  # also marks code blocks whose indentation stays
    max_code_line_chars: int = Field(1000, ge=1)  # minified or generated code has longer lines
    max_code_mean_line_chars: float = Field(100.0, ge=1)
    min_code_alnum_share: float = Field(0.25, ge=0, le=1)  # letters and digits among the characters
    # --- end code documents ---

    # deduplication
    exact_dedup: bool = True
    minhash: MinHashParams = MinHashParams()

    # output
    validation_share: float = Field(0.05, ge=0, le=0.5)
    dropped_sample: int = Field(20, ge=0, le=10_000)  # dropped docs kept per filter for review

    # execution: per-document work runs in num_proc processes, batch_size docs per task
    num_proc: int = Field(2, ge=1, le=256)
    batch_size: int = Field(1000, ge=1, le=1_000_000)
    # Out of core: the corpus is read, cleaned and written batch_rows documents at a time (two
    # batches in flight), so memory is those batches plus ~100 bytes per document of dedup
    # state at its peak. Lower it for long documents: 10,000 docs of 5 KB is 50 MB of text.
    batch_rows: int = Field(10_000, ge=1, le=10_000_000)
    # rows per row group of the written splits (whatever batch_rows is, so the files do not
    # depend on it); one row group is buffered in memory before it is written
    row_group_rows: int = Field(65_536, ge=1, le=10_000_000)

    # quality gate (read by stages/clean.py): no single filter may drop more than this share
    max_drop_share: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _bounds_in_order(self) -> CleanParams:
        if self.min_words > self.max_words:
            raise ValueError(f"min_words={self.min_words} exceeds max_words={self.max_words}")
        if self.min_mean_word_len > self.max_mean_word_len:
            raise ValueError(
                f"min_mean_word_len={self.min_mean_word_len} exceeds max_mean_word_len={self.max_mean_word_len}"
            )
        return self


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
    # a .jsonl ({"prompt", "domain"?} per line) or .txt (one per line) of generation prompts;
    # empty: generate takes prompts from the cleaned validation split
    prompts: str = ""


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
    # Made from a real test split (files/hf; the world makes its own). The defaults only rewrite the
    # text and keep its label, so they are valid for any task; label-mapping shifts
    # (LABEL_MAPPING_SHIFTS) also need task_kind: polarity.
    shifts: list[str] = ["typos", "leet", "rot13"]
    # polarity: labels are ordered opposites (negative..positive), so negating a text mirrors its
    # label; categorical: anything else (topics, intents), where no shift may change labels
    task_kind: Literal["polarity", "categorical"] = "categorical"
    max_bad_line_share: float = Field(0.01, ge=0.0, le=1.0)  # corrupt jsonl lines tolerated, per file
    gate: GateIngest = GateIngest()

    @property
    def effective_task_kind(self) -> str:
        return "polarity" if self.source == "world" else self.task_kind

    @model_validator(mode="after")
    def _shifts_fit_the_task(self) -> DataParams:
        if self.source == "world":
            return self  # the world is a polarity task and defines its own shifts
        for name in self.shifts:
            if name in LABEL_MAPPING_SHIFTS and self.task_kind != "polarity":
                raise ValueError(f"shift '{name}' changes labels and is defined only for data.task_kind: polarity"
                                 f" (this task is {self.task_kind}); remove it from data.shifts")
        return self


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
    nproc: int = Field(2, ge=1, le=1024)  # >1: DDP via torchrun, one process per device/core
    compile: bool = False  # torch.compile: faster steps on GPU after a one-off compile cost
    threads: int = Field(0, ge=0)  # CPU threads; 0 = all cores
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_steps: int = Field(300, ge=1)
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
        for name in self.finetune.augment:
            if name in LABEL_MAPPING_SHIFTS and self.data.effective_task_kind != "polarity":
                raise ValueError(f"finetune.augment: shift '{name}' changes labels and is defined only for"
                                 f" data.task_kind: polarity (this task is {self.data.task_kind})")
        ft, shape = self.finetune, self.pretrain.model
        if ft.method == "freeze" and ft.freeze_layers >= shape.n_layer:
            raise ValueError(f"finetune.freeze_layers ({ft.freeze_layers}) must be below pretrain.model.n_layer"
                             f" ({shape.n_layer}): freezing every block leaves only the classifier head to train")
        max_length = self.finetune.max_length
        if max_length != "auto" and max_length > self.pretrain.model.block_size:
            raise ValueError(f"finetune.max_length ({self.finetune.max_length}) exceeds"
                             f" pretrain.model.block_size ({self.pretrain.model.block_size})")
        return self


class ParamsError(ValueError):
    """A params file that does not match the schema; the message names the key."""


def parse_params(raw: dict) -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(describe(err, Params)) from None


def read_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate a params file. Unlike `parse_params` (used for partial test configs), a
    file must name every section: dvc.yaml tracks each one, and DVC refuses a stage whose section
    is missing only when it reaches that stage, after the stages before it have run."""
    if not path.exists():
        raise ParamsError(f"params file not found: {path}")
    if path.is_dir():
        raise ParamsError(f"{path} is a directory, not a params file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ParamsError(describe_yaml_error(err)) from None
    except UnicodeDecodeError as err:
        raise ParamsError(f"not UTF-8 text (byte {err.start})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"must be a mapping of sections, got {type(raw).__name__}")
    missing = [name for name in Params.model_fields if name not in raw]
    empty = [name for name, value in raw.items() if value is None and name in Params.model_fields]
    if missing or empty:
        name = (missing or empty)[0]
        what = "missing section" if missing else "empty section"
        return_hint = "python -m stages.check_params --defaults prints every section with its defaults"
        raise ParamsError(f"{what} '{name}' (every section must be present; {return_hint})")
    return parse_params(raw)


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Validate the whole file (not just one section) and exit 2 with a one-line error if bad."""
    try:
        return read_params(path)
    except ParamsError as err:
        print(f"error: {path}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
