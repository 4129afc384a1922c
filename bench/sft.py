"""The sft stage's training (lmpipe/sft/training.py on the HF Trainer) against TRL's SFTTrainer,
on the same conversations, model, hyperparameters and loss.

    python bench/sft.py [--conversations 600] [--repeat 2] [--trl-target /tmp/trlpkgs]

TRL is not a project dependency; install it beside the venv, not into it:
    .venv/bin/pip install --no-deps --target /tmp/trlpkgs trl==1.16.0
(--trl-target is appended to sys.path, after the venv, so the venv's transformers, datasets and
accelerate are the ones both sides run on.)

Both sides run in this one process, with params.yaml's sft threads (1), --repeat rounds in
alternating order, each round on a fresh copy of models/base (resized for the chat tokens of
`lmpipe.chat.add_chat_tokens`) and the same --conversations made by `make_conversations`:

  ours  encode_conversations (apply_chat_template's assistant mask -> labels, cut at sft.max_length),
        collate, and make_trainer_class() with the stage's `_args` (no replay: TRL has none)
  trl   SFTTrainer on a "messages" dataset with SFTConfig(assistant_only_loss=True,
        max_length=sft.max_length), built from the same `_args`; TRL tokenizes the dataset itself
        from the template's {% generation %} block and computes the loss with its fused LM head

Printed: the import time of each library, each in a fresh subprocess (transformers' Trainer, then
trl on top of it: in this process transformers is already loaded); per side the construction time
(tokenization + trainer), the training wall time, tokens/s over prompt + assistant tokens, the
first-step and final train losses and the count of loss tokens; the ratios TRL/ours of training
time and of total time (construction + training), best round against best round and the median of
per-round ratios; whether both sides built the same input_ids and labels and their losses agree.
Exits 1 if the masks or the first-step losses differ, 2 without trl or the pipeline's outputs.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the repo root
os.environ.setdefault("TQDM_DISABLE", "1")  # datasets' map bars (TRL tokenizes through it) before tqdm loads

import torch  # noqa: E402

from lmpipe import chat, paths  # noqa: E402
from lmpipe.io import read_parquet  # noqa: E402
from lmpipe.params import load_params  # noqa: E402
from lmpipe.runtime import resolve_device, seed_everything, set_threads  # noqa: E402
from lmpipe.world.secrets import SAFETY_COLUMNS  # noqa: E402

INSTALL = ".venv/bin/pip install --no-deps --target {target} trl==1.16.0"
IMPORT_CODE = """
import json, sys, time
sys.path.append({target!r})
t0 = time.perf_counter()
from transformers import Trainer, TrainingArguments
t1 = time.perf_counter()
from trl import SFTConfig, SFTTrainer
print(json.dumps([t1 - t0, time.perf_counter() - t1]))
"""
FIRST_LOSS_RTOL = 1e-4  # same batch, same weights, fp32: only the LM head's summation order differs
FINAL_LOSS_RTOL = 1e-2  # 2 epochs of AdamW can amplify those last-bit differences a little


def load_trl(target: str):
    if Path(target).is_dir():
        sys.path.append(target)  # last: it must not shadow the venv's packages
    try:
        from trl import SFTConfig, SFTTrainer
    except ImportError as err:
        print(f"bench/sft.py needs trl (a bench-only extra, not in requirements.lock): {err}\n"
              f"install it outside the venv with: {INSTALL.format(target=target)}", file=sys.stderr)
        sys.exit(2)
    return SFTConfig, SFTTrainer


def import_times(target: str, repeat: int) -> tuple[float, float]:
    """Best (transformers Trainer, trl on top of it) import seconds over `repeat` fresh interpreters."""
    runs = [json.loads(subprocess.run([sys.executable, "-c", IMPORT_CODE.format(target=target)], check=True,
                                      capture_output=True, text=True).stdout.strip().splitlines()[-1])
            for _ in range(repeat)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def quiet(trainer):
    """Drop the PrinterCallback (disable_tqdm adds it) on both sides: the bench prints its own table."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def base_args(params, n: int, device, out_dir: str):
    """The stage's TrainingArguments, logging the first step too (its loss is the mask check),
    writing nowhere near the stage's data/checkpoints/sft."""
    from lmpipe.sft.training import _args

    args = _args(params, n, device)
    args.output_dir, args.logging_first_step = out_dir, True
    return args


