"""Stage 4 — pretrain: a GPT-2-style causal LM from scratch on the token shards.

Run: `python -m stages.pretrain` (or `dvc repro pretrain`); `pretrain.nproc: 2` runs it as DDP.

A plain PyTorch loop around `transformers.GPT2LMHeadModel` (nanoGPT's shape: random blocks from
memory-mapped shards, AdamW with decay/no-decay groups, warmup + cosine, clipping, accumulation).
We use our own loop rather than the HF Trainer for pretraining because it is the hot path and
`bench/pretrain.py` holds `train_step` to at least the speed of a minimal hand-written loop; the
model and the saved `models/base` are plain transformers objects all the same.

Robustness: an atomic checkpoint every `checkpoint_every` steps (and on SIGTERM/SIGINT) under
data/checkpoints/pretrain; a rerun with the same config resumes from it. The batch drawn at step
s depends only on (seed, s, rank), so a resumed run sees exactly the data an uninterrupted one
would have and ends with the same weights.

Distributed: with `nproc > 1` the stage relaunches itself under `torchrun` and trains with DDP
(gloo on CPU, nccl on CUDA); every rank draws its own blocks, rank 0 writes every output.
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lmpipe.io import atomic_path, run_stage, write_json
from lmpipe.modeling import (
    LMLoss,
    eval_lm_loss,
    flops_per_token,
    load_meta,
    open_shard,
    peak_flops,
    perplexity,
    sample_blocks,
    to_device,
    unigram_loss,
)
from lmpipe.params import PretrainParams, load_params
from lmpipe.runtime import autocast, keep_freed_memory, resolve_device, seed_everything, set_threads

BASE_DIR = Path("models/base")
CKPT_DIR = Path("data/checkpoints/pretrain")
PLOTS_DIR = Path("plots/pretrain")
CURVES = ("train_loss", "val_loss", "lr")  # dvclive curves under plots/pretrain/plots/metrics


# --- model and optimizer ------------------------------------------------------------------------


def build_model(p: PretrainParams, meta: dict):
    from transformers import GPT2Config, GPT2LMHeadModel

    m = p.model
    config = GPT2Config(
        vocab_size=meta["vocab_size"], n_positions=m.block_size, n_embd=m.n_embd, n_layer=m.n_layer,
        n_head=m.n_head, resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.dropout,
        bos_token_id=meta["eos_id"], eos_token_id=meta["eos_id"], pad_token_id=meta["pad_id"],
        tie_word_embeddings=True,
        # GPT-2's tanh-approximated GELU (the same function as "gelu_new") as one fused kernel;
        # "gelu_new" spells it as 8 elementwise ops: 1.1-1.3x slower CPU steps (bench/pretrain.py).
        # Saved in models/base/config.json, so every later from_pretrained uses it too.
        activation_function="gelu_pytorch_tanh",
        attn_implementation="sdpa",  # fused causal attention (flash kernel on CPU and CUDA)
    )
    return GPT2LMHeadModel(config)


def param_groups(model, weight_decay: float):
    """Decay matrices (2-D weights) only; biases and LayerNorm gains are not regularized."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, p: PretrainParams) -> torch.optim.AdamW:
    """AdamW over the decay groups. fused=True: one kernel over all tensors (CUDA, and CPU since
    torch 2.4) instead of ~a dozen elementwise ops per parameter tensor: 3-4x faster optimizer step
    on CPU, and far fewer OpenMP barriers for a loaded machine to stall."""
    return torch.optim.AdamW(param_groups(model, p.weight_decay), lr=p.lr, betas=(p.beta1, p.beta2),
                             fused=True)


def lr_at(step: int, p: PretrainParams, total: int) -> float:
    """Linear warmup to `lr`, then cosine decay that reaches lr * min_lr_ratio at the last step."""
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    progress = (step - p.warmup_steps) / max(1, total - 1 - p.warmup_steps)
    coeff = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return p.lr * (p.min_lr_ratio + (1 - p.min_lr_ratio) * coeff)


def total_steps(p: PretrainParams, world: int) -> int:
    if p.max_tokens:
        per_step = p.batch_size * p.grad_accum * p.model.block_size * world
        return max(1, math.ceil(p.max_tokens / per_step))
    return p.max_steps


def flop_params(model) -> int:
    """Parameters that take part in matmuls: all but the position embeddings (a lookup). The tied
    token embedding counts once, as the LM head (nanoGPT's non-embedding count, with the head)."""
    return sum(t.numel() for t in model.parameters()) - model.transformer.wpe.weight.numel()


