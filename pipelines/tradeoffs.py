"""The cross-experiment view: what each DVC experiment bought and what it cost, and which are
Pareto-optimal.

    python -m pipelines.tradeoffs                    # experiments of HEAD (dvc exp show --json)
    python -m pipelines.tradeoffs -A --workspace     # every commit's experiments, and the workspace
    python -m pipelines.tradeoffs --json exps.json   # a saved `dvc exp show --json`

Reads `dvc exp show --json`, builds one row per experiment (and baseline commit) with the params
that vary and the key metrics, marks the Pareto-optimal rows on each trade-off front, and writes
`reports/experiments/table.csv` and `reports/experiments/index.html` (table + the fronts as a
self-contained PNG), then prints the table. The sweep flow (pipelines/sweep.py) reuses it.

Fronts (maximize accuracy, minimize the cost):
  shift accuracy vs forgetting   mean accuracy over the shift splits vs lm.forgetting
  id accuracy vs forgetting      in-distribution accuracy vs lm.forgetting (the alignment tax)
  id accuracy vs latency         in-distribution accuracy vs efficiency.latency_ms_p50
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from lmpipe.scoring import pareto_front
from pipelines.check_metrics import flatten

OUT_DIR = Path("reports/experiments")
# column -> (metrics file name, dotted key); shift_accuracy is derived (mean over task.shift.*)
METRICS = {
    "id_accuracy": ("evaluate.json", "task.id.accuracy"),
    "gap_mean": ("evaluate.json", "task.gap.mean"),
    "forgetting": ("evaluate.json", "lm.forgetting"),
    "latency_ms_p50": ("evaluate.json", "efficiency.latency_ms_p50"),
    "ft_val_accuracy": ("finetune.json", "val_accuracy"),
    "trainable_params": ("finetune.json", "trainable_params"),
    "ft_wall_s": ("finetune.json", "wall_s"),
    "readability": ("generate.json", "finetuned.readability"),
}
# (column, title, y (maximize), x (minimize))
FRONTS = [
    ("pareto_shift_forgetting", "mean shift accuracy vs forgetting", "shift_accuracy", "forgetting"),
    ("pareto_id_forgetting", "id accuracy vs forgetting", "id_accuracy", "forgetting"),
    ("pareto_id_latency", "id accuracy vs latency", "id_accuracy", "latency_ms_p50"),
]
ALWAYS_PARAMS = ["finetune.method", "finetune.replay_weight", "finetune.augment"]


def _row(data: dict) -> tuple[dict, dict]:
    """(flat params, metric columns) of one `data` block of dvc exp show --json."""
    params = {}
    for file, block in (data.get("params") or {}).items():
        for key, value in _flatten_params((block or {}).get("data") or {}).items():
            params[key if file == "params.yaml" else f"{file}:{key}"] = value
    files = {}
    for path, block in (data.get("metrics") or {}).items():
        if isinstance(block, dict) and isinstance(block.get("data"), dict):
            files[Path(path).name] = block["data"]
    values = {}
    for column, (file, key) in METRICS.items():
        values[column] = _number(flatten(files.get(file, {})).get(key))
    shifts = ((files.get("evaluate.json", {}).get("task") or {}).get("shift") or {})
    accs = [_number(s.get("accuracy")) for s in shifts.values() if isinstance(s, dict)]
    accs = [a for a in accs if not math.isnan(a)]
    values["shift_accuracy"] = sum(accs) / len(accs) if accs else math.nan
    return params, values


def _flatten_params(obj: dict, prefix: str = "") -> dict:
    """{"a": {"b": [1]}} -> {"a.b": [1]}: lists stay values (an `augment` list is one param)."""
    out = {}
    for key, value in obj.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out |= _flatten_params(value, dotted)
        else:
            out[dotted] = value
    return out


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def rows_from_exp_show(exp_show: list[dict], workspace: bool = False) -> list[dict]:
    """One dict per baseline commit and experiment: name, rev, baseline, kind, status, params, metrics."""
    rows = []
    for entry in exp_show:
        rev = entry.get("rev", "")
        if rev == "workspace" and not workspace:
            continue
        base_name = entry.get("name") or rev[:7]
        kind = "workspace" if rev == "workspace" else "baseline"
        params, values = _row(entry.get("data") or {})
        rows.append({"experiment": base_name if kind == "baseline" else "workspace", "rev": rev[:7],
                     "baseline": base_name, "kind": kind, "status": "error" if entry.get("error") else "done",
                     "params": params, **values})
        for exp in entry.get("experiments") or []:
            revs = exp.get("revs") or [{}]
            latest = revs[0]
            executor = exp.get("executor") or {}
            status = executor.get("state") or ("error" if latest.get("error") else "done")
            status = {"success": "done"}.get(status, status)
            params, values = _row(latest.get("data") or {})
            rows.append({"experiment": exp.get("name") or latest.get("name") or str(latest.get("rev", ""))[:7],
                         "rev": str(latest.get("rev", ""))[:7], "baseline": base_name, "kind": "experiment",
                         "status": status, "params": params, **values})
    return rows


def build_table(exp_show: list[dict], names: list[str] | None = None, workspace: bool = False,
                baselines: bool = True) -> pd.DataFrame:
    """The trade-off table: varying params, key metrics, and a Pareto flag per front."""
    rows = rows_from_exp_show(exp_show, workspace=workspace)
    if names is not None:
        rows = [r for r in rows if r["experiment"] in names or (baselines and r["kind"] == "baseline")]
    elif not baselines:
        rows = [r for r in rows if r["kind"] != "baseline"]
    all_keys = sorted({k for r in rows for k in r["params"]})
    with_params = [r for r in rows if r["params"]]  # a queued experiment has none yet
    varying = [k for k in all_keys
               if len({json.dumps(r["params"].get(k), sort_keys=True) for r in with_params}) > 1]
    shown = [k for k in ALWAYS_PARAMS if k in all_keys] + [k for k in varying if k not in ALWAYS_PARAMS]
    metric_cols = ["id_accuracy", "shift_accuracy", *[c for c in METRICS if c != "id_accuracy"]]
    records = []
    for r in rows:
        rec = {k: r[k] for k in ("experiment", "rev", "baseline", "kind", "status")}
        for key in shown:
            value = r["params"].get(key)
            rec[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
        rec |= {c: r[c] for c in metric_cols}
        records.append(rec)
    columns = ["experiment", "rev", "baseline", "kind", "status", *shown, *metric_cols]
    table = pd.DataFrame.from_records(records, columns=columns)
    return mark_pareto(table)


def mark_pareto(table: pd.DataFrame) -> pd.DataFrame:
    """Adds a bool column per front and `pareto` (optimal on all four objectives at once)."""
    table = table.copy()
    for column, _, y, x in FRONTS:
        table[column] = pareto_front(table, maximize=[y], minimize=[x]) if len(table) else []
    table["pareto"] = (pareto_front(table, maximize=["id_accuracy", "shift_accuracy"],
                                    minimize=["forgetting", "latency_ms_p50"]) if len(table) else [])
    return table


def plot_fronts(table: pd.DataFrame, path: Path) -> Path:
    """One panel per front: every experiment as a point, Pareto-optimal ones joined by a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FRONTS), figsize=(5 * len(FRONTS), 4.2), dpi=90)
    for ax, (column, title, y, x) in zip(axes, FRONTS):
        ok = table.dropna(subset=[x, y])
        rest, best = ok[~ok[column].astype(bool)], ok[ok[column].astype(bool)].sort_values(x)
        ax.scatter(rest[x], rest[y], c="#9aa0a6", label="dominated", zorder=2)
        ax.scatter(best[x], best[y], c="#d93025", label="Pareto-optimal", zorder=3)
        if len(best) > 1:
            ax.step(best[x], best[y], where="post", c="#d93025", alpha=0.5, zorder=1)
        for _, r in ok.iterrows():
            ax.annotate(str(r["experiment"]), (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(title=title, xlabel=f"{x} (lower is better)", ylabel=f"{y} (higher is better)")
        ax.grid(alpha=0.3)
        if not len(ok):
            ax.text(0.5, 0.5, "no experiments with these metrics", ha="center", transform=ax.transAxes)
    axes[0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "★" if value else ""
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def render_html(table: pd.DataFrame, png: Path | None, title: str = "lmpipe experiments") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for _, r in table.iterrows():
        cls = ' class="pareto"' if bool(r.get("pareto")) else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in table.columns) + "</tr>")
    img = ""
    if png and png.exists():
        img = f'<img alt="trade-off fronts" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}">'
    fronts = "".join(f"<li><code>{c}</code>: {html.escape(t)}</li>" for c, t, _, _ in FRONTS)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ddd;padding:3px 6px;text-align:right}}tr.pareto{{background:#fde8e7;font-weight:bold}}
img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(table)} rows from <code>dvc exp show --json</code>, {stamp}. ★ marks a Pareto-optimal row on a front
(no other row is at least as good on both axes and better on one); bold rows are optimal on all four objectives
(id and shift accuracy up, forgetting and latency down) at once. Rows with a missing metric are never optimal.</p>
<ul>{fronts}</ul>
{img}
<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>
</body></html>
"""


def write_report(table: pd.DataFrame, out_dir: Path = OUT_DIR, title: str = "lmpipe experiments") -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / "table.csv"
    table.to_csv(csv, index=False)
    png = plot_fronts(table, out_dir / "fronts.png")
    index = out_dir / "index.html"
    index.write_text(render_html(table, png, title), encoding="utf-8")
    return {"csv": csv, "png": png, "html": index}


def to_text(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no experiments)"
    short = {"pareto_shift_forgetting": "P:shift/forg", "pareto_id_forgetting": "P:id/forg",
             "pareto_id_latency": "P:id/lat", "pareto": "P:all", "trainable_params": "ft_params"}
    shown = table.drop(columns=["rev", "baseline"], errors="ignore").rename(columns=short)
    buf = io.StringIO()
    with pd.option_context("display.width", 250, "display.max_columns", 50):
        buf.write(shown.to_string(index=False, na_rep="-", formatters={c: _fmt for c in shown.columns}))
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Trade-off table and Pareto fronts over DVC experiments.")
    ap.add_argument("--json", type=Path, help="a saved `dvc exp show --json` (default: run it)")
    ap.add_argument("-A", "--all-commits", action="store_true", help="experiments of every commit")
    ap.add_argument("--workspace", action="store_true", help="include the workspace row")
    ap.add_argument("--names", nargs="*", help="only these experiments (plus baselines)")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args(argv)
    if args.json:
        data = json.loads(args.json.read_text())
    else:
        from pipelines.experiments import exp_show

        data = exp_show(all_commits=args.all_commits)
    table = build_table(data, names=args.names, workspace=args.workspace)
    paths = write_report(table, args.out)
    print(to_text(table))
    print(f"\nwrote {paths['html']} and {paths['csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
