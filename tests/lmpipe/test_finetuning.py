"""Fine-tuning library on the micro setup: each method changes only what it should; padding
invariance; pipeline loading; replay reduces forgetting (a measured effect, not a tuned one).

The fine-tunes run in-process on a copy of the inputs of the session's micro DAG run (conftest's
`micro_repo`), so the DAG itself runs once for every test that needs it."""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from lmpipe.finetuning import classifier, task, trainer
from lmpipe.io import StageError
from lmpipe.params import FinetuneParams, parse_params

INPUTS = ("models/base", "models/tokenizer", "data/raw/task", "data/tokens", "params.yaml")
RUNS: dict[str, trainer.FinetuneResult] = {}  # one fine-tune per configuration, shared by the tests below


@pytest.fixture(scope="module")
def ft_repo(micro_repo, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finetune")
    for rel in INPUTS:
        src, dst = micro_repo / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    # One thread: the micro model's matrices are too small to gain from two, and on a shared
    # machine a second thread mostly waits for a core (3-4x slower measured under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield root
    torch.set_num_threads(threads)


def params_for(root: Path, **finetune_overrides):
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["finetune"] |= finetune_overrides
    return parse_params(raw)


def fine_tune(root: Path, name: str, **overrides) -> trainer.FinetuneResult:
    """Train once per name (in `root`, output models/<name>) and remember the result."""
    if name not in RUNS:
        with contextlib.chdir(root):
            RUNS[name] = trainer.train(params_for(root, **overrides), out_dir=Path("models") / name)
    return RUNS[name]


def out_dir(root: Path, name: str) -> Path:
    return root / "models" / name


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def forgetting(root: Path, out: Path, batches: int = 8) -> float:
    """ppl(fine-tuned body + tied head) / ppl(base) − 1 on fixed validation windows."""
    from transformers import GPT2LMHeadModel

    from lmpipe.modeling import eval_lm_loss, load_meta, open_shard

    with contextlib.chdir(root):
        val = open_shard("validation", load_meta())
        block = yaml.safe_load(Path("params.yaml").read_text())["pretrain"]["model"]["block_size"]
        losses = [eval_lm_loss(GPT2LMHeadModel.from_pretrained(p).eval(), val, block, 16, batches, 0, torch.device("cpu"))
                  for p in ("models/base", out)]
    return float(np.exp(losses[1] - losses[0]) - 1)


# --- no training needed --------------------------------------------------------------------------


def test_padded_batch_gives_each_example_its_own_logits(ft_repo):
    from transformers import DataCollatorWithPadding

    tokenizer = classifier.load_tokenizer(ft_repo / "models/base")
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    model = classifier.load_classifier(params_for(ft_repo).finetune, ["negative", "positive"], tokenizer.pad_token_id,
                                     ft_repo / "models/base").eval()
    texts = ["Bad.", "The soup was wonderful and the service was great.", "I thought the pasta was awful, sadly."]
    features = [{"input_ids": tokenizer(t)["input_ids"]} for t in texts]
    batch = DataCollatorWithPadding(tokenizer)(features)
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        together = model(**batch).logits
        alone = torch.cat([model(input_ids=torch.tensor([f["input_ids"]])).logits for f in features])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_augment_copies_training_rows_only_and_keeps_labels_right():
    train = pd.DataFrame({"text": [f"The soup was good number {i}." for i in range(20)], "label": [1, 0] * 10})
    p = parse_params({"finetune": {"augment": ["typos", "negation"], "augment_share": 0.25}}).finetune
    out = task.augment(train, p, seed=3, classes=2, task_kind="polarity")
    assert len(out) == 20 + 5 + 5
    pd.testing.assert_frame_equal(out.iloc[:20], train)
    negated = out.iloc[25:]
    assert negated["text"].str.contains("was not good").all()
    originals = train.set_index("text")["label"]
    flipped = [1 - originals[t.replace("was not", "was")] for t in negated["text"]]
    assert negated["label"].tolist() == flipped
    none = parse_params({"finetune": {"augment": []}}).finetune
    assert task.augment(train, none, 3, 2) is train
    # negation mirrors labels: on a task that is not declared polarity it is refused, by name
    with pytest.raises(StageError, match="finetune.augment: .*negation"):
        task.augment(train, p, seed=3, classes=2, task_kind="categorical")


def test_max_length_beyond_the_model_context_is_a_clear_error(ft_repo):
    """The schema ties max_length to pretrain.model.block_size; a base model with a shorter
    context (e.g. one trained elsewhere) is caught by the stage itself."""
    params = params_for(ft_repo)
    params = params.model_copy(update={"finetune": params.finetune.model_copy(update={"max_length": 10_000})})
    with contextlib.chdir(ft_repo), pytest.raises(StageError, match="max_length"):
        trainer.train(params, out_dir=Path("models/never"))
    assert not (ft_repo / "models/never").exists()


def test_max_length_auto_is_a_percentile_of_training_lengths_capped_at_the_context():
    ids = [[0] * n for n in range(1, 101)]  # lengths 1..100
    p90 = parse_params({"finetune": {"max_length": "auto", "max_length_percentile": 90}}).finetune
    assert task.resolve_max_length(p90, ids, n_positions=512) == 90
    assert task.resolve_max_length(p90, ids, n_positions=64) == 64  # never past the model's positions
    p99 = parse_params({"finetune": {"max_length": "auto"}}).finetune
    assert task.resolve_max_length(p99, [[0] * 10] * 99 + [[0] * 500], 512) == 10  # one outlier is cut
    fixed = parse_params({"finetune": {"max_length": 40}}).finetune
    assert task.resolve_max_length(fixed, ids, 512) == 40
    with pytest.raises(StageError, match="max_length=40 exceeds the base model's context"):
        task.resolve_max_length(fixed, ids, 32)


def test_prepare_resolves_auto_before_any_model_is_loaded(ft_repo):
    with contextlib.chdir(ft_repo):
        prep = trainer.prepare(params_for(ft_repo, max_length="auto", max_length_percentile=50))
    lengths = sorted(len(x) for x in prep.tokenizer(prep.train_df["text"].tolist())["input_ids"])
    assert prep.max_length == lengths[math.ceil(len(lengths) / 2) - 1]  # the median length, as observed
    assert prep.tokenizer.model_max_length == prep.max_length
    assert prep.truncated == sum(n > prep.max_length for n in lengths) and 0 < prep.truncated_share <= 0.5
    assert max(map(len, prep.train_ds["input_ids"])) == prep.max_length


def test_freeze_must_leave_a_block_to_train(ft_repo):
    # the schema refuses this before any work (test_params); the library still checks the real model
    p = FinetuneParams(method="freeze", freeze_layers=2)  # the micro base has 2 blocks
    with pytest.raises(StageError, match="freeze_layers=2 would freeze every block.*at most 1"):
        classifier.load_classifier(p, ["negative", "positive"], 0, ft_repo / "models/base")


def test_lora_presets_adapt_the_named_modules_only(ft_repo):
    expected = {
        "attention": {f"transformer.h.{i}.attn.{m}" for i in range(2) for m in ("c_attn", "c_proj")},
        "attention_mlp": {f"transformer.h.{i}.{m}" for i in range(2)
                          for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")},
    }
    for preset, names in expected.items():
        p = params_for(ft_repo, method="lora", lora={"targets": preset}).finetune
        model = classifier.load_classifier(p, ["negative", "positive"], 0, ft_repo / "models/base")
        summary = classifier.lora_summary(model)
        assert set(summary.modules) == names, preset
        modules = dict(model.named_modules())
        r = p.lora.r
        by_shape = sum(r * sum(modules[f"base_model.model.{n}"].base_layer.weight.shape) for n in names)
        assert summary.params == by_shape, preset  # A (in x r) and B (r x out) per adapted module


def test_loading_says_in_one_line_what_changed_and_keeps_real_reports(ft_repo, capsys):
    from transformers import GPT2ForSequenceClassification

    from lmpipe.modeling import load_quietly

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addHandler(handler)
    try:
        classifier.load_classifier(params_for(ft_repo).finetune, ["negative", "positive"], 0, ft_repo / "models/base")
        quiet = [r for r in records if "LOAD REPORT" in r.getMessage()]
        # a key the caller did not expect is news: transformers' own report stays
        load_quietly(GPT2ForSequenceClassification, ft_repo / "models/base", stage="test", num_labels=2)
        loud = [r for r in records if "LOAD REPORT" in r.getMessage()]
    finally:
        logger.removeHandler(handler)
    assert quiet == [] and len(loud) == 1 and "score.weight" in loud[0].getMessage()
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "score.weight" in line] == [
        f"[finetune] GPT2ForSequenceClassification from {ft_repo / 'models/base'}: new score.weight"
        " (not in the checkpoint: initialized here)"]


# --- one fine-tune per method ----------------------------------------------------------------------


def test_full_fine_tune_writes_every_metric_and_loads_as_pipeline_and_lm(ft_repo):
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel, pipeline

    m = fine_tune(ft_repo, "full").metrics.as_dict()
    for key in ("val_accuracy", "train_loss", "epochs", "trainable_params", "tokens_per_s", "wall_s"):
        assert np.isfinite(m[key]), key
    assert m["trainable_params"] == m["params"] and "lora" not in m
    assert m["max_length"] == 96  # the micro config's explicit value
    assert (ft_repo / "plots/finetune/plots/metrics/eval/accuracy.tsv").exists()
    out = out_dir(ft_repo, "full")
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))

    clf = pipeline("text-classification", model=str(out), device=-1)
    texts = ["I thought the soup was terrible.", "The waiter was wonderful and the cake was great."]
    preds = clf(texts)
    assert {p["label"] for p in preds} <= {"negative", "positive"}
    model = GPT2ForSequenceClassification.from_pretrained(out).eval()
    tok = classifier.load_tokenizer(out)
    with torch.no_grad():
        direct = torch.softmax(model(**tok(texts[:1], return_tensors="pt")).logits, -1)[0]
    assert max(direct).item() == pytest.approx(preds[0]["score"], abs=1e-5)

    assert finetune_tokenizer_max_length(out) == 96  # evaluate cuts where training did

    from lmpipe.modeling import load_quietly

    lm = load_quietly(GPT2LMHeadModel, out, stage="evaluate", dropped=("score.weight",))
    assert torch.equal(lm.lm_head.weight, lm.transformer.wte.weight), "the LM head must stay tied"
    assert torch.equal(lm.transformer.wte.weight, model.transformer.wte.weight)
    base = weights(ft_repo / "models/base")
    changed = [k for k, w in weights(out).items() if k in base and not torch.equal(w, base[k])]
    assert any(".h.0." in k for k in changed) and "transformer.wte.weight" in changed


