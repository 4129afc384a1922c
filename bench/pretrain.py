"""Our pretraining step against a minimal hand-written PyTorch loop, side by side in one process.

Run: `python bench/pretrain.py` (or `python -m bench.pretrain`); `--help` for the knobs.
Goal: `lmpipe.pretraining.loop.train_step` at >= 1.0x the tokens/s of the minimal loop on CPU.

Both arms train the same model (`build_model` from params.yaml's pretrain section, identical initial
weights), on the same batches (the same random windows of the same shard), with the same AdamW
hyperparameters, decay groups, lr schedule, gradient clipping and thread count. The minimal loop is
what one writes by hand after nanoGPT: a Python loop that stacks windows into a batch,
`model(x).logits`, `F.cross_entropy`, backward, clip, `optimizer.step()` with torch's default AdamW
implementation. Arms run interleaved in rounds (order alternating) so machine load hits both alike;
the ratio is best round against best round (load only adds time), with the median of per-round
ratios beside it. Their losses must agree (same maths), which is checked.

An informational third arm, the same minimal loop on a stock `GPT2Config` (activation "gelu_new",
the transformers default), shows what the stage's model config itself buys; it is not in the ratio.

On a GPU (`--device cuda`), both arms run under the stage's bf16 autocast with TF32 on, and
`--compile` puts both forwards through `torch.compile`; the minimal loop then uses fused AdamW, as
nanoGPT does on CUDA. `--preset gpt2-124m` swaps params.yaml's model for GPT-2 small (12 layers,
768 wide, 12 heads, block 1024, vocabulary padded to 50,304, no dropout) on synthetic tokens, and
the table adds MFU against the device's dense bf16 peak (`lmpipe.modeling.PEAK_FLOPS`):

    python -m bench.pretrain --device cuda --preset gpt2-124m --batch 32 --compile --rounds 6 --steps 5

The stage also tunes glibc's allocator (`lmpipe.runtime.keep_freed_memory`). That setting is
process-wide, so both arms above run with it; `--allocator` measures what it is worth on its own,
with `train_step` in child processes that alternate between glibc's defaults and the setting.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/pretrain.py` from the repo root, as `make bench` does
os.chdir(ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lmpipe.modeling import LMLoss, flops_per_token, peak_flops  # noqa: E402
from lmpipe.params import ModelShape, read_params  # noqa: E402
from lmpipe.pretraining.loop import train_step  # noqa: E402
from lmpipe.pretraining.model import build_model, flop_params, mfu  # noqa: E402
from lmpipe.pretraining.optim import lr_at, make_optimizer, param_groups  # noqa: E402
from lmpipe.runtime import autocast, keep_freed_memory  # noqa: E402

# GPT-2 small as nanoGPT trains it: the vocabulary padded from 50,257 to a multiple of 64
GPT2_124M = ModelShape(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0)
GPT2_VOCAB = 50304


def synthetic_tokens(vocab: int, n: int, seed: int) -> tuple[np.ndarray, dict]:
    """Zipf-distributed ids: a realistic frequency profile without a tokenized corpus."""
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.2, size=n) - 1, vocab - 1).astype(np.uint16)
    return ids, {"vocab_size": vocab, "eos_id": 0, "pad_id": 1, "dtype": "uint16", "synthetic": True}


def load_tokens(vocab: int, n: int, seed: int) -> tuple[np.ndarray, dict]:
    """The real train shard when the tokenize stage has run, else synthetic tokens."""
    from lmpipe.modeling import load_meta, open_shard

    try:
        meta = load_meta()
        return open_shard("train", meta), meta
    except Exception:  # no shard yet
        return synthetic_tokens(vocab, n, seed)


def minimal_loop(model, data: np.ndarray, p, seed: int, total: int, device: torch.device,
                 compiled: bool = False):
    """The hand-written baseline: nanoGPT's get_batch and step, nothing else (on CUDA, like
    nanoGPT: pinned host batches copied asynchronously, bf16 autocast, fused AdamW)."""
    cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(param_groups(model, p.weight_decay), lr=p.lr, betas=(p.beta1, p.beta2),
                                  fused=True if cuda else None)
    T, B = p.model.block_size, p.batch_size
    forward = torch.compile(model) if compiled else model

    def step(i: int) -> torch.Tensor:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(i, p, total)
        ix = np.random.default_rng([seed, i, 0]).integers(0, len(data) - T - 1, size=B)
        x = torch.stack([torch.from_numpy(data[j:j + T].astype(np.int64)) for j in ix])
        y = torch.stack([torch.from_numpy(data[j + 1:j + 1 + T].astype(np.int64)) for j in ix])
        if cuda:
            x = x.pin_memory().to(device, non_blocking=True)
            y = y.pin_memory().to(device, non_blocking=True)
        with autocast(device, p.dtype):
            logits = forward(x).logits
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def ours(model, data: np.ndarray, p, seed: int, total: int, device: torch.device = torch.device("cpu"),
         compiled: bool = False):
    """The stage's own step, wired as `lmpipe.pretraining.loop.train` wires it."""
    optimizer = make_optimizer(model, p)
    loss_fn = torch.compile(LMLoss(model)) if compiled else LMLoss(model)
    return lambda i: train_step(model, optimizer, data, p, step=i, total=total, seed=seed, device=device,
                                loss_fn=loss_fn)


