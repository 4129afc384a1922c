"""Typed schema for params.yaml.

Every stage calls `load_params()` before doing any work: an unknown key, a wrong type or an
out-of-range value stops it with a one-line error naming the key (exit code 2), so a typo in a
`dvc exp run -S` override never silently trains the wrong model.

Sections are frozen pydantic models with `extra="forbid"`; the stage that owns a section documents
its knobs next to their bounds (`data` for the data stages, `training` for the model stages), so
params.yaml and this package read as one reference. Everything is importable from here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, model_validator

from lmpipe.params.base import ENCODING_NAMES, LABEL_MAPPING_SHIFTS, MAX_FACTS, Section
from lmpipe.params.data import (
    CleanParams,
    DataParams,
    FilesSource,
    GateIngest,
    GateTokenize,
    HubSource,
    HubSpec,
    MinHashParams,
    NoiseRates,
    ReviewDomain,
    TaskSizes,
    TokenizeParams,
    WorldParams,
)
from lmpipe.params.errors import describe, describe_yaml_error
from lmpipe.params.safety import CONTROL_TRANSFORMS, GateSft, RedteamParams, SftParams
from lmpipe.params.training import (
    EvaluateParams,
    FinetuneParams,
    GateEvaluate,
    GateFinetune,
    GatePretrain,
    GenerateParams,
    LoraParams,
    ModelShape,
    PretrainParams,
    ReportParams,
)

__all__ = ["ENCODING_NAMES", "LABEL_MAPPING_SHIFTS", "MAX_FACTS", "PARAMS_FILE", "CONTROL_TRANSFORMS", "CleanParams", "GateSft", "RedteamParams", "SftParams", "DataParams",
           "EvaluateParams", "FilesSource", "FinetuneParams", "GateEvaluate", "GateFinetune", "GateIngest",
           "GatePretrain", "GateTokenize", "GenerateParams", "HubSource", "HubSpec", "LoraParams", "MinHashParams",
           "ModelShape", "NoiseRates", "Params", "ParamsError", "PretrainParams", "ReportParams", "ReviewDomain",
           "Section", "TaskSizes", "TokenizeParams", "WorldParams", "load_params", "parse_params", "read_params"]

PARAMS_FILE = Path(os.environ.get("LMPIPE_PARAMS", "params.yaml"))


class Params(Section):
    seed: int = Field(1337, ge=0, lt=2**32)
    data: DataParams = DataParams()
    world: WorldParams = WorldParams()
    clean: CleanParams = CleanParams()
    tokenize: TokenizeParams = TokenizeParams()
    pretrain: PretrainParams = PretrainParams()
    finetune: FinetuneParams = FinetuneParams()
    sft: SftParams = SftParams()
    evaluate: EvaluateParams = EvaluateParams()
    redteam: RedteamParams = RedteamParams()
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
        for name in self.sft.safety_augment:
            if name not in self.world.encodings:
                raise ValueError(f"sft.safety_augment: '{name}' is not one of world.encodings {self.world.encodings}")
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