def finetune_tokenizer_max_length(path: Path) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path).model_max_length


def test_freeze_keeps_embeddings_and_bottom_blocks_bit_identical(ft_repo):
    m = fine_tune(ft_repo, "freeze", method="freeze", freeze_layers=1, epochs=1, augment=["typos"],
                  augment_share=0.25).metrics
    assert m.augmented_rows == 60 and m.train_rows == 300
    base, tuned = weights(ft_repo / "models/base"), weights(out_dir(ft_repo, "freeze"))
    frozen = [k for k in base if k.startswith(("transformer.wte.", "transformer.wpe.", "transformer.h.0."))]
    assert frozen and all(torch.equal(tuned[k], base[k]) for k in frozen)
    upper = [k for k in base if k.startswith("transformer.h.1.") and k.endswith("weight")]
    assert any(not torch.equal(tuned[k], base[k]) for k in upper), "the unfrozen block must train"
    assert m.trainable_params < m.params


def test_lora_leaves_base_weights_untouched_and_merges_its_delta(ft_repo):
    run = fine_tune(ft_repo, "lora", method="lora", epochs=1, max_length="auto")
    base, merged = weights(ft_repo / "models/base"), weights(out_dir(ft_repo, "lora"))
    peft_model = run.model
    targets = {name: module for name, module in peft_model.named_modules() if hasattr(module, "base_layer")
               and hasattr(module, "lora_A")}
    assert targets, "no LoRA layers found"
    target_keys = set()
    for name, module in targets.items():
        key = "transformer." + name.split("transformer.", 1)[1] + ".weight"
        target_keys.add(key)
        assert torch.equal(module.base_layer.weight.detach(), base[key]), f"{key} changed under LoRA"
        delta = module.get_delta_weight("default").detach()
        torch.testing.assert_close(merged[key], base[key] + delta, atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(merged[k], base[k]) for k in base if ".attn.c_attn." in k and k.endswith("weight"))
    # everything but the adapted weights (and the new score head) is bit-identical to the base:
    # embeddings, layer norms, biases, and projections no target_modules entry names
    untouched = [k for k in base if k not in target_keys]
    assert "transformer.wte.weight" in untouched and "transformer.h.0.mlp.c_fc.weight" in untouched
    assert "transformer.h.0.mlp.c_proj.weight" in untouched  # the attention preset leaves the MLP alone
    assert all(torch.equal(merged[k], base[k]) for k in untouched)
    assert run.metrics.trainable_params < run.metrics.params / 5
    # metrics/finetune.json names the adapted modules and the adapter parameters
    lora = run.metrics.as_dict()["lora"]
    assert lora["modules"] == sorted(k.removesuffix(".weight") for k in target_keys)
    assert lora["params"] == sum(w.numel() for n, w in peft_model.named_parameters() if "lora_" in n)
    # max_length: auto resolved from the training lengths, recorded and saved with the tokenizer
    lengths = sorted(len(x) for x in run.prepared.tokenizer(run.prepared.train_df["text"].tolist())["input_ids"])
    assert run.metrics.max_length == lengths[math.ceil(len(lengths) * 0.99) - 1]
    assert finetune_tokenizer_max_length(out_dir(ft_repo, "lora")) == run.metrics.max_length


def test_replay_reduces_forgetting(ft_repo):
    """λ = 0.5 against λ = 0, same seed and data. Measured on the micro base when this test was
    written: forgetting +0.40 with λ = 0 and −0.15 with λ = 0.5 (the undertrained micro base even
    improves, since replay continues pretraining), so the margin below is far from the noise."""
    plain = fine_tune(ft_repo, "full").metrics
    replay = fine_tune(ft_repo, "replay", replay_weight=0.5).metrics
    f_plain, f_replay = forgetting(ft_repo, out_dir(ft_repo, "full")), forgetting(ft_repo, out_dir(ft_repo, "replay"))
    print(f"forgetting: λ=0 {f_plain:+.3f}, λ=0.5 {f_replay:+.3f}; "
          f"val accuracy {plain.val_accuracy:.3f} vs {replay.val_accuracy:.3f}")
    assert f_plain > 0.1, f"fine-tuning without replay should measurably forget (got {f_plain:+.3f})"
    assert f_replay < f_plain - 0.1
    assert replay.replay_lm_loss is not None and np.isfinite(replay.replay_lm_loss)
