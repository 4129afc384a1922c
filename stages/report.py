"""Stage 8 — report: one self-contained HTML page a user opens after `dvc repro`.

Sections: each stage's gate status; pretraining and fine-tuning curves; in-distribution vs. shift
accuracy with bootstrap intervals and the capability verdict per shift; the confusion matrix; the
competing-objectives table (accuracy, forgetting, efficiency, readability); samples side by side.
Figures are drawn with matplotlib, saved as PNG under reports/figures/ and embedded as data URIs,
so the single file can be mailed or attached to a CI run.

The report's own gate (reports/quality/report.json) checks that every metric it shows is finite
and in range. The page is written first, so a failing gate still leaves a report to read.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import great_expectations.expectations as gxe
import pandas as pd

from lmpipe.gates import Gate
from lmpipe.io import StageError, atomic_path, read_json, run_stage, write_text
from lmpipe.params import load_params

STAGES = ["ingest", "clean", "tokenize", "pretrain", "finetune", "evaluate", "generate"]
REPORTS = Path("reports")
METRICS = Path("metrics")
PRETRAIN_CURVES = Path("plots/pretrain/plots/metrics")
FINETUNE_CURVES = Path("plots/finetune/plots/metrics")
SECTIONS = {"pipeline": "Pipeline and data-quality gates", "curves": "Training curves",
            "generalization": "Mismatched generalization: in-distribution vs. shifts",
            "confusion": "Confusion matrix (in-distribution test set)",
            "objectives": "Competing objectives", "samples": "Samples (base vs. fine-tuned)"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on CI or servers
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def read_curve(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, sep="\t") if path.exists() else None


def read_metrics(name: str) -> dict:
    path = METRICS / f"{name}.json"
    if not path.exists():
        raise StageError(f"missing {path}: run the {name} stage first (dvc repro)")
    return read_json(path)


# --- figures ----------------------------------------------------------------------------------


def pretrain_figure(figures: Path) -> Path | None:
    train = read_curve(PRETRAIN_CURVES / "train_loss.tsv")
    if train is None:
        return None
    val = read_curve(PRETRAIN_CURVES / "val_loss.tsv")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(train["step"], train["train_loss"], label="train")
    if val is not None:
        ax.plot(val["step"], val["val_loss"], "o-", label="validation")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="Pretraining loss")
    ax.legend()
    return save_figure(fig, figures / "pretrain_loss.png")


def finetune_figure(figures: Path) -> Path | None:
    """Fine-tuning curves against epochs. DVCLive's HF callback counts one step per Trainer log
    call, so its `step` column is joined with the logged `epoch` to get a meaningful x axis."""
    epoch = read_curve(FINETUNE_CURVES / "epoch.tsv")
    train = read_curve(FINETUNE_CURVES / "loss.tsv")
    if epoch is None or train is None:
        return None
    at = lambda df: df.merge(epoch, on="step", how="left")  # noqa: E731
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    t = at(train)
    replay = read_curve(FINETUNE_CURVES / "replay_lm_loss.tsv")
    left.plot(t["epoch"], t["loss"], label="train objective" if replay is not None else "train loss")
    if replay is not None:  # λ > 0: the objective is task loss + λ × replay LM loss; show both parts
        task = read_curve(FINETUNE_CURVES / "task_loss.tsv")
        if task is not None:
            left.plot(at(task)["epoch"], task["task_loss"], "--", label="train task loss")
        twin = left.twinx()
        twin.plot(at(replay)["epoch"], replay["replay_lm_loss"], ":", color="grey")
        twin.set_ylabel("replay LM loss (dotted)")
    eval_loss = read_curve(FINETUNE_CURVES / "eval" / "loss.tsv")
    if eval_loss is not None:
        left.plot(at(eval_loss)["epoch"], eval_loss["loss"], "o-", label="validation loss")
    left.set(xlabel="epoch", ylabel="cross-entropy", title="Fine-tuning loss")
    left.legend(fontsize=8)
    acc = read_curve(FINETUNE_CURVES / "eval" / "accuracy.tsv")
    if acc is not None:
        right.plot(at(acc)["epoch"], acc["accuracy"], "o-", color="#2b6cb0")
    right.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title="Validation accuracy")
    return save_figure(fig, figures / "finetune_curves.png")


def accuracy_figure(ev: dict, figures: Path) -> Path:
    plt = _plt()
    task = ev["task"]
    names = ["id", *task["shift"]]
    acc = [task["id"]["accuracy"], *(task["shift"][n]["accuracy"] for n in task["shift"])]
    cis = [task["id"]["accuracy_ci"], *(task["shift"][n]["accuracy_ci"] for n in task["shift"])]
    err = [[max(0.0, a - lo) for a, (lo, hi) in zip(acc, cis)], [max(0.0, hi - a) for a, (lo, hi) in zip(acc, cis)]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, acc, yerr=err, capsize=4, color=["#2b6cb0"] + ["#c05621"] * (len(names) - 1))
    ax.axhline(1 / max(2, len(ev.get("labels", [0, 1]))), ls="--", c="grey", lw=1, label="chance")
    ax.set(ylim=(0, 1.05), ylabel="accuracy", title="In-distribution vs. shifted inputs (95% CI)")
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    return save_figure(fig, figures / "shift_accuracy.png")


def capability_figure(ev: dict, figures: Path) -> Path | None:
    """Each shift as a point: can the base model read it (x) vs. did behaviour transfer (y)."""
    cap, task = ev.get("capability", {}), ev["task"]
    names = [n for n in task["shift"] if isinstance(cap.get(n), dict)]
    if not names:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    threshold = cap.get("ratio_threshold", 1.5)
    for n in names:
        x, y = cap[n]["loss_ratio"], task["gap"][n]
        ax.scatter(x, y, color="#c05621")
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axvline(threshold, ls="--", c="grey", lw=1)
    ax.axhline(0.05, ls=":", c="grey", lw=1)
    ax.text(0.02, 0.98, "capability present,\nbehaviour did not transfer", transform=ax.transAxes,
            va="top", fontsize=8, color="grey")
    ax.text(0.98, 0.98, "no capability", transform=ax.transAxes, va="top", ha="right", fontsize=8, color="grey")
    ax.set(xlabel="base-model LM loss ratio, shifted / plain (per character)",
           ylabel="accuracy gap (id − shift)", title="Capability vs. behaviour per shift")
    return save_figure(fig, figures / "capability.png")


def confusion_figure(ev: dict, figures: Path) -> Path | None:
    matrix = ev["task"]["id"].get("confusion")
    if matrix is None:  # evaluate.json from before the confusion key: rebuild from the CSV
        path = Path("plots/evaluate/confusion.csv")
        if not path.exists():
            return None
        df = pd.read_csv(path)
        labels = ev.get("labels") or sorted(set(df["actual"]) | set(df["predicted"]))
        matrix = pd.crosstab(df["actual"], df["predicted"]).reindex(index=labels, columns=labels, fill_value=0).values
    labels = ev.get("labels") or [str(i) for i in range(len(matrix))]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.2 + 0.6 * len(labels), 3 + 0.5 * len(labels)))
    ax.imshow(matrix, cmap="Blues")
    top = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(int(v)), ha="center", va="center", color="white" if v > top / 2 else "black")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
           xlabel="predicted", ylabel="actual", title="Confusion matrix (test)")
    return save_figure(fig, figures / "confusion.png")


# --- HTML -------------------------------------------------------------------------------------


def img(path: Path | None, alt: str) -> str:
    if path is None:
        return f"<p><em>{html.escape(alt)}: not available</em></p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" data-file="{path.name}">'


def table(rows: list[dict]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values()) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return f"[{v[0]:.3f}, {v[1]:.3f}]"
    return str(v)


def gate_rows() -> list[dict]:
    rows = []
    for stage in STAGES:
        path = REPORTS / "quality" / f"{stage}.json"
        if not path.exists():
            rows.append({"stage": stage, "gate": "not run", "expectations": 0, "failed": "-", "details": ""})
            continue
        q = read_json(path)
        failed = [f"{r['table']}: {r['expectation']} {r.get('kwargs', {})} — observed {r.get('observed')}"
                  for r in q["expectations"] if not r["success"]]
        rows.append({"stage": stage, "gate": "passed" if q["success"] else "FAILED",
                     "expectations": q["evaluated"], "failed": q["failed"], "details": "; ".join(failed)})
    return rows


VERDICT_TEXT = {
    "transfers": "fine-tuned behaviour holds on this shift (gap ≤ 0.05 or its interval includes 0)",
    "no capability": "the base model cannot read this text either (LM loss ratio above the threshold): "
                     "pretraining never covered it, so no fine-tuning method could be expected to transfer",
    "capability present, behaviour did not transfer": "the base model reads this text about as well as plain "
                                                      "text, yet the classifier fails on it: mismatched generalization",
}


def collect(title: str) -> dict:
    """Everything the page shows, read from the metrics files (missing files are stage errors)."""
    return {"title": title, "ev": read_metrics("evaluate"), "pre": read_metrics("pretrain"),
            "ft": read_metrics("finetune"), "gen": read_metrics("generate"), "clean": read_metrics("clean")}


def objectives_row(d: dict) -> dict:
    ev, ft, gen = d["ev"], d["ft"], d["gen"]
    task, lm, eff = ev["task"], ev["lm"], ev["efficiency"]
    return {
        "id accuracy": task["id"]["accuracy"], "macro F1": task["id"]["macro_f1"], "ECE": task["id"]["ece"],
        "mean shift gap": task["gap"]["mean"], "max shift gap": task["gap"]["max"],
        "ppl base": lm["ppl_base"], "ppl finetuned": lm["ppl_finetuned"], "forgetting": lm["forgetting"],
        "params": eff["params"], "trainable": ft.get("trainable_params"),
        "examples/s (batch 32)": eff["examples_per_s"], "latency p50 ms": eff["latency_ms_p50"],
        "latency p95 ms": eff["latency_ms_p95"], "peak memory MB": eff.get("peak_memory_mb"),
        "readability base": gen["base"]["readability"], "readability finetuned": gen["finetuned"]["readability"],
        "distinct-2 finetuned": gen["finetuned"]["distinct_2"],
        "degenerate share finetuned": gen["finetuned"]["degenerate_share"],
    }


def build_html(d: dict, figures: Path) -> str:
    ev, pre, ft, gen, clean = d["ev"], d["pre"], d["ft"], d["gen"], d["clean"]
    task = ev["task"]
    cap = ev.get("capability", {})
    shift_rows = [{"split": "in-distribution", "accuracy": task["id"]["accuracy"], "95% CI": task["id"]["accuracy_ci"],
                   "macro F1": task["id"]["macro_f1"], "gap": 0.0, "gap 95% CI": "", "base LM loss ratio": 1.0,
                   "verdict": ""}]
    for name, s in task["shift"].items():
        c = cap.get(name, {})
        shift_rows.append({"split": name, "accuracy": s["accuracy"], "95% CI": s["accuracy_ci"],
                           "macro F1": s["macro_f1"], "gap": task["gap"][name],
                           "gap 95% CI": task["gap"].get(f"{name}_ci", ""),
                           "base LM loss ratio": c.get("loss_ratio"), "verdict": c.get("verdict", "")})
    verdicts = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(cap[n]['verdict'])} — "
                       f"{html.escape(VERDICT_TEXT.get(cap[n]['verdict'], ''))}</li>"
                       for n in task["shift"] if isinstance(cap.get(n), dict))
    samples_path = Path("data/samples/samples.jsonl")
    samples = [json.loads(x) for x in samples_path.read_text(encoding="utf-8").splitlines() if x.strip()] \
        if samples_path.exists() else []
    sample_rows = [{"domain": s.get("domain", ""), "prompt": s["prompt"], "base": s["base"], "finetuned": s["finetuned"]}
                   for s in samples]
    gen_rows = [{"model": name, **m} for name, m in gen.items()]
    summary = [{"docs cleaned": f"{clean['docs_in']} → {clean['docs_out']}", "pretrain val loss": pre["val_loss"],
                "unigram baseline": pre["unigram_loss"], "tokens seen": pre["tokens_seen"],
                "fine-tune method": ft.get("method", ""), "replay λ": ft.get("replay_weight", 0),
                "fine-tune epochs": ft.get("epochs"), "val accuracy": ft.get("val_accuracy")}]
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;"
             "padding:4px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}")
    h = {k: f'<h2 id="{k}">{html.escape(v)}</h2>' for k, v in SECTIONS.items()}
    threshold = cap.get("ratio_threshold", 1.5)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(d['title'])}</title>
<style>{style}</style></head><body>
<h1>{html.escape(d['title'])}</h1>
{h['pipeline']}{table(gate_rows())}{table(summary)}
{h['curves']}{img(pretrain_figure(figures), "pretraining loss")}{img(finetune_figure(figures), "fine-tuning curves")}
{h['generalization']}
{img(accuracy_figure(ev, figures), "shift accuracy")}{table(shift_rows)}
{img(capability_figure(ev, figures), "capability vs behaviour")}
<p>The base LM loss ratio is the base model's loss per character on the shifted text over its loss on
plain test text. Above {threshold} the base model cannot read the shift; at or below it, it can.</p>
<ul>{verdicts}</ul>
{h['confusion']}{img(confusion_figure(ev, figures), "confusion matrix")}
{h['objectives']}{table([objectives_row(d)])}{table(gen_rows)}
{h['samples']}{table(sample_rows)}
</body></html>
"""


