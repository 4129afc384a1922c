"""The pretrained model: a plain `transformers.GPT2LMHeadModel`, and how many FLOPs it costs."""

from __future__ import annotations

from lmpipe.params import PretrainParams


def build_model(p: PretrainParams, meta: dict):
    from transformers import GPT2Config, GPT2LMHeadModel

    m = p.model
    config = GPT2Config(
        vocab_size=meta["vocab_size"], n_positions=m.block_size, n_embd=m.n_embd, n_layer=m.n_layer,
        n_head=m.n_head, resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.dropout,
        bos_token_id=meta["eos_id"], eos_token_id=meta["eos_id"], pad_token_id=meta["pad_id"],
        tie_word_embeddings=True,
        # GPT-2's tanh-approximated GELU (the same function as "gelu_new") as one fused kernel;
        # "gelu_new" spells it as 8 elementwise ops, measurably slower (bench/pretrain.py compares).
        # Saved in models/base/config.json, so every later from_pretrained uses it too.
        activation_function="gelu_pytorch_tanh",
        attn_implementation="sdpa",  # fused causal attention (flash kernel on CPU and CUDA)
    )
    return GPT2LMHeadModel(config)


def flop_params(model) -> int:
    """Parameters that take part in matmuls: all but the position embeddings (a lookup). The tied
    token embedding counts once, as the LM head (nanoGPT's non-embedding count, with the head)."""
    return sum(t.numel() for t in model.parameters()) - model.transformer.wpe.weight.numel()


def mfu(flops_token: float, tokens_per_s: float, peak: float) -> float:
    """Model FLOPs utilization: achieved training FLOP/s over the hardware's peak."""
    return flops_token * tokens_per_s / peak