def mfu(flops_token: float, tokens_per_s: float, peak: float) -> float:
    """Model FLOPs utilization: achieved training FLOP/s over the hardware's peak."""
    return flops_token * tokens_per_s / peak


# --- one optimizer step ---------------------------------------------------------------------------


def train_step(model, optimizer, data: np.ndarray, p: PretrainParams, *, step: int, total: int,
               seed: int, rank: int = 0, device: torch.device = torch.device("cpu"),
               loss_fn=None, ddp=None) -> torch.Tensor:
    """One optimizer step of `grad_accum` micro-batches; returns the mean loss as a 0-d tensor
    (no `.item()`: on a GPU that would stall the pipeline every step; the caller syncs when it logs).

    `loss_fn(x, y)` computes the loss: `LMLoss(model)`, possibly inside DDP and/or torch.compile
    (the default is the bare `LMLoss(model)`); `ddp` is the DDP wrapper itself (for no_sync).
    The batch depends on (seed, step, rank) only, so a resumed run continues the same data order."""
    loss_fn = loss_fn if loss_fn is not None else LMLoss(model)
    lr = lr_at(step, p, total)
    for group in optimizer.param_groups:
        group["lr"] = lr
    rng = np.random.default_rng([seed, step, rank])
    loss_sum = torch.zeros((), device=device)
    for micro in range(p.grad_accum):
        x, y = sample_blocks(data, p.model.block_size, p.batch_size, rng)
        x, y = to_device(x, device), to_device(y, device)
        last = micro == p.grad_accum - 1
        # DDP: all-reduce gradients once, on the last micro-step
        with ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext():
            with autocast(device, p.dtype):
                loss = loss_fn(x, y)
            (loss / p.grad_accum if p.grad_accum > 1 else loss).backward()
        loss_sum += loss.detach()
    if p.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / p.grad_accum


# --- checkpoints and interruption ---------------------------------------------------------------


def run_fingerprint(p: PretrainParams, seed: int, meta: dict, world: int) -> str:
    """A checkpoint is resumable only by a run with the same config, data and world size."""
    blob = json.dumps([p.model_dump(), seed, meta, world], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(model, optimizer, step: int, fingerprint: str, history: list,
                    window: tuple[float, int] = (0.0, 0), wall_s: float = 0.0) -> None:
    """Weights, optimizer and RNG state, plus the logged history and the open loss window (so a
    resumed run logs the same losses as an uninterrupted one) and the training seconds so far
    (so `wall_s` counts every process of an interrupted run), written atomically."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "rng_cpu": torch.get_rng_state()}  # dropout masks continue where they stopped
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state()
    with atomic_path(CKPT_DIR) as tmp:
        tmp.mkdir()
        torch.save(state, tmp / "state.pt")
        (tmp / "progress.json").write_text(json.dumps(
            {"step": step, "fingerprint": fingerprint, "history": history, "window": list(window),
             "wall_s": wall_s}))


def load_checkpoint(model, optimizer, fingerprint: str):
    """Return (step, history, window, wall_s) of a matching checkpoint, or a fresh start's."""
    fresh = 0, [], (0.0, 0), 0.0
    progress_file = CKPT_DIR / "progress.json"
    if not progress_file.exists():
        return fresh
    progress = json.loads(progress_file.read_text())
    if progress["fingerprint"] != fingerprint:
        print(f"[pretrain] ignoring checkpoint from a different config ({CKPT_DIR})", flush=True)
        return fresh
    # weights_only: never unpickle arbitrary objects from disk
    state = torch.load(CKPT_DIR / "state.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_cpu"])
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng_cuda"])
    if os.environ.get("RANK", "0") == "0":
        print(f"[pretrain] resuming from step {progress['step']}", flush=True)
    loss_sum, n = progress.get("window", (0.0, 0))
    return progress["step"], progress["history"], (float(loss_sum), int(n)), float(progress.get("wall_s", 0.0))


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checkpoints after the current step and exits 143.
    A context manager, so the previous handlers come back when training ends."""

    def __init__(self):
        self.stop = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.stop = True


def relaunch_with_torchrun(nproc: int) -> None:
    """`nproc > 1` outside torchrun: re-exec this stage as `torchrun --nproc_per_node=nproc`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "stages.pretrain"]
    print(f"[pretrain] launching {' '.join(cmd[2:])}", flush=True)
    sys.stdout.flush()
    os.execv(sys.executable, cmd)