# --- gate -------------------------------------------------------------------------------------


def numeric_facts(d: dict) -> dict[str, float | None]:
    """Every number the page shows, by dotted key; non-finite values become None."""
    out: dict[str, float | None] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, bool) or isinstance(value, str):
            return
        elif isinstance(value, (int, float)):
            out[prefix] = float(value) if math.isfinite(value) else None
        elif value is None:
            out[prefix] = None

    for name in ("evaluate", "finetune", "generate", "pretrain"):
        walk(name, d[{"evaluate": "ev", "finetune": "ft", "generate": "gen", "pretrain": "pre"}[name]])
    # keys that are legitimately absent (e.g. replay loss when λ = 0) are not metrics
    return {k: v for k, v in out.items() if not (v is None and k in OPTIONAL_NULLS)}


OPTIONAL_NULLS = {"finetune.replay_lm_loss", "finetune.train_task_loss", "evaluate.efficiency.trainable_params"}


def gate(d: dict, figures: list[Path]) -> None:
    facts = numeric_facts(d)
    long = pd.DataFrame({"metric": list(facts), "value": list(facts.values())})
    ev = d["ev"]
    rates = pd.DataFrame(
        [{"metric": "evaluate.task.id.accuracy", "value": ev["task"]["id"]["accuracy"]},
         {"metric": "evaluate.task.id.macro_f1", "value": ev["task"]["id"]["macro_f1"]},
         {"metric": "evaluate.task.id.ece", "value": ev["task"]["id"]["ece"]}]
        + [{"metric": f"evaluate.task.shift.{n}.{k}", "value": s[k]} for n, s in ev["task"]["shift"].items()
           for k in ("accuracy", "macro_f1")]
        + [{"metric": f"generate.{m}.{k}", "value": v[k]} for m, v in d["gen"].items()
           for k in ("distinct_1", "distinct_2", "repeat_4gram", "degenerate_share")]
        + [{"metric": "finetune.val_accuracy", "value": d["ft"]["val_accuracy"]}])
    files = pd.DataFrame({"figure": [p.name for p in figures], "png": [_is_png(p) for p in figures]})
    g = Gate("report").table("metrics", long).table("rates", rates).table("figures", files)
    g.expect("metrics", gxe.ExpectColumnValuesToNotBeNull(column="value"))
    g.expect("rates", gxe.ExpectColumnValuesToNotBeNull(column="value"))
    g.expect("rates", gxe.ExpectColumnValuesToBeBetween(column="value", min_value=0, max_value=1))
    if len(files):
        g.expect("figures", gxe.ExpectColumnValuesToBeInSet(column="png", value_set=[True]))
    bad = [k for k, v in facts.items() if v is None]
    g.finish(hints=[f"not finite (NaN/inf, written as null): {', '.join(bad[:10])}"] if bad else [])


def _is_png(path: Path) -> bool:
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def main() -> None:
    params = load_params()
    figures = REPORTS / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for old in figures.glob("*.png"):  # figures of this run only
        old.unlink()
    d = collect(params.report.title)
    page = build_html(d, figures)
    write_text(REPORTS / "index.html", page)
    print(f"[report] wrote {REPORTS / 'index.html'} ({len(page) // 1024} KiB)", flush=True)
    gate(d, sorted(figures.glob("*.png")))


if __name__ == "__main__":
    run_stage(main)
