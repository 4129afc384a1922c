"""A tiny randomly initialized GPT-2 and a byte-level BPE tokenizer trained on a few sentences:
real transformers objects, built in well under a second, for tests of the evaluation code."""

from __future__ import annotations

EOS, PAD = "<|endoftext|>", "<|pad|>"
SENTENCES = [
    "The baker in Pramor opens at dawn and sells rye bread to the harbour workers.",
    "We booked a table for four; the soup was cold but the staff were kind.",
    "Björn wrote the report twice before the deadline, then slept for a day.",
    "Rain fell on the old bridge while the market closed early.",
    "A short one.",
    "Prices rose by 3% in May, and nobody at the café was surprised.",
]


def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD)


def lm(tok, n_positions: int = 16, seed: int = 0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return GPT2LMHeadModel(config).eval()


def classifier(tok, n_positions: int = 32, num_labels: int = 2, seed: int = 0):
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=32, n_layer=2, n_head=2,
                        num_labels=num_labels, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return GPT2ForSequenceClassification(config).eval()