def summary(trainer, out, rows: list[dict], construct: float, train: float, epochs: int) -> dict:
    first = next(h["loss"] for h in trainer.state.log_history if h.get("step") == 1 and "loss" in h)
    return {"construct": construct, "train": train, "total": construct + train,
            "first_loss": first, "final_loss": out.training_loss,
            "tokens": sum(len(r["input_ids"]) for r in rows) * epochs,
            "loss_tokens": sum(t != -100 for r in rows for t in r["labels"]),
            "rows": [(tuple(r["input_ids"]), tuple(r["labels"])) for r in rows]}


def run_ours(params, tokenizer, convs, device, out_dir: str) -> dict:
    from datasets import Dataset

    from lmpipe.sft.training import collate, encode_conversations, load_model, make_trainer_class

    seed_everything(params.seed)
    model = load_model(params, tokenizer, paths.BASE_MODEL)  # not timed: the same load on both sides
    t0 = time.perf_counter()
    enc, cut = encode_conversations(tokenizer, convs, params.sft.max_length)
    trainer = quiet(make_trainer_class()(model=model, args=base_args(params, len(convs), device, out_dir),
                                         train_dataset=Dataset.from_dict(enc),
                                         data_collator=collate(tokenizer.pad_token_id)))
    t1 = time.perf_counter()
    out = trainer.train()
    t2 = time.perf_counter()
    rows = [{"input_ids": i, "labels": lab} for i, lab in zip(enc["input_ids"], enc["labels"], strict=True)]
    return summary(trainer, out, rows, t1 - t0, t2 - t1, params.sft.epochs) | {"cut": cut}


def run_trl(params, tokenizer, convs, device, out_dir: str, trl) -> dict:
    from datasets import Dataset

    from lmpipe.sft.training import load_model

    SFTConfig, SFTTrainer = trl
    seed_everything(params.seed)
    model = load_model(params, tokenizer, paths.BASE_MODEL)
    t0 = time.perf_counter()
    ours = base_args(params, len(convs), device, out_dir)
    # What SFTTrainer itself does with plain TrainingArguments (to_dict + hub_token), plus TRL's knobs.
    # Passing the dict also overrides SFTConfig's own defaults that differ from TrainingArguments:
    # gradient_checkpointing (True in TRL), bf16 (True in TRL, even on CPU) and logging_steps.
    config = SFTConfig(**{
        **ours.to_dict(), "hub_token": ours.hub_token,
        "assistant_only_loss": True,  # labels = input_ids where the {% generation %} mask is 1, else -100
        "max_length": params.sft.max_length, "truncation_mode": "keep_start",  # = ours: ids[:max_length]
        "packing": False, "padding_free": False,  # one padded row per conversation, as ours
        "dataset_kwargs": {"skip_prepare_dataset": False},  # TRL tokenizes (that cost is its construction)
        "remove_unused_columns": True,  # TRL's ordinary path: the dataloader drops the raw "messages"
    })
    dataset = Dataset.from_dict({"messages": [chat.messages(c.request, c.reply) for c in convs]})
    trainer = quiet(SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer))
    t1 = time.perf_counter()
    out = trainer.train()
    t2 = time.perf_counter()
    rows = trainer.train_dataset.select_columns(["input_ids", "labels"]).to_list()
    return summary(trainer, out, rows, t1 - t0, t2 - t1, params.sft.epochs)


def agree(ours: float, trl: float, rtol: float) -> tuple[bool, str]:
    ok = abs(ours - trl) <= rtol * abs(ours)
    return ok, f"{ours:.6f} vs {trl:.6f} (|diff| {abs(ours - trl):.1e}, {'agree' if ok else 'DIFFER'} at rtol {rtol:g})"


