"""The cross-experiment view: what each DVC experiment bought and what it cost, and which are
Pareto-optimal.

    python -m pipelines.tradeoffs                    # experiments of HEAD (dvc exp show --json)
    python -m pipelines.tradeoffs -A --workspace     # every commit's experiments, and the workspace
    python -m pipelines.tradeoffs --json exps.json   # a saved `dvc exp show --json`

    python -m pipelines.tradeoffs --sweep <prefix> # one sweep's experiments, its failures listed

Reads `dvc exp show --json`, builds one row per experiment (and baseline commit) with the params
that vary and the key metrics, marks the Pareto-optimal rows on each trade-off front, and writes
`reports/experiments/table.csv` and `reports/experiments/index.html` (table + the fronts as a
self-contained PNG), then prints the table. The sweep flow (pipelines/sweep.py) reuses it.

Fronts (maximize accuracy, minimize the cost):
  shift accuracy vs forgetting   mean accuracy over the shift splits vs lm.forgetting
  id accuracy vs forgetting      in-distribution accuracy vs lm.forgetting (the alignment tax)
  id accuracy vs latency         in-distribution accuracy vs latency_ms: every model re-measured
                                 side by side in this process (pipelines/efficiency.py); latencies
                                 within measured noise tie. The latency each evaluate stage
                                 recorded (latency_ms_p50) is shown, never ranked: those runs were
                                 timed at different times under different load.
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

from lmpipe import paths
from pipelines.check_metrics import flatten
from pipelines.efficiency import Latency, latency_tie

OUT_DIR = paths.EXPERIMENTS_REPORT
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
    ("pareto_id_latency", "id accuracy vs latency", "id_accuracy", "latency_ms"),
]
LATENCY_COLUMNS = ["latency_ms", "latency_lo_ms", "latency_hi_ms", "latency_ties"]
FAILED = ("failed", "timed out")
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


def _exp_row(exp: dict, base_name: str) -> dict:
    revs = exp.get("revs") or [{}]
    latest = revs[0]
    executor = exp.get("executor") or {}
    status = executor.get("state") or ("error" if latest.get("error") else "done")
    status = {"success": "done"}.get(status, status)
    params, values = _row(latest.get("data") or {})
    full_rev = str(latest.get("rev", ""))
    return {"experiment": exp.get("name") or latest.get("name") or full_rev[:7], "rev": full_rev[:7],
            "full_rev": full_rev, "baseline": base_name, "kind": "experiment", "status": status,
            "params": params, **values}


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
                     "full_rev": rev, "baseline": base_name, "kind": kind,
                     "status": "error" if entry.get("error") else "done", "params": params, **values})
        rows += [_exp_row(exp, base_name) for exp in entry.get("experiments") or []]
    return rows


def failure_rows(failures: list[dict], baseline: str = "") -> list[dict]:
    """Rows for experiments that left no commit (a failed or stopped `dvc exp run --temp`): the
    sweep's outcome records (name, point, status, reason)."""
    return [{"experiment": f["name"], "rev": "", "full_rev": "", "baseline": baseline, "kind": "experiment",
             "status": f["status"], "reason": f.get("reason", ""), "params": dict(f.get("point") or {}),
             **{c: math.nan for c in [*METRICS, "shift_accuracy"]}} for f in failures]


def _select(rows: list[dict], names: list[str] | None, baselines: bool) -> list[dict]:
    if names is not None:
        return [r for r in rows if r["experiment"] in names or (baselines and r["kind"] == "baseline")]
    return rows if baselines else [r for r in rows if r["kind"] != "baseline"]


