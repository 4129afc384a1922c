"""Stage pretrain: a GPT-2-style causal LM from scratch on the token shards (lmpipe/pretraining).

Run: `python -m stages.pretrain` (or `dvc repro pretrain`); `pretrain.nproc: 2` runs it as DDP
(the stage relaunches itself under torchrun; rank 0 writes every output).

An interrupted run (SIGTERM, Ctrl-C, a crash) leaves a checkpoint under data/checkpoints/pretrain;
rerunning with the same config resumes from it and ends with the same weights.

Outputs: models/base (model + tokenizer), metrics/pretrain.json, plots/pretrain (dvclive curves);
then the gate: losses finite, validation loss below the unigram baseline, no divergence.
"""

from __future__ import annotations

import math

from lmpipe.io import run_stage, write_json
from lmpipe.outputs import check_writable
from lmpipe.params import PretrainParams, load_params
from lmpipe.paths import BASE_MODEL, CHECKPOINTS, metrics_file, plots_dir, quality_file
from lmpipe.pretraining.launch import launched_by_torchrun, needs_torchrun, relaunch_with_torchrun

METRICS = metrics_file("pretrain")


def gate(metrics: dict, history: list[dict], p: PretrainParams) -> None:
    """Losses finite, validation loss strictly below the unigram baseline, no divergence."""
    import great_expectations.expectations as gxe

    from lmpipe.gates import Gate

    losses = [h["train_loss"] for h in history if "train_loss" in h]
    vals = [h["val_loss"] for h in history if "val_loss" in h]
    finite = all(math.isfinite(v) for v in losses + vals + [metrics["unigram_loss"]])
    gate = Gate("pretrain").scalars("losses", {
        "train_loss": metrics["train_loss"], "val_loss": metrics["val_loss"],
        # GX skips NaN as "missing" in range checks, so finiteness is its own expectation
        "all_finite": finite,
        "val_minus_unigram": metrics["val_loss"] - p.gate.max_val_loss_ratio * metrics["unigram_loss"],
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
    check_writable(dirs=[BASE_MODEL, CHECKPOINTS / "pretrain", plots_dir("pretrain")],
                   files=[METRICS, quality_file("pretrain")])
    if params.pretrain.device in ("cuda", "mps"):
        from lmpipe.runtime import resolve_device

        resolve_device(params.pretrain.device)  # an absent device: one line here, not one per rank
    if needs_torchrun(params.pretrain) and not launched_by_torchrun():
        relaunch_with_torchrun(params.pretrain, "stages.pretrain")
    # torch loads in seconds: imported only once params and output paths are known to be good
    from lmpipe.pretraining.checkpoint import clear_checkpoint
    from lmpipe.pretraining.loop import train

    run = train(params)
    if run.rank != 0:
        return
    write_json(METRICS, run.metrics.as_dict())
    clear_checkpoint()
    gate(run.metrics.as_dict(), run.history, params.pretrain)


if __name__ == "__main__":
    run_stage(main)
