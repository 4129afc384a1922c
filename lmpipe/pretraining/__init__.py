"""Pretraining a GPT-2-style causal LM from scratch: what `stages.pretrain` runs.

    model.py        the transformers model, its FLOPs per token and MFU
    optim.py        AdamW with decay groups, warmup + cosine schedule, token budget
    checkpoint.py   atomic checkpoints, resume, SIGTERM/SIGINT handling
    launch.py       re-running the stage under torchrun (no torch import: it runs before any work)
    distributed.py  the DDP process group a run trains in
    loop.py         one optimizer step, the training loop, the run's metrics
"""
