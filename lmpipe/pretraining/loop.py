"""The pretraining loop: nanoGPT's shape around a plain `transformers.GPT2LMHeadModel`.

Random blocks from memory-mapped shards, AdamW with decay/no-decay groups, warmup + cosine,
clipping, accumulation. Our own loop rather than the HF Trainer because it is the hot path and
`bench/pretrain.py` holds `train_step` to at least the speed of a minimal hand-written loop; the
model and the saved `models/base` are plain transformers objects all the same.

`train` runs in three parts: `_setup` (process, model, optimizer, resume), `_loop` (steps, logging,
evaluation, checkpoints, interruption) and `_summary` (the run's metrics), then rank 0 saves.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmpipe.bits_per_byte import bits_per_byte, validation_texts
from lmpipe.io import atomic_path
from lmpipe.modeling import (
    LMLoss,
    eval_lm_loss,
    flops_per_token,
    load_meta,
    no_progress_bars,
    open_shard,
    peak_flops,
    perplexity,
    sample_blocks,
    to_device,
    unigram_loss,
)
from lmpipe.params import Params, PretrainParams
from lmpipe.paths import BASE_MODEL, TOKENIZER, plots_dir
from lmpipe.pretraining.checkpoint import Resume, StopFlag, load_checkpoint, run_fingerprint, save_checkpoint
from lmpipe.pretraining.distributed import Distributed
from lmpipe.pretraining.model import build_model, flop_params, mfu
from lmpipe.pretraining.optim import lr_at, make_optimizer, total_steps
from lmpipe.runtime import autocast, keep_freed_memory, resolve_device, seed_everything, set_threads

PLOTS_DIR = plots_dir("pretrain")
CURVES = ("train_loss", "val_loss", "lr")  # dvclive curves under plots/pretrain/plots/metrics


@dataclass
class PretrainMetrics:
    """metrics/pretrain.json, in the order it is written."""

    train_loss: float
    val_loss: float  # sampled windows (the training curve's measure)
    val_ppl: float
    val_bits_per_byte: float  # the whole validation split, as lm-evaluation-harness scores it
    unigram_loss: float
    steps: int
    tokens_seen: int
    tokens_per_s: float
    mfu: float
    params: int
    wall_s: float
    device: str
    world_size: int
    threads: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class PretrainRun:
    """What `train` returns on every rank; `metrics` only on rank 0, which saved the model."""

    metrics: PretrainMetrics | None
    history: list[dict]  # one entry per logged or evaluated step
    rank: int


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


# --- curves -----------------------------------------------------------------------------------------


def open_live(history: list[dict]):
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


# --- setup ------------------------------------------------------------------------------------------


@dataclass
class Session:
    """Everything a run holds between setup and summary."""

    params: Params
    dist: Distributed
    device: torch.device
    threads: int
    meta: dict
    train_data: np.ndarray
    val_data: np.ndarray
    model: Any
    optimizer: torch.optim.Optimizer
    loss_fn: Any  # LMLoss, possibly inside DDP and torch.compile
    ddp: Any  # the DDP wrapper (for no_sync), or None
    steps: int
    fingerprint: str
    resume: Resume
    live: Any = None  # dvclive, rank 0 only

    @property
    def p(self) -> PretrainParams:
        return self.params.pretrain

    @property
    def history(self) -> list[dict]:
        return self.resume.history

    @property
    def tokens_per_step(self) -> int:
        return self.p.batch_size * self.p.grad_accum * self.p.model.block_size * self.dist.world

    @cached_property
    def flops_token(self) -> float:
        m = self.p.model
        return flops_per_token(flop_params(self.model), m.n_layer, m.n_head, m.n_embd // m.n_head, m.block_size)

    @cached_property
    def peak(self) -> float:
        return peak_flops(self.device, self.p.cpu_peak_flops) * self.dist.world


def _start_process(p: PretrainParams) -> tuple[Distributed, torch.device, int]:
    """Device, process group and CPU threads (the cores shared among the ranks)."""
    dist, device = Distributed.start(resolve_device(p.device))
    # the cores of this node are shared by this node's ranks only
    local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world))
    per_rank = p.threads // local if p.threads else max(1, (os.cpu_count() or 1) // local)
    threads = set_threads(per_rank)
    if device.type == "cpu":
        keep_freed_memory()  # no page faults on every step's vocabulary-sized buffers
    return dist, device, threads


def _loss_fn(model, dist: Distributed, compile_: bool):
    """model -> loss module -> DDP -> compile: the order torch documents for compiling DDP, and the
    loss inside the compiled graph (LMLoss says why). Returns (loss_fn, ddp wrapper or None)."""
    loss_fn = LMLoss(model)
    ddp = dist.wrap(loss_fn)
    if ddp is not None:
        loss_fn = ddp
    if compile_:
        loss_fn = torch.compile(loss_fn)
    return loss_fn, ddp


def _setup(params: Params) -> Session:
    p = params.pretrain
    dist, device, threads = _start_process(p)
    seed_everything(params.seed)
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls/convs on Ampere+; no-op on CPU
    torch.backends.cudnn.allow_tf32 = True
    meta = load_meta()
    train_data, val_data = open_shard("train", meta), open_shard("validation", meta)
    model = build_model(p, meta).to(device)
    model.train()
    optimizer = make_optimizer(model, p)
    fingerprint = run_fingerprint(p, params.seed, meta, dist.world)
    resume = load_checkpoint(model, optimizer, fingerprint, dist.rank)
    loss_fn, ddp = _loss_fn(model, dist, p.compile)
    s = Session(params, dist, device, threads, meta, train_data, val_data, model, optimizer, loss_fn, ddp,
                total_steps(p, dist.world), fingerprint, resume)
    if dist.rank == 0:
        s.live = open_live(s.history)
        n_params = sum(t.numel() for t in model.parameters())
        print(f"[pretrain] {n_params / 1e6:.2f}M params, {s.steps} steps x {s.tokens_per_step} tokens,"
              f" device={device}, world={dist.world}, threads={threads}", flush=True)
    return s


# --- the loop ---------------------------------------------------------------------------------------


@dataclass
class Window:
    """What is measured from one log line to the next: the summed loss, and tokens/s over the
    window's training time (evaluation and checkpoint seconds excluded)."""

    loss: torch.Tensor
    loss_steps: int
    t_start: float
    steps: int = 0
    excluded: float = 0.0

    def restart(self) -> None:
        self.t_start, self.steps, self.excluded = time.perf_counter(), 0, 0.0


