"""Stage 4 — pretrain: a GPT-2-style causal LM from scratch on the token shards.

A plain PyTorch loop around `transformers.GPT2LMHeadModel` (nanoGPT's shape: random blocks from
memory-mapped shards, AdamW with decay/no-decay groups, warmup + cosine, clipping, accumulation).
We use our own loop rather than the HF Trainer for pretraining because it is the hot path and
`bench/pretrain.py` holds it to at least the speed of a minimal hand-written loop; the model and
the saved `models/base` are plain transformers objects all the same.

Robustness: an atomic checkpoint every `checkpoint_every` steps (and on SIGTERM/SIGINT) under
data/checkpoints/pretrain; a rerun with the same config resumes from it. The batch drawn at step
s depends only on (seed, s, rank), so a resumed run sees exactly the data an uninterrupted one
would have.

Distributed: with `nproc > 1` the stage relaunches itself under `torchrun` and trains with DDP
(gloo on CPU, nccl on CUDA); rank 0 writes every output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import great_expectations.expectations as gxe
import numpy as np
import torch

from stages.artifacts import (
    atomic_path, run_stage, seed_everything, set_threads, write_json,
)
from stages.config import PretrainParams, load_params
from stages.gates import Gate
from stages.modeling import (
    autocast, eval_lm_loss, flops_per_token, load_meta, lm_loss, open_shard, peak_flops, perplexity,
    resolve_device, sample_blocks, unigram_loss,
)

BASE_DIR = Path("models/base")
CKPT_DIR = Path("data/checkpoints/pretrain")
PLOTS_DIR = Path("plots/pretrain")


def build_model(p: PretrainParams, meta: dict):
    from transformers import GPT2Config, GPT2LMHeadModel

    m = p.model
    config = GPT2Config(
        vocab_size=meta["vocab_size"], n_positions=m.block_size, n_embd=m.n_embd, n_layer=m.n_layer,
        n_head=m.n_head, resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.dropout,
        bos_token_id=meta["eos_id"], eos_token_id=meta["eos_id"], pad_token_id=meta["pad_id"],
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(config)


def param_groups(model, weight_decay: float):
    """Decay matrices (2-D weights) only; biases and LayerNorm gains are not regularized."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, p: PretrainParams, total: int) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr at the last step."""
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    progress = (step - p.warmup_steps) / max(1, total - p.warmup_steps)
    coeff = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return p.lr * (p.min_lr_ratio + (1 - p.min_lr_ratio) * coeff)


def total_steps(p: PretrainParams, world: int) -> int:
    if p.max_tokens:
        per_step = p.batch_size * p.grad_accum * p.model.block_size * world
        return max(1, math.ceil(p.max_tokens / per_step))
    return p.max_steps


def run_fingerprint(p: PretrainParams, seed: int, meta: dict, world: int) -> str:
    """A checkpoint is resumable only by a run with the same config, data and world size."""
    blob = json.dumps([p.model_dump(), seed, meta, world], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(model, optimizer, step: int, fingerprint: str, history: list) -> None:
    with atomic_path(CKPT_DIR) as tmp:
        tmp.mkdir()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp / "state.pt")
        (tmp / "progress.json").write_text(json.dumps(
            {"step": step, "fingerprint": fingerprint, "history": history}))


def load_checkpoint(model, optimizer, fingerprint: str):
    """Return (step, history) of a matching checkpoint, or (0, []) to start fresh."""
    progress_file = CKPT_DIR / "progress.json"
    if not progress_file.exists():
        return 0, []
    progress = json.loads(progress_file.read_text())
    if progress["fingerprint"] != fingerprint:
        print(f"[pretrain] ignoring checkpoint from a different config ({CKPT_DIR})", flush=True)
        return 0, []
    # weights_only: never unpickle arbitrary objects from disk
    state = torch.load(CKPT_DIR / "state.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    print(f"[pretrain] resuming from step {progress['step']}", flush=True)
    return progress["step"], progress["history"]


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checkpoints after the current step and exits."""

    def __init__(self):
        self.stop = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.stop = True


def relaunch_with_torchrun(nproc: int) -> None:
    """`nproc > 1` outside torchrun: re-exec this stage as `torchrun --nproc_per_node=nproc`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "stages.pretrain"]
    print(f"[pretrain] launching {' '.join(cmd[2:])}", flush=True)
    os.execv(sys.executable, cmd)