# --- training -----------------------------------------------------------------------------------


def open_live(history: list):
    """dvclive curves, rebuilt from the checkpoint's history on resume: the curves then hold
    exactly the steps the weights went through, even after a kill or after DVC removed the
    plots directory before rerunning the stage."""
    from dvclive import Live

    # dvcyaml=False: dvc.yaml owns the plots declarations
    live = Live(dir=str(PLOTS_DIR), dvcyaml=False, save_dvc_exp=False, resume=False,
                report=None, monitor_system=False)
    for entry in history:
        log_curves(live, entry)
    return live


def log_curves(live, entry: dict) -> None:
    live.step = entry["step"]
    for key in CURVES:
        if key in entry:
            live.log_metric(key, entry[key], plot=True)


def train(params, out_dir: Path = BASE_DIR, on_step: Callable[[int], None] | None = None) -> dict:
    """Train (or resume) and, on rank 0, save the model to `out_dir`. `on_step(done)` is called
    after every optimizer step (tests use it to interrupt a run at a known step)."""
    p: PretrainParams = params.pretrain
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(p.device)
    dist = None
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    threads = set_threads(p.threads // world if p.threads else max(1, (os.cpu_count() or 1) // world))
    if device.type == "cpu":
        keep_freed_memory()  # ~1.27x faster CPU steps: no page faults on every step's big buffers
    seed_everything(params.seed)
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls/convs on Ampere+; no-op on CPU
    torch.backends.cudnn.allow_tf32 = True

    meta = load_meta()
    train_data, val_data = open_shard("train", meta), open_shard("validation", meta)
    block = p.model.block_size
    model = build_model(p, meta).to(device)
    model.train()
    n_params = sum(t.numel() for t in model.parameters())
    optimizer = make_optimizer(model, p)
    steps = total_steps(p, world)
    fingerprint = run_fingerprint(p, params.seed, meta, world)
    start, history, (window_loss, window_steps), wall_before = load_checkpoint(model, optimizer, fingerprint)

    # model -> loss module -> DDP -> compile: the order torch documents for compiling DDP, and the
    # loss inside the compiled graph (LMLoss says why)
    loss_fn, ddp = LMLoss(model), None
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        loss_fn = ddp = DistributedDataParallel(loss_fn)  # broadcasts rank 0's weights
    if p.compile:
        loss_fn = torch.compile(loss_fn)

    tokens_per_step = p.batch_size * p.grad_accum * block * world
    fpt = flops_per_token(flop_params(model), p.model.n_layer, p.model.n_head,
                          p.model.n_embd // p.model.n_head, block)
    peak = peak_flops(device, p.cpu_peak_flops) * world
    live = None
    if rank == 0:
        live = open_live(history)
        print(f"[pretrain] {n_params / 1e6:.2f}M params, {steps} steps x {tokens_per_step} tokens,"
              f" device={device}, world={world}, threads={threads}", flush=True)

    t_start = time.perf_counter()
    # tokens/s windows run from one log line to the next, minus evaluation and checkpoint time
    t_window, steps_in_window, excluded = t_start, 0, 0.0
    loss_window = torch.tensor(window_loss, device=device)  # summed over `loss_steps` steps
    loss_steps = window_steps
    with StopFlag() as stopper:
        for step in range(start, steps):
            loss_window += train_step(model, optimizer, train_data, p, step=step, total=steps,
                                      seed=params.seed, rank=rank, device=device,
                                      loss_fn=loss_fn, ddp=ddp)
            steps_in_window += 1
            loss_steps += 1
            t_step_end = time.perf_counter()
            done = step + 1
            log = done % p.log_every == 0 or done == steps
            evaluate = done % p.eval_every == 0 or done == steps
            if log or evaluate:
                entry = {"step": done, "lr": lr_at(step, p, steps)}
                if log:
                    if dist is not None:  # the mean over ranks, not rank 0's share
                        dist.all_reduce(loss_window)
                        loss_window /= world
                    tps = steps_in_window * tokens_per_step / (t_step_end - t_window - excluded)
                    entry.update(train_loss=loss_window.item() / loss_steps, tokens_per_s=tps,
                                 mfu=mfu(fpt, tps, peak))
                    loss_window.zero_()
                    loss_steps = 0
                if rank == 0:
                    if evaluate:
                        entry["val_loss"] = eval_lm_loss(model, val_data, block, p.batch_size,
                                                         p.eval_batches, params.seed, device, p.dtype)
                    history.append(entry)
                    log_curves(live, entry)
                    print(f"[pretrain] step {done}/{steps}"
                          + (f" loss {entry['train_loss']:.3f}" if log else "")
                          + (f" val {entry['val_loss']:.3f}" if evaluate else "")
                          + f" lr {entry['lr']:.2e}"
                          + (f" {entry['tokens_per_s']:,.0f} tok/s mfu {entry['mfu']:.1%}" if log else ""),
                          flush=True)
            if on_step is not None:
                on_step(done)
            stop = stopper.stop
            if dist is not None:  # every rank must stop at the same step
                flag = torch.tensor([float(stop)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
            if rank == 0 and (done % p.checkpoint_every == 0 or stop) and done < steps:
                save_checkpoint(model, optimizer, done, fingerprint, history, (loss_window.item(), loss_steps),
                                wall_before + time.perf_counter() - t_start)
            if stop:
                if dist is not None:
                    dist.barrier()  # rank 0's checkpoint is complete before anyone exits
                print(f"[pretrain] interrupted at step {done}; rerun to resume", flush=True)
                raise SystemExit(143)
            if log:
                t_window, steps_in_window, excluded = time.perf_counter(), 0, 0.0
            else:
                excluded += time.perf_counter() - t_step_end

    wall = wall_before + time.perf_counter() - t_start  # all processes of a resumed run
    result = None
    if rank == 0:
        final_val = history[-1]["val_loss"]  # evaluated at the last step
        unigram = unigram_loss(np.asarray(train_data), np.asarray(val_data), meta["vocab_size"])
        timed = [h["tokens_per_s"] for h in history if "tokens_per_s" in h]
        timed = timed[1:] or timed  # the first window includes warm-up
        tps = float(np.median(timed)) if timed else 0.0
        result = {
            "train_loss": next((h["train_loss"] for h in reversed(history) if "train_loss" in h),
                               float("nan")),
            "val_loss": final_val,
            "val_ppl": perplexity(final_val),
            "unigram_loss": unigram,
            "steps": steps,
            "tokens_seen": steps * tokens_per_step,
            "tokens_per_s": tps,
            "mfu": mfu(fpt, tps, peak),
            "params": n_params,
            "wall_s": wall,
            "device": device.type,
            "world_size": world,
            "threads": threads,
        }
        with atomic_path(out_dir) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained("models/tokenizer").save_pretrained(tmp)
        live.end()
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()
    return {"result": result, "history": history, "rank": rank}


def gate(result: dict, history: list, p: PretrainParams) -> None:
    """Losses finite, validation loss strictly below the unigram baseline, no divergence."""
    import great_expectations.expectations as gxe

    from lmpipe.gates import Gate

    losses = [h["train_loss"] for h in history if "train_loss" in h]
    vals = [h["val_loss"] for h in history if "val_loss" in h]
    finite = all(math.isfinite(v) for v in losses + vals + [result["unigram_loss"]])
    gate = Gate("pretrain").scalars("losses", {
        "train_loss": result["train_loss"], "val_loss": result["val_loss"],
        # GX skips NaN as "missing" in range checks, so finiteness is its own expectation
        "all_finite": finite,
        "val_minus_unigram": result["val_loss"] - p.gate.max_val_loss_ratio * result["unigram_loss"],
        # divergence: the last logged loss must not exceed the first
        "final_over_first": losses[-1] / losses[0] if losses else float("nan"),
    })
    gate.expect("losses", gxe.ExpectColumnValuesToBeInSet(column="all_finite", value_set=[True]))
    for key in ("train_loss", "val_loss"):
        gate.expect("losses", gxe.ExpectColumnValuesToBeBetween(column=key, min_value=0, max_value=1e4))
    gate.expect("losses", gxe.ExpectColumnValuesToBeBetween(
        column="val_minus_unigram", max_value=0, strict_max=True))
    gate.expect("losses", gxe.ExpectColumnValuesToBeBetween(column="final_over_first", max_value=1.0))
    gate.finish()


def main() -> None:
    params = load_params()
    p = params.pretrain
    if p.nproc > 1 and "WORLD_SIZE" not in os.environ:
        relaunch_with_torchrun(p.nproc)
    out = train(params)
    if out["rank"] != 0:
        return
    write_json("metrics/pretrain.json", out["result"])
    shutil.rmtree(CKPT_DIR, ignore_errors=True)  # finished: a stale checkpoint must not be resumed
    gate(out["result"], out["history"], p)


if __name__ == "__main__":
    run_stage(main)
