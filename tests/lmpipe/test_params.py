"""The params schema: every bad value is caught before any work, with a message naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmpipe.params import Params, ParamsError, parse_params, read_params

ROOT = Path(__file__).resolve().parents[2]


def test_default_params_file_is_valid():
    params = read_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.data.source == "world"


def test_micro_params_file_is_valid():
    # a partial config (tests fill in the defaults), so parse, not read
    parse_params(yaml.safe_load((ROOT / "tests" / "params-micro.yaml").read_text()))


def test_schema_defaults_equal_params_yaml():
    """Defaults live once: the schema's defaults are params.yaml's values, so library code, tests and
    benches that build Params() run what `dvc repro` runs."""
    assert read_params(ROOT / "params.yaml").model_dump() == Params().model_dump()


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"pretrain": {"max_stepz": 3}}, "unknown key 'pretrain.max_stepz' (did you mean 'pretrain.max_steps'?)"),
        ({"pretrian": {"max_steps": 5}}, "unknown key 'pretrian' (did you mean 'pretrain'?)"),
        ({"finetune": {"max_length": "long"}}, "'finetune.max_length': Input should be a valid integer"),
        ({"finetune": {"max_length": 4}}, "'finetune.max_length': must be 'auto' or at least 8"),
        ({"finetune": {"lora": {"targets": "everything"}}}, "'finetune.lora.targets'"),
        ({"data": {"source": "files", "shifts": ["typos", "negation"]}}, "shift 'negation' changes labels"),
        ({"data": {"source": "files"}, "finetune": {"augment": ["negation"]}}, "finetune.augment: shift 'negation'"),
        ({"finetune": {"method": "freeze", "freeze_layers": 4}, "pretrain": {"model": {"n_layer": 4}}},
         "finetune.freeze_layers (4) must be below pretrain.model.n_layer (4)"),
        ({"bogus_section": {}}, "unknown key 'bogus_section'"),
        ({"pretrain": {"model": {"n_layers": 2}}}, "unknown key 'pretrain.model.n_layers'"),
        ({"pretrain": {"max_steps": "many"}}, "'pretrain.max_steps'"),
        ({"finetune": {"lr": -1.0}}, "'finetune.lr'"),
        ({"finetune": {"method": "qlora"}}, "'finetune.method'"),
        ({"seed": -5}, "'seed'"),
        ({"data": {"source": "s3"}}, "'data.source'"),
        ({"clean": {"max_drop_share": 1.5}}, "'clean.max_drop_share'"),
    ],
)
def test_bad_params_name_the_key(raw, needle):
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message  # one line


def test_cross_field_rule():
    with pytest.raises(ParamsError, match="divisible"):
        parse_params({"pretrain": {"model": {"n_embd": 100, "n_head": 3}}})


def test_stage_exits_2_before_any_work(tmp_path):
    """A stage started with a bad params file prints one line, exits 2, and writes nothing."""
    bad = Params().model_dump(mode="json")
    bad["pretrain"]["max_stepz"] = 10
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    proc = subprocess.run([sys.executable, "-m", "stages.ingest"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: params.yaml: unknown key 'pretrain.max_stepz' (did you mean 'pretrain.max_steps'?)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_invalid_yaml_is_a_params_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        read_params(path)


def test_finetune_length_must_fit_pretrained_positions():
    with pytest.raises(ParamsError, match="finetune.max_length"):
        parse_params({"finetune": {"max_length": 256}, "pretrain": {"model": {"block_size": 128}}})


def test_label_mapping_shift_is_allowed_on_a_polarity_task_and_on_the_world():
    assert parse_params({"data": {"source": "files", "task_kind": "polarity", "shifts": ["negation"]}})
    assert parse_params({"data": {"source": "world", "shifts": ["negation"]}})  # the world makes its own


@pytest.mark.parametrize(("text", "needle"), [
    ("seed: 1\n", "missing section 'data'"),
    ("seed: [1, 2\n", "not valid YAML at line 2, column 1"),
    ("seed: 1\n  data: 2\n", "not valid YAML at line 2, column 7"),
    ("- a\n- b\n", "must be a mapping of sections, got list"),
    ("", "must be a mapping of sections, got NoneType"),
])
def test_file_level_errors_name_the_problem(tmp_path, text, needle):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as err:
        read_params(path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_an_empty_section_is_named(tmp_path):
    full = Params().model_dump(mode="json") | {"clean": None}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(full))
    with pytest.raises(ParamsError, match="empty section 'clean'"):
        read_params(path)
