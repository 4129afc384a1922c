"""The classifier on top of the pretrained body, and what each method lets train.

`GPT2ForSequenceClassification` from models/base. Methods (`finetune.method`):
  full    every weight trains
  freeze  embeddings and the bottom `freeze_layers` blocks frozen
  lora    only low-rank adapters on named modules (and the new head) learn (peft)

models/finetuned is saved merged (LoRA folded in), loadable both as a text-classification pipeline
and as `GPT2LMHeadModel`, whose tied head over the fine-tuned body measures forgetting.

Padding: right padding with a dedicated pad token. The classifier reads the last non-pad token,
and causal attention never looks right, so a padded batch gives each example the logits it gets
alone (a test checks it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from lmpipe.io import StageError
from lmpipe.modeling import load_quietly
from lmpipe.params import FinetuneParams
from lmpipe.paths import BASE_MODEL

# GPT-2 module names (relative to a block) that each `finetune.lora.targets` preset adapts. Dotted,
# so peft matches them by suffix exactly: a bare "c_proj" would hit attn.c_proj and mlp.c_proj.
LORA_TARGETS = {
    "attention": ("attn.c_attn", "attn.c_proj"),
    "attention_mlp": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
}
HEAD = "score.weight"  # the classification head GPT2ForSequenceClassification adds


def load_tokenizer(path: Path = BASE_MODEL):
    """The base tokenizer with a pad token (EOS when the tokenizer has none) and right padding."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "right"  # keep the start of a review; the gate bounds what is cut
    return tokenizer


def transformer_body(model):
    """The GPT-2 trunk of a (possibly peft-wrapped) sequence classifier."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.transformer


def replay_lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token loss through the classifier's own body and the tied LM head (wte transposed),
    i.e. exactly what GPT2LMHeadModel.from_pretrained(models/finetuned) will compute."""
    body = transformer_body(model)
    hidden = body(input_ids=x, use_cache=False).last_hidden_state
    logits = hidden @ body.wte.weight.T
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))


@dataclass
class LoraSummary:
    """What LoRA adapted: the full module names and the adapter parameters (A and B) added."""

    modules: list[str]
    params: int

    def as_dict(self) -> dict:
        return {"modules": self.modules, "params": self.params}


def lora_summary(model) -> LoraSummary:
    modules = sorted(name.split("base_model.model.", 1)[-1] for name, module in model.named_modules()
                     if hasattr(module, "lora_A") and hasattr(module, "base_layer"))
    params = sum(w.numel() for name, w in model.named_parameters() if ".lora_A." in name or ".lora_B." in name)
    return LoraSummary(modules, params)


def freeze_bottom(model, layers: int) -> None:
    """Freeze the embeddings and the bottom `layers` blocks. At least one block must stay trainable:
    with every block frozen only the final LayerNorm and the head would learn (a linear probe on
    the last token), which is not what `method: freeze` promises."""
    body = model.transformer
    if layers >= len(body.h):
        raise StageError(f"finetune.freeze_layers={layers} would freeze every block of the base model"
                         f" ({len(body.h)} blocks, pretrain.model.n_layer); use at most {len(body.h) - 1}")
    for module in [body.wte, body.wpe, *body.h[:layers]]:
        for w in module.parameters():
            w.requires_grad = False


def add_lora(model, p: FinetuneParams):
    from peft import LoraConfig, TaskType, get_peft_model

    # SEQ_CLS keeps the new `score` head fully trainable (modules_to_save); everything else is
    # frozen and only the low-rank adapters on the preset's modules learn.
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=p.lora.r, lora_alpha=p.lora.alpha,
                        lora_dropout=p.lora.dropout, target_modules=list(LORA_TARGETS[p.lora.targets]),
                        fan_in_fan_out=True)  # GPT-2 uses Conv1D (transposed) projections
    return get_peft_model(model, config)


def load_classifier(p: FinetuneParams, label_names: list[str], pad_id: int, base_dir: Path = BASE_MODEL):
    """The pretrained body with a new classification head, prepared for `p.method`."""
    from transformers import GPT2ForSequenceClassification

    model = load_quietly(
        GPT2ForSequenceClassification, base_dir, stage="finetune", new=(HEAD,),
        num_labels=len(label_names), id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)}, pad_token_id=pad_id,
    )
    if p.method == "freeze":
        freeze_bottom(model, p.freeze_layers)
    elif p.method == "lora":
        model = add_lora(model, p)
    return model


def merged(model):
    """A plain GPT2ForSequenceClassification: LoRA adapters folded into the base weights. The peft
    model is copied first (merge_and_unload works in place), so it still shows what training did."""
    if not hasattr(model, "merge_and_unload"):
        return model
    return copy.deepcopy(model).merge_and_unload()