def train(params, out_dir: Path = BASE_DIR) -> dict:
    p: PretrainParams = params.pretrain
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(p.device)
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    threads = set_threads(p.threads // world if p.threads else max(1, (os.cpu_count() or 1) // world))
    seed_everything(params.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    meta = load_meta()
    train_data, val_data = open_shard("train", meta), open_shard("validation", meta)
    block = p.model.block_size
    model = build_model(p, meta).to(device)
    n_params = sum(t.numel() for t in model.parameters())
    optimizer = torch.optim.AdamW(param_groups(model, p.weight_decay), lr=p.lr,
                                  betas=(p.beta1, p.beta2), fused=device.type == "cuda")
    steps = total_steps(p, world)
    fingerprint = run_fingerprint(p, params.seed, meta, world)
    start, history = load_checkpoint(model, optimizer, fingerprint)

    fwd_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        fwd_model = DistributedDataParallel(model)
    if p.compile:
        fwd_model = torch.compile(fwd_model)

    tokens_per_step = p.batch_size * p.grad_accum * block * world
    fpt = flops_per_token(n_params, p.model.n_layer, p.model.n_head, p.model.n_embd // p.model.n_head, block)
    peak = peak_flops(device, p.cpu_peak_flops) * world
    live = None
    if rank == 0:
        from dvclive import Live

        # dvcyaml=False: dvc.yaml owns the plots declarations; resume appends to the same curves
        live = Live(dir=str(PLOTS_DIR), dvcyaml=False, save_dvc_exp=False, resume=start > 0,
                    report=None, monitor_system=False)
        print(f"[pretrain] {n_params / 1e6:.2f}M params, {steps} steps x {tokens_per_step} tokens,"
              f" device={device}, world={world}, threads={threads}", flush=True)

    stopper = StopFlag()
    model.train()
    t_start = time.perf_counter()
    t_last, tokens_since, loss_acc = t_start, 0, []
    step = start
    for step in range(start, steps):
        lr = lr_at(step, p, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # The batch depends on (seed, step, rank) only: resuming continues the same data order.
        rng = np.random.default_rng([params.seed, step, rank])
        for micro in range(p.grad_accum):
            x, y = sample_blocks(train_data, block, p.batch_size, rng)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            sync = world == 1 or micro == p.grad_accum - 1
            ctx = fwd_model.no_sync() if not sync else contextlib.nullcontext()
            with ctx:  # DDP: all-reduce gradients only on the last micro-step
                with autocast(device, p.dtype):
                    loss = lm_loss(fwd_model, x, y) / p.grad_accum
                loss.backward()
            loss_acc.append(loss.item() * p.grad_accum)
        if p.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_since += tokens_per_step

        done = step + 1
        if rank == 0 and (done % p.log_every == 0 or done == steps):
            now = time.perf_counter()
            tps = tokens_since / (now - t_last)
            train_loss = float(np.mean(loss_acc))
            entry = {"step": done, "train_loss": train_loss, "lr": lr, "tokens_per_s": tps,
                     "mfu": fpt * tps / peak}
            if done % p.eval_every == 0 or done == steps:
                entry["val_loss"] = eval_lm_loss(model, val_data, block, p.batch_size, p.eval_batches,
                                                 params.seed, device, p.dtype)
            history.append(entry)
            live.step = done
            for key in ("train_loss", "val_loss", "lr"):
                if key in entry:
                    live.log_metric(key, entry[key], plot=True)
            val = f" val {entry['val_loss']:.3f}" if "val_loss" in entry else ""
            print(f"[pretrain] step {done}/{steps} loss {train_loss:.3f}{val} lr {lr:.2e}"
                  f" {tps:,.0f} tok/s mfu {entry['mfu']:.1%}", flush=True)
            t_last, tokens_since, loss_acc = now, 0, []
        if rank == 0 and (done % p.checkpoint_every == 0 or stopper.stop) and done < steps:
            save_checkpoint(model, optimizer, done, fingerprint, history)
        if stopper.stop:
            print(f"[pretrain] interrupted at step {done}; rerun to resume", flush=True)
            raise SystemExit(143)

    wall = time.perf_counter() - t_start
    result = None
    if rank == 0:
        final_val = eval_lm_loss(model, val_data, block, p.batch_size, p.eval_batches, params.seed,
                                 device, p.dtype)
        unigram = unigram_loss(np.asarray(train_data), np.asarray(val_data), meta["vocab_size"])
        timed = [h["tokens_per_s"] for h in history[1:]] or [h["tokens_per_s"] for h in history]
        tps = float(np.median(timed)) if timed else 0.0
        result = {
            "train_loss": history[-1]["train_loss"] if history else float("nan"),
            "val_loss": final_val,
            "val_ppl": perplexity(final_val),
            "unigram_loss": unigram,
            "steps": steps,
            "tokens_seen": steps * tokens_per_step,
            "tokens_per_s": tps,
            "mfu": fpt * tps / peak,
            "params": n_params,
            "wall_s": wall,
            "device": device.type,
            "world_size": world,
        }
        with atomic_path(out_dir) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained("models/tokenizer").save_pretrained(tmp)
        live.end()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return {"result": result, "history": history, "rank": rank}


def main() -> None:
    params = load_params()
    p = params.pretrain
    if p.nproc > 1 and "WORLD_SIZE" not in os.environ:
        relaunch_with_torchrun(p.nproc)
    out = train(params)
    if out["rank"] != 0:
        return
    result = out["result"]
    write_json("metrics/pretrain.json", result)
    shutil.rmtree(CKPT_DIR, ignore_errors=True)  # finished: a stale checkpoint must not be resumed

    losses = [h["train_loss"] for h in out["history"]]
    gate = Gate("pretrain").scalars("losses", {
        "train_loss": result["train_loss"], "val_loss": result["val_loss"],
        "val_minus_unigram": result["val_loss"] - p.gate.max_val_loss_ratio * result["unigram_loss"],
        # divergence: the loss at the end must not exceed the first logged loss
        "final_over_first": losses[-1] / losses[0] if losses else float("nan"),
    })
    for key in ("train_loss", "val_loss"):
        gate.expect("losses", gxe.ExpectColumnValuesToBeBetween(column=key, min_value=0, max_value=1e4))
    gate.expect("losses", gxe.ExpectColumnValuesToBeBetween(
        column="val_minus_unigram", max_value=0, strict_max=True))
    gate.expect("losses", gxe.ExpectColumnValuesToBeBetween(column="final_over_first", max_value=1.0))
    gate.finish()


if __name__ == "__main__":
    run_stage(main)
