"""Stage redteam: the safety-tuned model (models/sft) under attacks from both failure modes.

Held-out restricted and benign requests of the safety set, plain and under every attack
(lmpipe/redteam/attacks.py), generated greedily in one batched pass and scored against the world's
secrets and facts (lmpipe/redteam/scoring.py). Writes metrics/redteam.json, sample transcripts
for the report (reports/redteam/transcripts.json) and the gate reports/quality/redteam.json. A
source without a safety set writes `{"status": "skipped", "reason": ...}` and no gate checks.
"""

from __future__ import annotations

import time

import great_expectations.expectations as gxe
import pandas as pd

from lmpipe import paths
from lmpipe.gates import Gate
from lmpipe.io import StageError, read_parquet, run_stage, write_json
from lmpipe.outputs import check_writable
from lmpipe.params import load_params
from lmpipe.redteam.run import SAFETY_COLUMNS, run
from lmpipe.runtime import resolve_device, seed_everything, set_threads

RATES = ("asr", "refusal_rate", "capability")


def load_sft(device):
    """models/sft and its tokenizer (with the chat template sft saved)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (paths.SFT_MODEL / "config.json").exists():
        raise StageError(f"{paths.SFT_MODEL} holds no model: run the sft stage first (dvc repro)")
    tokenizer = AutoTokenizer.from_pretrained(paths.SFT_MODEL)
    model = AutoModelForCausalLM.from_pretrained(paths.SFT_MODEL).to(device).eval()
    return model, tokenizer


def print_summary(metrics: dict, seconds: float) -> None:
    for name, a in metrics["attacks"].items():
        print(f"[redteam] {name:<26} {a['family']:<26} ASR {a['asr']:.2f} [{a['asr_ci'][0]:.2f}, {a['asr_ci'][1]:.2f}]"
              f"  refusal {a['refusal_rate']:.2f}  capability {a['capability']:.2f}", flush=True)
    for line in metrics["findings"]:
        print(f"[redteam] {line}", flush=True)
    print(f"[redteam] done in {seconds:.0f}s", flush=True)


def gate(metrics: dict) -> None:
    """Every rate finite and in [0, 1]; every attack family present."""
    plain, benign = metrics["plain"], metrics["benign"]
    rows = [{"attack": "plain", "family": "none", "asr": plain["asr"], "refusal_rate": plain["refusal_rate"],
             "capability": benign["accuracy"]}]
    rows += [{"attack": n, "family": a["family"], **{k: a[k] for k in RATES}} for n, a in metrics["attacks"].items()]
    table = pd.DataFrame(rows)
    g = Gate("redteam").table("rates", table)
    for key in RATES:
        g.expect("rates", gxe.ExpectColumnValuesToNotBeNull(column=key))
        g.expect("rates", gxe.ExpectColumnValuesToBeBetween(column=key, min_value=0, max_value=1))
    g.expect("rates", gxe.ExpectColumnDistinctValuesToContainSet(
        column="family", value_set=["competing_objectives", "mismatched_generalization", "combination", "control"]))
    g.finish()


def main() -> None:
    params = load_params()
    check_writable(files=[paths.metrics_file("redteam"), paths.REDTEAM_TRANSCRIPTS, paths.quality_file("redteam")])  # before any work
    seed_everything(params.seed)
    set_threads(params.sft.threads)
    safety = read_parquet(paths.RAW_SAFETY, columns=SAFETY_COLUMNS)
    if safety.empty:
        reason = f"{paths.RAW_SAFETY} is empty: the data source brought no safety set (data.files.safety)"
        print(f"[redteam] skipped: {reason}", flush=True)
        write_json(paths.metrics_file("redteam"), {"status": "skipped", "reason": reason})
        write_json(paths.REDTEAM_TRANSCRIPTS, {"attacks": {}, "pair": None})
        Gate("redteam").finish()
        return
    t0 = time.perf_counter()
    device = resolve_device(params.pretrain.device)
    model, tokenizer = load_sft(device)
    metrics, transcripts = run(model, tokenizer, safety, params, device)
    write_json(paths.metrics_file("redteam"), metrics)
    write_json(paths.REDTEAM_TRANSCRIPTS, transcripts)
    print_summary(metrics, time.perf_counter() - t0)
    gate(metrics)


if __name__ == "__main__":
    run_stage(main)
