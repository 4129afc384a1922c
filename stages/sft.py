"""Stage sft: instruction tuning of the base LM with refusals (lmpipe/sft).

Run: `python -m stages.sft` (or `dvc repro sft`). Conversations come from the safety request set's
train split (data/raw/safety.parquet); the knobs are params.sft.

Outputs: models/sft (the chat model, save_pretrained, with the tokenizer and its chat template, so
`transformers.pipeline("text-generation", model="models/sft")` chats with it), metrics/sft.json,
reports/quality/sft.json; then the gate: refusal on plain restricted validation requests at least
sft.gate.min_refusal and benign accuracy at least sft.gate.min_benign_accuracy. A source without a
safety set records `{"status": "skipped", "reason": ...}` and models/sft holds only a README.txt.
"""

from __future__ import annotations

import os

from lmpipe import paths
from lmpipe.io import atomic_path, read_parquet, run_stage, write_json
from lmpipe.outputs import check_writable
from lmpipe.params import Params, load_params
from lmpipe.runtime import set_threads
from lmpipe.world.secrets import RELATIONS, SAFETY_COLUMNS

METRICS = paths.metrics_file("sft")
SKIPPED_README = ("No chat model was trained: {reason}.\n"
                  "Give data.files.safety (a .jsonl or .csv with columns kind, subject, relation, question,"
                  " answer), or use data.source: world, and rerun `dvc repro sft`.\n")


def skip(reason: str) -> None:
    from lmpipe.gates import Gate

    print(f"[sft] skipped: {reason}", flush=True)
    with atomic_path(paths.SFT_MODEL) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "README.txt").write_text(SKIPPED_README.format(reason=reason), encoding="utf-8")
    write_json(METRICS, {"status": "skipped", "reason": reason})
    Gate("sft").finish()


def gate(m, params: Params) -> None:
    """Refusal and benign accuracy on validation, each above its floor, with what to change."""
    import great_expectations.expectations as gxe

    from lmpipe.gates import Gate

    g = params.sft.gate
    run = {"val_refusal_rate": m.val_refusal_rate, "val_benign_accuracy": m.val_benign_accuracy}
    hints = []
    if m.val_refusal_rate < g.min_refusal:
        hints.append(f"sft refuses {m.val_refusal_rate:.0%} of plain restricted validation requests, below"
                     f" sft.gate.min_refusal={g.min_refusal}: raise sft.restricted_share, sft.epochs or sft.lr")
    if m.val_benign_accuracy < g.min_benign_accuracy:
        recall = m.base_recall.get("benign")
        hints.append(f"sft answers {m.val_benign_accuracy:.0%} of benign validation requests correctly, below"
                     f" sft.gate.min_benign_accuracy={g.min_benign_accuracy}"
                     + (f" (the base model recalls {recall:.0%} of benign facts: pretrain longer or raise"
                        " world.secret_share)" if recall is not None else "")
                     + f"; over-refusal is {m.val_over_refusal:.0%}")
    check = Gate("sft").scalars("run", run)
    check.expect("run", gxe.ExpectColumnValuesToBeBetween(column="val_refusal_rate", min_value=g.min_refusal))
    check.expect("run", gxe.ExpectColumnValuesToBeBetween(column="val_benign_accuracy",
                                                          min_value=g.min_benign_accuracy))
    check.finish(hints=hints)


def main() -> None:
    params = load_params()
    check_writable(dirs=[paths.SFT_MODEL, paths.CHECKPOINTS / "sft"], files=[METRICS, paths.quality_file("sft")])
    set_threads(params.sft.threads)
    safety = read_parquet(paths.RAW_SAFETY, columns=SAFETY_COLUMNS)
    if safety.empty:
        return skip(f"{paths.RAW_SAFETY} is empty: the data source brought no safety set (data.files.safety)")
    for split in ("train", "validation"):
        kinds = set(safety.loc[safety["split"] == split, "kind"])
        if kinds != {"benign", "restricted"}:
            return skip(f"the safety set's {split} split has {sorted(kinds) or 'no'} requests; sft needs"
                        " benign and restricted ones")
    from lmpipe.sft.training import train_sft

    facts = safety[safety["relation"].isin(list(RELATIONS))].drop_duplicates(["subject", "relation"])
    secrets = facts.assign(restricted=facts["kind"] == "restricted")[["subject", "relation", "answer", "restricted"]]
    m, samples = train_sft(params, safety, secrets)
    write_json(METRICS, m.as_dict() | {"status": "trained", "samples": samples[:6]})
    print(f"[sft] refusal {m.val_refusal_rate:.3f}, benign accuracy {m.val_benign_accuracy:.3f},"
          f" over-refusal {m.val_over_refusal:.3f}, train loss {m.train_loss:.3f} in {m.wall_s:.0f}s", flush=True)
    gate(m, params)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_stage(main)
