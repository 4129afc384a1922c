"""Fine-tuning methods on the micro setup: each changes only what it should; padding invariance;
pipeline loading; replay reduces forgetting (a measured effect, not a tuned one).

The fine-tunes run in-process on a copy of the inputs of the session's micro DAG run (conftest's
`micro_repo`), so the DAG itself runs once for every test that needs it."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from lmpipe.io import StageError
from lmpipe.params import parse_params
from stages import finetune

INPUTS = ("models/base", "models/tokenizer", "data/raw/task", "data/tokens", "params.yaml")
RUNS: dict[str, dict] = {}  # one fine-tune per configuration, shared by the tests below


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


def fine_tune(root: Path, name: str, **overrides) -> dict:
    """Train once per name (in `root`, output models/<name>) and remember the result."""
    if name not in RUNS:
        with contextlib.chdir(root):
            metrics = finetune.train(params_for(root, **overrides), out_dir=Path("models") / name)
        RUNS[name] = metrics | {"_out": root / "models" / name}
    return RUNS[name]


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

    tokenizer = finetune.load_tokenizer(ft_repo / "models/base")
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    model = finetune.load_classifier(params_for(ft_repo).finetune, ["negative", "positive"], tokenizer.pad_token_id,
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
    out = finetune.augment(train, p, seed=3, classes=2)
    assert len(out) == 20 + 5 + 5
    pd.testing.assert_frame_equal(out.iloc[:20], train)
    negated = out.iloc[25:]
    assert negated["text"].str.contains("was not good").all()
    originals = train.set_index("text")["label"]
    flipped = [1 - originals[t.replace("was not", "was")] for t in negated["text"]]
    assert negated["label"].tolist() == flipped
    none = parse_params({"finetune": {"augment": []}}).finetune
    assert finetune.augment(train, none, 3, 2) is train


def test_max_length_beyond_the_model_context_is_a_clear_error(ft_repo):
    """The schema ties max_length to pretrain.model.block_size; a base model with a shorter
    context (e.g. one trained elsewhere) is caught by the stage itself."""
    params = params_for(ft_repo)
    params = params.model_copy(update={"finetune": params.finetune.model_copy(update={"max_length": 10_000})})
    with contextlib.chdir(ft_repo), pytest.raises(StageError, match="max_length"):
        finetune.train(params, out_dir=Path("models/never"))
    assert not (ft_repo / "models/never").exists()


def test_gate_names_the_failed_floor(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train = pd.DataFrame({"text": ["good", "bad"], "label": [1, 0]})
    metrics = {"_train_df": train, "_eval_texts": pd.DataFrame({"text": ["fine"], "label": [1]}),
               "_labels": ["negative", "positive"], "val_accuracy": 0.4, "truncated_share": 0.0, "truncated": 0}
    with pytest.raises(SystemExit):
        finetune.gate(metrics, parse_params({}).finetune)
    err = capsys.readouterr().err
    assert "DATA GATE FAILED: finetune" in err and "finetune.gate.min_val_accuracy" in err
    leaky = metrics | {"val_accuracy": 0.9, "_eval_texts": pd.DataFrame({"text": ["Good!"], "label": [1]})}
    with pytest.raises(SystemExit):
        finetune.gate(leaky, parse_params({}).finetune)
    assert "also occur in validation, test or a shift" in capsys.readouterr().err


# --- one fine-tune per method ----------------------------------------------------------------------


def test_full_fine_tune_writes_every_metric_and_loads_as_pipeline_and_lm(ft_repo):
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel, pipeline

    m = fine_tune(ft_repo, "full")
    for key in ("val_accuracy", "train_loss", "epochs", "trainable_params", "tokens_per_s", "wall_s"):
        assert np.isfinite(m[key]), key
    assert m["trainable_params"] == m["params"]
    assert (ft_repo / "plots/finetune/plots/metrics/eval/accuracy.tsv").exists()
    out = m["_out"]
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))

    clf = pipeline("text-classification", model=str(out), device=-1)
    texts = ["I thought the soup was terrible.", "The waiter was wonderful and the cake was great."]
    preds = clf(texts)
    assert {p["label"] for p in preds} <= {"negative", "positive"}
    model = GPT2ForSequenceClassification.from_pretrained(out).eval()
    tok = finetune.load_tokenizer(out)
    with torch.no_grad():
        direct = torch.softmax(model(**tok(texts[:1], return_tensors="pt")).logits, -1)[0]
    assert max(direct).item() == pytest.approx(preds[0]["score"], abs=1e-5)

    lm = GPT2LMHeadModel.from_pretrained(out)
    assert torch.equal(lm.lm_head.weight, lm.transformer.wte.weight), "the LM head must stay tied"
    assert torch.equal(lm.transformer.wte.weight, model.transformer.wte.weight)
    base = weights(ft_repo / "models/base")
    changed = [k for k, w in weights(out).items() if k in base and not torch.equal(w, base[k])]
    assert any(".h.0." in k for k in changed) and "transformer.wte.weight" in changed


def test_freeze_keeps_embeddings_and_bottom_blocks_bit_identical(ft_repo):
    m = fine_tune(ft_repo, "freeze", method="freeze", freeze_layers=1, epochs=1, augment=["typos"], augment_share=0.25)
    assert m["augmented_rows"] == 60 and m["train_rows"] == 300
    base, tuned = weights(ft_repo / "models/base"), weights(m["_out"])
    frozen = [k for k in base if k.startswith(("transformer.wte.", "transformer.wpe.", "transformer.h.0."))]
    assert frozen and all(torch.equal(tuned[k], base[k]) for k in frozen)
    upper = [k for k in base if k.startswith("transformer.h.1.") and k.endswith("weight")]
    assert any(not torch.equal(tuned[k], base[k]) for k in upper), "the unfrozen block must train"
    assert m["trainable_params"] < m["params"]


def test_lora_leaves_base_weights_untouched_and_merges_its_delta(ft_repo):
    m = fine_tune(ft_repo, "lora", method="lora", epochs=1)
    base, merged = weights(ft_repo / "models/base"), weights(m["_out"])
    peft_model = m["_trainer"].model
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
    assert all(torch.equal(merged[k], base[k]) for k in untouched)
    assert m["trainable_params"] < m["params"] / 5


def test_replay_reduces_forgetting(ft_repo):
    """λ = 0.5 against λ = 0, same seed and data. Measured on the micro base when this test was
    written: forgetting +0.40 with λ = 0 and −0.15 with λ = 0.5 (the undertrained micro base even
    improves, since replay continues pretraining), so the margin below is far from the noise."""
    plain = fine_tune(ft_repo, "full")
    replay = fine_tune(ft_repo, "replay", replay_weight=0.5)
    f_plain, f_replay = forgetting(ft_repo, plain["_out"]), forgetting(ft_repo, replay["_out"])
    print(f"forgetting: λ=0 {f_plain:+.3f}, λ=0.5 {f_replay:+.3f}; "
          f"val accuracy {plain['val_accuracy']:.3f} vs {replay['val_accuracy']:.3f}")
    assert f_plain > 0.1, f"fine-tuning without replay should measurably forget (got {f_plain:+.3f})"
    assert f_replay < f_plain - 0.1
    assert replay["replay_lm_loss"] is not None and np.isfinite(replay["replay_lm_loss"])