def _record(s: Session, w: Window, step: int, log: bool, evaluate: bool, t_step_end: float) -> None:
    """A history entry for this step: train loss and speed when it logs, val loss when it evaluates."""
    done = step + 1
    entry: dict = {"step": done, "lr": lr_at(step, s.p, s.steps)}
    if log:
        s.dist.mean_(w.loss)  # the mean over ranks, not rank 0's share
        tps = w.steps * s.tokens_per_step / (t_step_end - w.t_start - w.excluded)
        entry.update(train_loss=w.loss.item() / w.loss_steps, tokens_per_s=tps, mfu=mfu(s.flops_token, tps, s.peak))
        w.loss.zero_()
        w.loss_steps = 0
    if s.dist.rank != 0:
        return
    if evaluate:
        entry["val_loss"] = eval_lm_loss(s.model, s.val_data, s.p.model.block_size, s.p.batch_size,
                                         s.p.eval_batches, s.params.seed, s.device, s.p.dtype)
    s.history.append(entry)
    log_curves(s.live, entry)
    print(f"[pretrain] step {done}/{s.steps}"
          + (f" loss {entry['train_loss']:.3f}" if log else "")
          + (f" val {entry['val_loss']:.3f}" if evaluate else "")
          + f" lr {entry['lr']:.2e}"
          + (f" {entry['tokens_per_s']:,.0f} tok/s mfu {entry['mfu']:.1%}" if log else ""),
          flush=True)