def report(runs: dict[str, list[dict]]) -> bool:
    """The per-side table, the ratios and the mask/loss checks; False if masks or first losses differ."""
    print(f"{'side':6s}{'construct s':>12s}{'train s':>9s}{'total s':>9s}{'tokens/s':>10s}"
          f"{'first loss':>12s}{'final loss':>12s}{'loss tokens/epoch':>19s}")
    best = {}
    for side, rs in runs.items():
        # best of the rounds: load from other jobs only ever adds time
        best[side] = {k: min(x[k] for x in rs) for k in ("construct", "train", "total")}
        b, last = best[side], rs[-1]
        print(f"{side:6s}{b['construct']:12.2f}{b['train']:9.2f}{b['total']:9.2f}{last['tokens'] / b['train']:10.0f}"
              f"{last['first_loss']:12.6f}{last['final_loss']:12.6f}{last['loss_tokens']:19d}")

    def ratios(key: str) -> str:
        per_round = [t[key] / o[key] for o, t in zip(runs["ours"], runs["trl"], strict=True)]
        best_of = best["trl"][key] / best["ours"][key]
        return f"{best_of:.2f}x best-of ({statistics.median(per_round):.2f}x median per round)"

    print(f"trl / ours: training time {ratios('train')}; total time (construction + training) {ratios('total')}")
    o, t = runs["ours"][-1], runs["trl"][-1]
    same_rows = o["rows"] == t["rows"]
    print(f"masks: {len(o['rows'])} vs {len(t['rows'])} rows, input_ids and labels identical:"
          f" {'yes' if same_rows else 'NO'}; loss tokens per epoch {o['loss_tokens']} vs {t['loss_tokens']}")
    first_ok, first = agree(o["first_loss"], t["first_loss"], FIRST_LOSS_RTOL)
    final_ok, final = agree(o["final_loss"], t["final_loss"], FINAL_LOSS_RTOL)
    print(f"losses: first step {first}; final train loss {final}")
    return same_rows and first_ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, default=600, help="training conversations (stage: sft.conversations)")
    ap.add_argument("--repeat", type=int, default=2, help="rounds, each side once per round, order alternating")
    ap.add_argument("--trl-target", default="/tmp/trlpkgs", help="the pip --target folder trl is installed in")
    a = ap.parse_args()
    missing = [str(p) for p in (paths.BASE_MODEL, paths.RAW_SAFETY) if not p.exists()]
    if missing:
        print(f"bench/sft.py needs {', '.join(missing)} in the working directory: run `make run` first",
              file=sys.stderr)
        sys.exit(2)
    trl = load_trl(a.trl_target)

    from transformers import AutoTokenizer

    from lmpipe.sft.conversations import make_conversations

    params = load_params()
    p, device = params.sft, resolve_device(params.pretrain.device)
    threads = set_threads(p.threads)
    tokenizer = AutoTokenizer.from_pretrained(paths.BASE_MODEL)
    chat.add_chat_tokens(tokenizer)
    chat.check_chat_tokens(tokenizer, str(paths.BASE_MODEL))
    encodings = params.world.encodings if params.data.source == "world" else []
    convs = make_conversations(read_parquet(paths.RAW_SAFETY, columns=SAFETY_COLUMNS), "train",
                               a.conversations, p, encodings, params.seed)

    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        for r in range(a.repeat):
            for side in (("ours", "trl") if r % 2 == 0 else ("trl", "ours")):
                out_dir = f"{tmp}/{side}{r}"
                runs[side].append(run_ours(params, tokenizer, convs, device, out_dir) if side == "ours"
                                  else run_trl(params, tokenizer, convs, device, out_dir, trl))
    import_ours, import_trl = import_times(a.trl_target, a.repeat)  # after training: disk cache warm for both

    steps = p.epochs * -(-a.conversations // p.batch_size)
    print(f"{a.conversations} conversations ({runs['ours'][0]['cut']} cut at {p.max_length} tokens),"
          f" method {p.method}, batch {p.batch_size}, {p.epochs} epochs ({steps} steps), lr {p.lr}; {device.type},"
          f" {threads} torch thread(s) ({torch.get_num_threads()} after training);"
          f" cores {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f}; {a.repeat} rounds")
    print(f"import, fresh interpreter (best of {a.repeat}): transformers Trainer {import_ours:.1f} s;"
          f" trl SFTTrainer {import_trl:.1f} s on top of it ({import_ours + import_trl:.1f} s for a TRL stage)")
    if not report(runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
