"""The report as one self-contained HTML page: tables, and figures embedded as data URIs, so the
single file can be mailed or attached to a CI run (no script, no external resource)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from lmpipe.reporting.figures import (
    accuracy_figure,
    capability_figure,
    confusion_figure,
    finetune_figure,
    pretrain_figure,
)
from lmpipe.reporting.inputs import ReportInputs, gate_rows
from lmpipe.reporting.safety import safety_section

SECTIONS = {"pipeline": "Pipeline and data-quality gates", "curves": "Training curves",
            "generalization": "Mismatched generalization: in-distribution vs. shifts",
            "confusion": "Confusion matrix (in-distribution test set)",
            "objectives": "Competing objectives", "safety": "Safety training and its failure modes",
            "samples": "Samples (base vs. fine-tuned)"}
STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;"
         "padding:4px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}")


def verdict_text(verdict: str, gap_threshold: float) -> str:
    """What a verdict means, in one sentence, with the threshold it was made with."""
    return {
        "transfers": f"fine-tuned behaviour holds on this shift (the gap's 95% interval reaches down to "
                     f"{gap_threshold:g} or below)",
        "no capability": "the base model's features do not carry the task on this text: the probe is not above "
                         "chance + margin, or an untrained model of the same shape reads it as well (the probe fits "
                         "surface cues, not anything pretraining taught), so fine-tuning could not be expected to "
                         "transfer",
        "mismatched generalization": "a linear probe on the base model's features reads the task on this text "
                                     "well above chance and well above the same probe on an untrained model, yet "
                                     "the fine-tuned classifier fails on it: pretraining gave the capability, the "
                                     "behaviour did not transfer",
    }.get(verdict, "")


def img(path: Path | None, alt: str) -> str:
    if path is None:
        return f"<p><em>{html.escape(alt)}: not available</em></p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" data-file="{path.name}">'


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return f"[{v[0]:.3f}, {v[1]:.3f}]"
    return str(v)


def table(rows: list[dict]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values()) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def objectives_row(d: ReportInputs) -> dict:
    ev, ft, gen = d.evaluate, d.finetune, d.generate
    task, lm, eff = ev["task"], ev["lm"], ev["efficiency"]
    return {
        "id accuracy": task["id"]["accuracy"], "macro F1": task["id"]["macro_f1"], "ECE": task["id"]["ece"],
        "mean shift gap": task["gap"]["mean"], "max shift gap": task["gap"]["max"],
        "ppl base": lm["ppl_base"], "ppl finetuned": lm["ppl_finetuned"], "forgetting": lm["forgetting"],
        "bits/byte base": lm.get("bits_per_byte"), "bits/byte finetuned": lm.get("bits_per_byte_finetuned"),
        "params": eff["params"], "trainable": ft.get("trainable_params"),
        "examples/s (batch 32)": eff["examples_per_s"], "latency p50 ms": eff["latency_ms_p50"],
        "latency p95 ms": eff["latency_ms_p95"], "peak memory MB": eff.get("peak_memory_mb"),
        "readability base": gen["base"]["readability"], "readability finetuned": gen["finetuned"]["readability"],
        "distinct-2 finetuned": gen["finetuned"]["distinct_2"],
        "degenerate share finetuned": gen["finetuned"]["degenerate_share"],
    }


def shift_rows(ev: dict) -> list[dict]:
    task, cap = ev["task"], ev.get("capability", {})
    rows = [{"split": "in-distribution", "accuracy": task["id"]["accuracy"], "95% CI": task["id"]["accuracy_ci"],
             "macro F1": task["id"]["macro_f1"], "gap": 0.0, "gap 95% CI": "", "base LM loss ratio": 1.0,
             "probe": cap.get("probe_reference_accuracy"), "untrained probe": cap.get("probe_reference_control_accuracy"),
             "verdict": ""}]
    for name, s in task["shift"].items():
        c = cap.get(name, {})
        rows.append({"split": name, "accuracy": s["accuracy"], "95% CI": s["accuracy_ci"],
                     "macro F1": s["macro_f1"], "gap": task["gap"][name],
                     "gap 95% CI": task["gap"].get(f"{name}_ci", ""),
                     "base LM loss ratio": c.get("loss_ratio"), "probe": c.get("probe_accuracy"),
                     "untrained probe": c.get("probe_control_accuracy"), "lead 95% CI": c.get("probe_lead_ci", ""),
                     "transfer probe": c.get("transfer_accuracy"), "untrained transfer": c.get("transfer_control_accuracy"),
                     "verdict": c.get("verdict", "")})
    return rows


def summary_row(d: ReportInputs) -> dict:
    pre, ft, clean = d.pretrain, d.finetune, d.clean
    return {"docs cleaned": f"{clean['docs_in']} → {clean['docs_out']}", "pretrain val loss": pre["val_loss"],
            "unigram baseline": pre["unigram_loss"], "tokens seen": pre["tokens_seen"],
            "fine-tune method": ft.get("method", ""), "replay λ": ft.get("replay_weight", 0),
            "fine-tune epochs": ft.get("epochs"), "val accuracy": ft.get("val_accuracy")}


def build_html(d: ReportInputs, figures: Path) -> str:
    ev = d.evaluate
    cap = ev.get("capability", {})
    verdicts = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(cap[n]['verdict'])} — "
                       f"{html.escape(verdict_text(cap[n]['verdict'], d.gap_threshold))}. "
                       f"<small>{html.escape(cap[n].get('reason', ''))}</small></li>"
                       for n in ev["task"]["shift"] if isinstance(cap.get(n), dict))
    sample_rows = [{"domain": s.get("domain", ""), "prompt": s["prompt"], "base": s["base"], "finetuned": s["finetuned"]}
                   for s in d.samples]
    gen_rows = [{"model": name, **m} for name, m in d.generate.items()]
    h = {k: f'<h2 id="{k}">{html.escape(v)}</h2>' for k, v in SECTIONS.items()}
    capability_png = capability_figure(ev, figures, d.gap_threshold, d.capability_ratio)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(d.title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(d.title)}</h1>
{h['pipeline']}{table(gate_rows())}{table([summary_row(d)])}
{h['curves']}{img(pretrain_figure(figures), "pretraining loss")}{img(finetune_figure(figures), "fine-tuning curves")}
{h['generalization']}
{img(accuracy_figure(ev, figures), "shift accuracy")}{table(shift_rows(ev))}
{img(capability_png, "capability vs behaviour")}
<p>The base LM loss ratio is the base model's loss per character on the shifted text over its loss on
plain test text (at most {d.capability_ratio}: the text looks familiar). The probe is a logistic regression on
the frozen base model's features, fit on a few labelled shifted rows and scored on the rest; the untrained
probe is the same fit on a randomly initialized model of the same shape, which shows how much a probe reads
from surface cues alone. The transfer probe is fit on plain rows and scored on shifted ones: it reads the shift
only where the base model represents it as the plain text. A verdict of mismatched generalization needs one of
the two probes above chance + margin and ahead of its untrained twin.</p>
<ul>{verdicts}</ul>
{h['confusion']}{img(confusion_figure(ev, figures), "confusion matrix")}
{h['objectives']}{table([objectives_row(d)])}{table(gen_rows)}
{h['safety']}{safety_section(figures, table, img)}
{h['samples']}{table(sample_rows)}
</body></html>
"""
