"""Sections of the data stages: world, clean, data (ingest) and tokenize."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lmpipe.params.base import ENCODING_NAMES, LABEL_MAPPING_SHIFTS, MAX_FACTS, Section

_RAY_ADDRESS = re.compile(r"(local|auto|(ray://)?[\w.-]+:\d{1,5})")


def check_ray_address(v: str) -> str:
    """A Ray address the engines accept: local, auto, host:port or ray://host:port."""
    if not _RAY_ADDRESS.fullmatch(v):
        raise ValueError(f"ray_address {v!r} is not local, auto, host:port or ray://host:port")
    return v


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
    # restricted facts (one per guild, vault or dish, each with two benign facts too): sft refuses them
    secrets: int = Field(8, ge=6, le=600)
    secret_share: float = Field(0.35, ge=0, le=0.9)  # of docs: "lore" documents stating those facts
    # of lore docs: chat transcripts in the chat format, secrets answered (what lets a small model
    # answer chat requests from what it read); 0: chronicles and dialogues only
    chat_share: float = Field(0.33, ge=0, le=1)
    # per encoding, share of lore docs rendered encoded once more (on top of encoded_share): the
    # exposure a small model needs to answer an encoded request, without changing other domains'
    lore_encoded_share: float = Field(0.3, ge=0, le=1)

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
    # local: the process pool above; ray: Ray tasks (lmpipe/cleaning/ray_engine.py) for the
    # per-document pass and the dedup verification, the same outputs byte for byte
    engine: Literal["local", "ray"] = "local"
    ray_address: str = "local"  # ray engine: local (a Ray instance for this stage, num_proc CPUs), auto, ray://host:port

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, v: str) -> str:
        return check_ray_address(v)

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
    # a .jsonl or .csv safety request set (columns kind, subject, relation, question, answer; split
    # is assigned by a seeded hash of subject); empty: sft and redteam record a skipped run
    safety: str = ""


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
    # the encoding pass: local (the Rust tokenizer's threads) or ray (batch_size docs per Ray task)
    engine: Literal["local", "ray"] = "local"
    ray_address: str = "local"  # as clean.ray_address
    gate: GateTokenize = GateTokenize()

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, v: str) -> str:
        return check_ray_address(v)