def probe(args, p, seed: int) -> None:
    """Child process of --allocator: time `train_step` with or without the allocator setting."""
    if args.probe == "tuned":
        assert keep_freed_memory(), "mallopt not available (not Linux/glibc)"
    data, meta = load_tokens(4096, 2_000_000, seed)
    torch.manual_seed(seed)
    model = build_model(p, meta)
    step = ours(model, data, p, seed, 1000)
    for i in range(2):
        step(i)
    start = time.perf_counter()
    for i in range(2, 2 + args.steps):
        float(step(i))
    print(f"PROBE {(time.perf_counter() - start) / args.steps}")


def allocator_ab(args) -> None:
    import subprocess

    cmd = [sys.executable, __file__, "--threads", str(torch.get_num_threads()), "--steps", str(args.steps),
           "--params", args.params, "--probe"]
    seconds: dict[str, list[float]] = {"glibc defaults": [], "keep_freed_memory": []}
    for r in range(args.rounds):
        for name in (list(seconds) if r % 2 == 0 else list(seconds)[::-1]):
            out = subprocess.run(cmd + ["default" if name == "glibc defaults" else "tuned"],
                                 capture_output=True, text=True, check=True).stdout
            seconds[name].append(float(out.split("PROBE ")[-1]))
    print(f"\nallocator, lmpipe train_step in fresh processes ({args.rounds} rounds x {args.steps} steps):")
    for name, v in seconds.items():
        print(f"  {name:20s} {statistics.median(v) * 1000:8.1f} ms/step")
    ratio = statistics.median(a / b for a, b in zip(seconds["glibc defaults"], seconds["keep_freed_memory"]))
    print(f"  keep_freed_memory speed-up: {ratio:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--steps", type=int, default=1, help="steps per arm per round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = all cores")
    ap.add_argument("--no-stock", action="store_true", help="skip the informational stock-config arm")
    ap.add_argument("--allocator", action="store_true",
                    help="instead: A/B the allocator setting in child processes")
    ap.add_argument("--probe", choices=["default", "tuned"], help=argparse.SUPPRESS)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--preset", choices=["params", "gpt2-124m"], default="params",
                    help="model: params.yaml's pretrain.model, or GPT-2 small on synthetic tokens")
    ap.add_argument("--batch", type=int, default=0, help="batch size; 0 = params.yaml's")
    ap.add_argument("--compile", action="store_true", help="torch.compile both arms' forward")
    args = ap.parse_args()

    params = read_params(Path(args.params))
    update = {"grad_accum": 1}
    if args.batch:
        update["batch_size"] = args.batch
    if args.preset == "gpt2-124m":
        update["model"] = GPT2_124M
    p = params.pretrain.model_copy(update=update)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.probe:
        return probe(args, p, params.seed)
    if args.allocator:
        return allocator_ab(args)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:  # as lmpipe.pretraining.loop sets them
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        keep_freed_memory()  # as the stage does; process-wide, so for both arms
    if args.preset == "gpt2-124m":
        data, meta = synthetic_tokens(GPT2_VOCAB, 20_000_000, params.seed)
    else:
        data, meta = load_tokens(4096, 2_000_000, params.seed)
    total = args.rounds * args.steps + 2

    torch.manual_seed(params.seed)
    model = build_model(p, meta)
    arms = {
        "minimal loop (same model)": minimal_loop(copy.deepcopy(model).to(device), data, p, params.seed, total,
                                                  device, args.compile),
        "lmpipe train_step": ours(copy.deepcopy(model).to(device), data, p, params.seed, total, device,
                                  args.compile),
    }
    if not args.no_stock and args.preset == "params" and not cuda:
        from transformers import GPT2LMHeadModel

        stock_config = copy.deepcopy(model.config)
        stock_config.activation_function = "gelu_new"  # the GPT2Config default
        stock = GPT2LMHeadModel(stock_config)
        stock.load_state_dict(model.state_dict())
        arms["minimal loop, stock GPT2Config (info)"] = minimal_loop(stock, data, p, params.seed, total, device)
    m = p.model
    tokens = p.batch_size * m.block_size
    fpt = flops_per_token(flop_params(model), m.n_layer, m.n_head, m.n_embd // m.n_head, m.block_size)
    peak = peak_flops(device, p.cpu_peak_flops)
    del model
    where = (f"{torch.cuda.get_device_name(device)}, bf16 autocast" if cuda
             else f"threads {torch.get_num_threads()}")
    print(f"model {m.n_layer}L/{m.n_embd}d/{m.n_head}h, vocab {meta['vocab_size']},"
          f" batch {p.batch_size} x block {m.block_size} = {tokens} tokens/step, {where},"
          f" compile {args.compile}, data {'synthetic' if meta.get('synthetic') else 'train shard'},"
          f" load avg {os.getloadavg()[0]:.1f} (cores {os.cpu_count()})", flush=True)

    next_step = dict.fromkeys(arms, 0)
    losses: dict[str, list[float]] = {k: [] for k in arms}
    seconds: dict[str, list[float]] = {k: [] for k in arms}

    def run(name: str, n: int, timed: bool) -> None:
        start = time.perf_counter()
        round_losses = [arms[name](next_step[name] + k) for k in range(n)]
        # one host sync per round (float() waits for the device), not one per step
        losses[name].extend(float(v) for v in round_losses)
        next_step[name] += n
        if timed:
            seconds[name].append((time.perf_counter() - start) / n)

    for name in arms:  # warm-up: allocator, oneDNN/cuBLAS primitives, optimizer state, compilation
        t0 = time.perf_counter()
        run(name, 2 + 2 * args.compile, timed=False)
        print(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    names = list(arms)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            run(name, args.steps, timed=True)

    base, mine = "minimal loop (same model)", "lmpipe train_step"

    def ratios(name: str) -> tuple[float, float]:
        """(best vs best, median of per-round ratios): load only ever adds time, so the best round
        of each arm is the least disturbed estimate; the per-round median shows the spread."""
        return (min(seconds[base]) / min(seconds[name]),
                statistics.median(b / s for b, s in zip(seconds[base], seconds[name])))

    print(f"\n{'arm':40s} {'tok/s':>9s} {'ms/step':>8s} {'median':>8s} {'vs minimal':>11s}"
          f" {'(median)':>9s} {'MFU':>6s} {'final loss':>11s}")
    for name in names:
        best, median = min(seconds[name]), statistics.median(seconds[name])
        r_best, r_median = ratios(name)
        print(f"{name:40s} {tokens / best:9,.0f} {best * 1000:8.1f} {median * 1000:8.1f} {r_best:10.2f}x"
              f" {r_median:8.2f}x {mfu(fpt, tokens / best, peak):6.1%} {losses[name][-1]:11.4f}")
    r_best, r_median = ratios(mine)
    drift = max(abs(a - b) for a, b in zip(losses[base], losses[mine]))
    print(f"(tok/s, ms/step and MFU: best of {args.rounds} rounds of {args.steps} steps; median: median"
          f" round; MFU: {fpt / 1e6:,.0f} MFLOPs/token, nanoGPT's formula, over a peak of {peak / 1e12:,.1f}"
          f" TFLOP/s{'' if cuda else ' (pretrain.cpu_peak_flops, a guess)'})")
    print(f"\nlmpipe / minimal: {r_best:.2f}x best-of, {r_median:.2f}x median of rounds"
          f" (goal >= 1.0: {'met' if r_best >= 1.0 else 'NOT met'});"
          f" max |loss difference| over {len(losses[base])} steps: {drift:.2e}"
          f" ({'same maths' if drift < 1e-2 else 'ARMS DIVERGED'}); load avg now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