def _loop(s: Session, on_step: Callable[[int], None] | None) -> float:
    """Train from the resume step to the last; return this process's training seconds. A stop
    signal checkpoints after the current step and exits 143 (rerun to resume)."""
    p = s.p
    t_start = time.perf_counter()
    w = Window(torch.tensor(s.resume.window_loss, device=s.device), s.resume.window_steps, t_start)
    with StopFlag() as stopper:
        for step in range(s.resume.step, s.steps):
            w.loss += train_step(s.model, s.optimizer, s.train_data, p, step=step, total=s.steps,
                                 seed=s.params.seed, rank=s.dist.rank, device=s.device,
                                 loss_fn=s.loss_fn, ddp=s.ddp)
            w.steps += 1
            w.loss_steps += 1
            t_step_end = time.perf_counter()
            done = step + 1
            log = done % p.log_every == 0 or done == s.steps
            evaluate = done % p.eval_every == 0 or done == s.steps
            if log or evaluate:
                _record(s, w, step, log, evaluate, t_step_end)
            if on_step is not None:
                on_step(done)
            stop = s.dist.any(stopper.stop, s.device)
            if s.dist.rank == 0 and (done % p.checkpoint_every == 0 or stop) and done < s.steps:
                save_checkpoint(s.model, s.optimizer, s.fingerprint, Resume(
                    done, s.history, w.loss.item(), w.loss_steps, s.resume.wall_s + time.perf_counter() - t_start))
            if stop:
                s.dist.barrier()  # rank 0's checkpoint is complete before anyone exits
                print(f"[pretrain] interrupted at step {done}; rerun to resume", flush=True)
                raise SystemExit(143)
            if log:
                w.restart()
            else:
                w.excluded += time.perf_counter() - t_step_end
    return time.perf_counter() - t_start


# --- summary ----------------------------------------------------------------------------------------


def _validation_bits_per_byte(s: Session) -> float:
    """Every cleaned validation document, in fixed windows of the model's context: a number a peer
    harness reproduces, where `val_loss` samples windows and is per token of our own tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    return bits_per_byte(s.model, tokenizer, validation_texts(), s.p.model.block_size, s.p.batch_size, s.device)


def _summary(s: Session, wall: float) -> PretrainMetrics:
    final_val = s.history[-1]["val_loss"]  # evaluated at the last step
    timed = [h["tokens_per_s"] for h in s.history if "tokens_per_s" in h]
    timed = timed[1:] or timed  # the first window includes warm-up
    tps = float(np.median(timed)) if timed else 0.0
    return PretrainMetrics(
        train_loss=next((h["train_loss"] for h in reversed(s.history) if "train_loss" in h), float("nan")),
        val_loss=final_val,
        val_ppl=perplexity(final_val),
        val_bits_per_byte=_validation_bits_per_byte(s),
        unigram_loss=unigram_loss(np.asarray(s.train_data), np.asarray(s.val_data), s.meta["vocab_size"]),
        steps=s.steps,
        tokens_seen=s.steps * s.tokens_per_step,
        tokens_per_s=tps,
        mfu=mfu(s.flops_token, tps, s.peak),
        params=sum(t.numel() for t in s.model.parameters()),
        wall_s=wall,  # all processes of a resumed run
        device=s.device.type,
        world_size=s.dist.world,
        threads=s.threads,
    )


def save_model(model, out_dir: Path) -> None:
    """The model and the corpus tokenizer, together: everything later stages load from one folder."""
    from transformers import AutoTokenizer

    with atomic_path(out_dir) as tmp, no_progress_bars():
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(tmp)


def train(params: Params, out_dir: Path = BASE_MODEL, on_step: Callable[[int], None] | None = None) -> PretrainRun:
    """Train (or resume) and, on rank 0, save the model to `out_dir`. `on_step(done)` is called
    after every optimizer step (tests use it to interrupt a run at a known step)."""
    s = _setup(params)
    wall = s.resume.wall_s + _loop(s, on_step)
    metrics = None
    if s.dist.rank == 0:
        metrics = _summary(s, wall)
        save_model(s.model, out_dir)
        s.live.end()
    s.dist.close()
    return PretrainRun(metrics, s.history, s.dist.rank)
