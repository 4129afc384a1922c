"""Stage finetune: the pretrained body as a task classifier (lmpipe/finetuning).

Run: `python -m stages.finetune` (or `dvc repro finetune`). Methods, replay and augmentation are
described in lmpipe/finetuning; the knobs are params.finetune.

Outputs: models/finetuned (merged classifier + tokenizer), metrics/finetune.json, plots/finetune
(dvclive curves); then the gate: label balance, no leakage into validation/test/shifts, lengths
fit max_length, accuracy floor.
"""

from __future__ import annotations

import os

from lmpipe.io import run_stage, write_json
from lmpipe.outputs import check_writable
from lmpipe.params import FinetuneParams, load_params
from lmpipe.paths import CHECKPOINTS, FINETUNED_MODEL, metrics_file, plots_dir, quality_file
from lmpipe.runtime import set_threads

METRICS = metrics_file("finetune")


def gate(prep, p: FinetuneParams, val_accuracy: float | None = None) -> None:
    """Label balance, no leakage into validation/test/shifts, lengths fit max_length, and (after
    training, when `val_accuracy` is given) the accuracy floor.

    Before training (`val_accuracy=None`) it validates only when a data check fails, and then
    stops the stage before the first step; data that passes is validated again, with the
    accuracy, in the one report written after training."""
    import great_expectations.expectations as gxe

    from lmpipe.gates import Gate
    from lmpipe.text import text_key

    train_df, labels, g = prep.train_df, prep.task.label_names, p.gate
    eval_keys = set(prep.task.eval_texts()["text"].map(text_key))
    train_check = train_df.assign(leaks=train_df["text"].map(text_key).isin(eval_keys))
    shares = train_df["label"].value_counts(normalize=True).reindex(range(len(labels)), fill_value=0)
    run = {"truncated_share": prep.truncated_share, "min_class_share": float(shares.min())}
    explain = data_hints(prep, p, train_check, run)
    if val_accuracy is None and not explain:
        return
    gate = Gate("finetune").table("train", train_check).scalars("run", run | (
        {} if val_accuracy is None else {"val_accuracy": val_accuracy}))
    gate.expect("train", gxe.ExpectColumnValuesToBeInSet(column="leaks", value_set=[False]))
    gate.expect("train", gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(len(labels)))))
    gate.expect("run", gxe.ExpectColumnValuesToBeBetween(column="min_class_share", min_value=g.min_class_share))
    gate.expect("run", gxe.ExpectColumnValuesToBeBetween(column="truncated_share", max_value=g.max_truncated_share))
    if val_accuracy is not None:
        gate.expect("run", gxe.ExpectColumnValuesToNotBeNull(column="val_accuracy"))
        gate.expect("run", gxe.ExpectColumnValuesToBeBetween(column="val_accuracy", min_value=g.min_val_accuracy))
        if val_accuracy < g.min_val_accuracy:
            explain.insert(0, f"validation accuracy {val_accuracy:.3f} is below finetune.gate.min_val_accuracy="
                           f"{g.min_val_accuracy} (chance is {1 / len(labels):.2f}): the classifier did not learn"
                           " the task; train longer (finetune.epochs), raise finetune.lr, or pretrain more")
    gate.finish(hints=explain)


def data_hints(prep, p: FinetuneParams, train_check, run: dict) -> list[str]:
    """What to change, for each data check that fails (empty when the data is fine)."""
    g, explain = p.gate, []
    if run["truncated_share"] > g.max_truncated_share:
        explain.append(f"{prep.truncated} of {len(prep.train_df)} training examples "
                       f"({run['truncated_share']:.1%}) are longer than finetune.max_length={prep.max_length}"
                       f" tokens and would be cut (limit finetune.gate.max_truncated_share={g.max_truncated_share}):"
                       " raise max_length (at most pretrain.model.block_size; auto picks"
                       " finetune.max_length_percentile of the lengths) or the tokenizer's vocab_size")
    if run["min_class_share"] < g.min_class_share:
        explain.append(f"the rarest class is {run['min_class_share']:.1%} of the training rows, below "
                       f"finetune.gate.min_class_share={g.min_class_share}")
    if train_check["leaks"].any():
        explain.append(f"{int(train_check['leaks'].sum())} training texts also occur in validation, test or"
                       " a shift split (after normalizing case and punctuation)")
    if not train_check["label"].isin(range(len(prep.task.label_names))).all():
        explain.append(f"training labels outside 0..{len(prep.task.label_names) - 1}")
    return explain


def main() -> None:
    params = load_params()
    check_writable(dirs=[FINETUNED_MODEL, CHECKPOINTS / "finetune", plots_dir("finetune")],
                   files=[METRICS, quality_file("finetune")])
    set_threads(params.finetune.threads)
    # torch and transformers load in seconds: imported once params and output paths are known good
    from lmpipe.finetuning.trainer import fine_tune, prepare

    prep = prepare(params)
    gate(prep, params.finetune)  # data checks first: a run that would cut too much stops here
    result = fine_tune(params, prep)
    m = result.metrics
    write_json(METRICS, m.as_dict())
    print(f"[finetune] val accuracy {m.val_accuracy:.3f} (epoch {m.best_epoch:.0f}) in "
          f"{m.wall_s:.0f}s, {m.tokens_per_s:,.0f} tok/s", flush=True)
    gate(prep, params.finetune, m.val_accuracy)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_stage(main)