def build_table(exp_show: list[dict], names: list[str] | None = None, workspace: bool = False,
                baselines: bool = True, latency: dict[str, Latency] | None = None,
                failures: list[dict] = ()) -> pd.DataFrame:
    """The trade-off table: varying params, key metrics, side-by-side latency (`latency`, by
    experiment name), the failed experiments (`failures`, with their reason) and a Pareto flag per front."""
    rows = rows_from_exp_show(exp_show, workspace=workspace)
    known = {r["experiment"] for r in rows}
    baseline = next((r["experiment"] for r in rows if r["kind"] == "baseline"), "")
    rows += failure_rows([f for f in failures if f["name"] not in known], baseline)
    rows = _select(rows, names, baselines)
    all_keys = sorted({k for r in rows for k in r["params"]})
    with_params = [r for r in rows if r["params"]]  # a queued experiment has none yet
    varying = [k for k in all_keys
               if len({json.dumps(r["params"].get(k), sort_keys=True) for r in with_params}) > 1]
    shown = [k for k in ALWAYS_PARAMS if k in all_keys] + [k for k in varying if k not in ALWAYS_PARAMS]
    metric_cols = ["id_accuracy", "shift_accuracy", *[c for c in METRICS if c != "id_accuracy"]]
    records = []
    for r in rows:
        rec = {k: r[k] for k in ("experiment", "rev", "baseline", "kind", "status")}
        rec["reason"] = r.get("reason", "")
        for key in shown:
            value = r["params"].get(key)
            rec[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
        rec |= {c: r[c] for c in metric_cols}
        records.append(rec)
    columns = ["experiment", "rev", "baseline", "kind", "status", "reason", *shown, *metric_cols]
    table = pd.DataFrame.from_records(records, columns=columns)
    return mark_pareto(add_latency(table, latency or {}))


def add_latency(table: pd.DataFrame, latency: dict[str, Latency]) -> pd.DataFrame:
    """The side-by-side latency columns, and per row the experiments it ties with (within noise)."""
    table = table.copy()
    bands = [latency.get(name) for name in table["experiment"]]
    table["latency_ms"] = [b.median_ms if b else math.nan for b in bands]
    table["latency_lo_ms"] = [b.lo_ms if b else math.nan for b in bands]
    table["latency_hi_ms"] = [b.hi_ms if b else math.nan for b in bands]
    names = list(table["experiment"])
    table["latency_ties"] = [", ".join(n for n, o in zip(names, bands) if o and b and o is not b and latency_tie(b, o))
                             for b in bands]
    return table


def _compare(table: pd.DataFrame, col: str, sign: float, j: int, i: int) -> int:
    """+1 if row j is better than row i on `col`, 0 if tied (latency: within noise), -1 if worse."""
    if col == "latency_ms":
        a, b = (Latency(table.at[k, "latency_ms"], table.at[k, "latency_lo_ms"], table.at[k, "latency_hi_ms"], 0)
                for k in (j, i))
        if latency_tie(a, b):
            return 0
    diff = sign * (float(table.at[j, col]) - float(table.at[i, col]))
    return (diff > 0) - (diff < 0)


def pareto_flags(table: pd.DataFrame, maximize: list[str], minimize: list[str]) -> list[bool]:
    """True for rows no other row dominates: at least as good on every objective (a latency within
    noise counts as equal) and better on one. Rows with a missing objective are never optimal."""
    objectives = [(c, 1.0) for c in maximize] + [(c, -1.0) for c in minimize]
    t = table.reset_index(drop=True)
    valid = [i for i in range(len(t)) if not any(math.isnan(float(t.at[i, c])) for c, _ in objectives)]
    flags = [False] * len(t)
    for i in valid:
        flags[i] = not any(
            all(v >= 0 for v in cmp) and any(v > 0 for v in cmp)
            for j in valid if j != i for cmp in [[_compare(t, c, s, j, i) for c, s in objectives]])
    return flags


def latency_ranked(table: pd.DataFrame) -> bool:
    """Whether any row has a side-by-side latency: without one, latency is not ranked at all."""
    return bool(len(table)) and bool(table["latency_ms"].notna().any())


def mark_pareto(table: pd.DataFrame) -> pd.DataFrame:
    """Adds a bool column per front and `pareto` (optimal on all objectives at once: id and shift
    accuracy, forgetting, and latency where it was measured side by side)."""
    table = table.copy()
    for column, _, y, x in FRONTS:
        table[column] = pareto_flags(table, maximize=[y], minimize=[x]) if len(table) else []
    minimize = ["forgetting"] + (["latency_ms"] if latency_ranked(table) else [])
    table["pareto"] = pareto_flags(table, ["id_accuracy", "shift_accuracy"], minimize) if len(table) else []
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
        if x == "latency_ms" and len(ok):  # the noise band of each side-by-side latency
            ax.errorbar(ok[x], ok[y], xerr=[ok[x] - ok["latency_lo_ms"], ok["latency_hi_ms"] - ok[x]],
                        fmt="none", ecolor="#9aa0a6", alpha=0.6, zorder=1)
        if len(best) > 1:
            ax.step(best[x], best[y], where="post", c="#d93025", alpha=0.5, zorder=1)
        for _, r in ok.iterrows():
            ax.annotate(str(r["experiment"]), (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(title=title, xlabel=f"{x} (lower is better)", ylabel=f"{y} (higher is better)")
        ax.grid(alpha=0.3)
        if not len(ok):
            ax.text(0.5, 0.5, "not measured" if x == "latency_ms" else "no experiments with these metrics",
                    ha="center", transform=ax.transAxes)
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


def _failures_html(table: pd.DataFrame) -> str:
    failed = table[table["status"].isin(FAILED)]
    if failed.empty:
        return ""
    items = "".join(f"<li><b>{html.escape(str(r['experiment']))}</b> ({html.escape(str(r['status']))}): "
                    f"{html.escape(str(r['reason']) or 'see its log')}</li>" for _, r in failed.iterrows())
    return f'<h2 class="failed">{len(failed)} experiment(s) failed</h2><ul>{items}</ul>'


def _latency_html(table: pd.DataFrame) -> str:
    if not latency_ranked(table):
        return ("<p><b>Latency is not ranked:</b> no model was re-measured side by side in this run (without "
                "that, the latencies the stages recorded were timed at different times under different load).</p>")
    return ("<p><code>latency_ms</code>: every model re-measured side by side in one process, batch-1 predictions "
            "in interleaved rounds; the band (<code>latency_lo_ms</code>..<code>latency_hi_ms</code>) is the range "
            "of its round medians. Latencies whose bands overlap, or that differ by less than 5%, are within noise: "
            "they tie (<code>latency_ties</code>) and are not ranked. <code>latency_ms_p50</code> is what each "
            "evaluate stage recorded when it ran: shown, not ranked.</p>")


def render_html(table: pd.DataFrame, png: Path | None, title: str = "lmpipe experiments") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for _, r in table.iterrows():
        cls = ' class="pareto"' if bool(r.get("pareto")) else ' class="failed"' if r["status"] in FAILED else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in table.columns) + "</tr>")
    img = ""
    if png and png.exists():
        img = f'<img alt="trade-off fronts" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}">'
    fronts = "".join(f"<li><code>{c}</code>: {html.escape(t)}</li>" for c, t, _, _ in FRONTS)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ddd;padding:3px 6px;text-align:right}}tr.pareto{{background:#fde8e7;font-weight:bold}}
tr.failed{{color:#b00020}}h2.failed{{color:#b00020}}img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>
{_failures_html(table)}
<p>{len(table)} rows from <code>dvc exp show --json</code>, {stamp}. ★ marks a Pareto-optimal row on a front
(no other row is at least as good on both axes and better on one); bold rows are optimal on all objectives
(id and shift accuracy up, forgetting and latency down) at once. Rows with a missing metric are never optimal.</p>
{_latency_html(table)}
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
    shown = table.drop(columns=["rev", "baseline", "reason", "latency_lo_ms", "latency_hi_ms", "latency_ties"],
                       errors="ignore").rename(columns=short)
    buf = io.StringIO()
    with pd.option_context("display.width", 250, "display.max_columns", 50):
        buf.write(shown.to_string(index=False, na_rep="-", formatters={c: _fmt for c in shown.columns}))
    failed = table[table["status"].isin(FAILED)]
    for _, r in failed.iterrows():
        buf.write(f"\n{r['status'].upper()}: {r['experiment']}: {r['reason'] or 'see its log'}")
    return buf.getvalue()


def measured_latency(rows: pd.DataFrame, revs: dict[str, str], log=print) -> dict[str, Latency]:
    """Re-measure the fine-tuned model of every finished row side by side (pipelines/efficiency.py)."""
    import tempfile

    from pipelines.efficiency import measure_experiments, task_texts

    wanted = {n: revs[n] for n, s in zip(rows["experiment"], rows["status"]) if s == "done" and revs.get(n)}
    texts = task_texts()
    if not wanted or not texts:
        return {}
    with tempfile.TemporaryDirectory(prefix="lmpipe-latency-") as tmp:
        latency = measure_experiments(wanted, texts, Path(tmp))
    log(f"latency measured side by side for {len(latency)} of {len(wanted)} finished rows")
    return latency


def tradeoff_table(data: list[dict], names: list[str] | None = None, workspace: bool = False,
                   failures: list[dict] = (), measure: bool = True, log=print) -> pd.DataFrame:
    """build_table, with latency re-measured side by side when `measure` (models from the DVC cache)."""
    table = build_table(data, names=names, workspace=workspace, failures=failures)
    if not measure:
        return table
    revs = {r["experiment"]: r["full_rev"] for r in rows_from_exp_show(data, workspace=False)}
    latency = measured_latency(table, revs, log)
    return build_table(data, names=names, workspace=workspace, failures=failures, latency=latency)


def sweep_record(prefix: str, out_dir: Path = OUT_DIR) -> dict:
    """What a sweep recorded about its experiments (pipelines/sweep.py writes it)."""
    return json.loads((out_dir / "sweeps" / f"{prefix}.json").read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Trade-off table and Pareto fronts over DVC experiments.")
    ap.add_argument("--json", type=Path, help="a saved `dvc exp show --json` (default: run it)")
    ap.add_argument("-A", "--all-commits", action="store_true", help="experiments of every commit")
    ap.add_argument("--workspace", action="store_true", help="include the workspace row")
    ap.add_argument("--names", nargs="*", help="only these experiments (plus baselines)")
    ap.add_argument("--sweep", metavar="PREFIX", help="only this sweep's experiments, with its failures")
    ap.add_argument("--no-measure", action="store_true", help="do not re-measure latency side by side")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args(argv)
    names, failures = args.names, []
    if args.sweep:
        try:
            record = sweep_record(args.sweep, args.out)
        except (OSError, ValueError) as err:
            print(f"error: no record of sweep {args.sweep!r} under {args.out / 'sweeps'}: {err}", file=sys.stderr)
            return 2
        names = [o["name"] for o in record["outcomes"]]
        failures = [o for o in record["outcomes"] if o["status"] in FAILED]
    if args.json:
        data = json.loads(args.json.read_text())
    else:
        from pipelines.experiments import exp_show

        data = exp_show(all_commits=args.all_commits)
    measure = not args.no_measure and not args.json  # a saved listing has no repository behind it
    table = tradeoff_table(data, names=names, workspace=args.workspace, failures=failures, measure=measure)
    paths_ = write_report(table, args.out)
    print(to_text(table))
    print(f"\nwrote {paths_['html']} and {paths_['csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
