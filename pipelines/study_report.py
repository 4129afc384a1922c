"""The remedy study's outputs: one table row per group point, a summary in numbers, and a
self-contained page (pipelines/study.py runs the experiments and calls `write_outputs`).

Each group varies one thing; what it varies decides how it is summarized and which question
its section answers (`kind_of`):
  augment   finetune.augment        gaps on the augmented shifts vs the held-out ones
  replay    finetune.replay_weight  forgetting vs in-distribution accuracy
  exposure  world.*                 capability (probe) and transfer (gap) vs pretraining exposure
  compare   anything else           id accuracy, forgetting, mean gap side by side

The summary is computed from table.csv alone (`summarize`), so every number it quotes is in the
table, and `python -m pipelines.study --summary` can print it again later.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import pandas as pd

from lmpipe.params import ENCODING_NAMES
from pipelines.summary import get_dotted

VERDICT_SHORT = {"transfers": "T", "mismatched generalization": "MG", "no capability": "NC"}
QUESTIONS = {
    "augment": "Training-time augmentation (finetune.augment): does it close the gap on the shifts it augments, "
               "and do the held-out shifts move?",
    "replay": "LM replay during fine-tuning (finetune.replay_weight): how much forgetting does it buy back, "
              "at what in-distribution accuracy?",
    "exposure": "Pretraining exposure (world.*): how do capability (the base-model probe) and transfer "
                "(the fine-tuned gap) move with it?",
    "safety": "Safety augmentation (sft.safety_augment): refusals trained on restricted requests in some encodings; "
              "does attack success fall on those encodings, do the held-out ones move, and what does it cost in "
              "over-refusal?",
    "compare": "Side by side: in-distribution accuracy, forgetting and the shift gaps.",
}
FAILED = ("failed", "timed out")
# (column, file, dotted key) of the per-experiment figures next to the per-shift ones
METRICS = [("id_accuracy", "evaluate", "task.id.accuracy"), ("forgetting", "evaluate", "lm.forgetting"),
           ("gap_mean", "evaluate", "task.gap.mean"), ("trainable_params", "finetune", "trainable_params"),
           ("ft_wall_s", "finetune", "wall_s"), ("gap_threshold", "evaluate", "capability.gap_threshold"),
           ("plain_refusal", "redteam", "plain.refusal_rate"), ("plain_asr", "redteam", "plain.asr"),
           ("over_refusal", "redteam", "benign.over_refusal"), ("benign_accuracy", "redteam", "benign.accuracy")]
PER_SHIFT = ("gap.", "probe.", "control.", "lead.", "transfer.", "tcontrol.", "chance.", "verdict.", "asr.")


def kind_of(points: list[dict]) -> str:
    """The summary a group gets, from the override keys whose values differ between its points."""
    keys = sorted({k for p in points for k in p})
    varying = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in points}) > 1]
    if varying == ["finetune.augment"]:
        return "augment"
    if varying == ["finetune.replay_weight"]:
        return "replay"
    if varying and all(k.startswith("world.") for k in varying):
        return "exposure"
    if varying == ["sft.safety_augment"]:
        return "safety"
    return "compare"


def _num(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _ci(value) -> tuple[float, float]:
    return (_num(value[0]), _num(value[1])) if isinstance(value, (list, tuple)) and len(value) == 2 else (math.nan,) * 2


def shifts_of(evaluate: dict) -> list[str]:
    return sorted(k for k, v in (get_dotted(evaluate, "task.shift") or {}).items() if isinstance(v, dict))


def metric_columns(metrics: dict[str, dict]) -> dict:
    """The table's metric columns of one experiment, from its metrics files ({"evaluate": {...}, ...})."""
    ev = metrics.get("evaluate") or {}
    row = {col: _num(get_dotted(metrics.get(file) or {}, key)) for col, file, key in METRICS}
    row["id_accuracy_lo"], row["id_accuracy_hi"] = _ci(get_dotted(ev, "task.id.accuracy_ci"))
    for s in shifts_of(ev):
        cap = get_dotted(ev, f"capability.{s}") or {}
        row[f"gap.{s}"] = _num(get_dotted(ev, f"task.gap.{s}"))
        row[f"gap.{s}.lo"], row[f"gap.{s}.hi"] = _ci(get_dotted(ev, f"task.gap.{s}_ci"))
        row[f"probe.{s}"] = _num(cap.get("probe_accuracy"))
        row[f"probe.{s}.lo"], row[f"probe.{s}.hi"] = _ci(cap.get("probe_accuracy_ci"))
        row[f"control.{s}"] = _num(cap.get("probe_control_accuracy"))
        row[f"lead.{s}.lo"], row[f"lead.{s}.hi"] = _ci(cap.get("probe_lead_ci"))
        row[f"transfer.{s}"] = _num(cap.get("transfer_accuracy"))
        row[f"tcontrol.{s}"] = _num(cap.get("transfer_control_accuracy"))
        row[f"chance.{s}"] = _num(cap.get("probe_chance"))
        row[f"verdict.{s}"] = cap.get("verdict") or ""
    for name, attack in sorted((get_dotted(metrics.get("redteam") or {}, "attacks") or {}).items()):
        if isinstance(attack, dict):
            row[f"asr.{name}"] = _num(attack.get("asr"))
            row[f"asr.{name}.lo"], row[f"asr.{name}.hi"] = _ci(attack.get("asr_ci"))
    return row


def build_table(entries: list[dict], outcomes: dict[str, dict], metrics: dict[str, dict]) -> pd.DataFrame:
    """One row per group point. `entries`: {group, point, experiment, overrides} in plan order;
    `outcomes`: experiment -> sweep outcome; `metrics`: experiment -> its metrics files."""
    kinds = {}
    for e in entries:
        kinds.setdefault(e["group"], []).append(e["overrides"])
    rows = []
    for e in entries:
        out = outcomes.get(e["experiment"], {})
        rows.append({"group": e["group"], "kind": kind_of(kinds[e["group"]]), "point": e["point"],
                     "experiment": e["experiment"], "status": out.get("status", "not run"),
                     "reason": out.get("reason", ""), "seconds": _num(out.get("seconds")),
                     "overrides": json.dumps(e["overrides"], sort_keys=True),
                     **metric_columns(metrics.get(e["experiment"]) or {})})
    table = pd.DataFrame.from_records(rows)
    head = [c for c in table.columns if not c.startswith(PER_SHIFT)]
    shifts = sorted({c.split(".")[1] for c in table.columns if c.startswith("gap.")})
    per_shift = [f"{p}.{s}{x}" for s in shifts for p, xs in (("gap", ("", ".lo", ".hi")),
                 ("probe", ("", ".lo", ".hi")), ("control", ("",)), ("lead", (".lo", ".hi")), ("transfer", ("",)),
                 ("tcontrol", ("",)), ("chance", ("",)),
                 ("verdict", ("",))) for x in xs]
    attacks = [c for c in table.columns if c.startswith("asr.")]
    return table[head + [c for c in per_shift if c in table.columns] + attacks]


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


# --- the summary, in numbers ------------------------------------------------------------------


def f3(value) -> str:
    value = _num(value)
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def table_shifts(table: pd.DataFrame) -> list[str]:
    return [c.split(".", 1)[1] for c in table.columns if c.startswith("gap.") and c.count(".") == 1]


def _value(row, key: str):
    return json.loads(row["overrides"]).get(key)


def _label(row) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in json.loads(row["overrides"]).items()) or "params.yaml"


def _move(what: str, a, b) -> str:
    """'cuts the leet gap from 0.464 to 0.012' / 'raises ...' / 'leaves ... at 0.464 (0.463)'."""
    if f3(a) == f3(b) or math.isnan(_num(a)) or math.isnan(_num(b)):
        return f"leaves {what} at {f3(a)} ({f3(b)})"
    return f"{'cuts' if _num(b) < _num(a) else 'raises'} {what} from {f3(a)} to {f3(b)}"


def _ok(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[~rows["status"].isin([*FAILED, "not run"])]


def _augment(rows: pd.DataFrame, shifts: list[str]) -> list[str]:
    ok = _ok(rows)
    sizes = [len(_value(r, "finetune.augment") or []) for _, r in ok.iterrows()]
    if len(ok) < 2:
        return []
    ref = ok.iloc[sizes.index(min(sizes))]
    ref_aug = set(_value(ref, "finetune.augment") or [])
    out = []
    for _, r in ok.iterrows():
        aug = _value(r, "finetune.augment") or []
        if r["experiment"] == ref["experiment"] or set(aug) == ref_aug:
            continue
        new = [s for s in aug if s not in ref_aug and s in shifts]
        held = [s for s in shifts if s not in aug and ref.get(f"verdict.{s}") != "transfers"]
        parts = [_move(f"the {s} gap", ref[f"gap.{s}"], r[f"gap.{s}"]) for s in new]
        held_parts = [f"{s} {f3(ref[f'gap.{s}'])} -> {f3(r[f'gap.{s}'])}" for s in held]
        base = f"[{', '.join(sorted(ref_aug))}]" if ref_aug else "no augmentation"
        out.append(f"augmenting with {', '.join(aug)} (vs {base}) " + (" and ".join(parts) or "adds no evaluated shift")
                   + (f"; held out, the gaps that did not transfer move {', '.join(held_parts)}" if held_parts else "")
                   + ".")
    return out


def _replay(rows: pd.DataFrame) -> list[str]:
    ok = _ok(rows).assign(w=lambda t: [_num(_value(r, "finetune.replay_weight")) for _, r in t.iterrows()])
    if len(ok) < 2:
        return []
    ok = ok.sort_values("w", kind="stable")
    ref = ok.iloc[0]
    return [f"replay_weight {r['w']:g} {_move('forgetting', ref['forgetting'], r['forgetting'])} at id accuracy "
            f"{f3(r['id_accuracy'])} ({f3(ref['id_accuracy'])} at {ref['w']:g})." for _, r in ok.iloc[1:].iterrows()]


def _exposure(rows: pd.DataFrame, shifts: list[str]) -> list[str]:
    ok = _ok(rows)
    if len(ok) < 2:
        return []
    keys = sorted({k for _, r in ok.iterrows() for k in json.loads(r["overrides"])})
    values = " / ".join(",".join(json.dumps(_value(r, k)) for k in keys) for _, r in ok.iterrows())
    out = []
    for s in shifts:
        verdicts = [str(v) for v in ok[f"verdict.{s}"].fillna("")]
        if all(v == "transfers" for v in verdicts):
            continue
        def col(name: str):
            return ok[name] if name in ok else [math.nan] * len(ok)

        probes = " / ".join(f"{f3(v)} (untrained {f3(c)})" for v, c in zip(ok[f"probe.{s}"], col(f"control.{s}")))
        moved = " / ".join(f"{f3(v)} (untrained {f3(c)})" for v, c in zip(col(f"transfer.{s}"), col(f"tcontrol.{s}")))
        gaps = " / ".join(f3(v) for v in ok[f"gap.{s}"])
        out.append(f"{s} at {', '.join(keys)} = {values}: probe accuracy {probes}, transfer probe {moved}, gap {gaps}"
                   + (f" ({' / '.join(v or 'n/a' for v in verdicts)})." if any(verdicts) else "."))
    return out


def _safety(rows: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """Per augmented point against the point without augmentation: ASR of each encoded attack, its
    encoding augmented or held out, and the over-refusal it costs."""
    ok = _ok(rows)
    aug = [set(_value(r, "sft.safety_augment") or []) for _, r in ok.iterrows()]
    if len(ok) < 2 or set() not in aug:
        return []
    ref = ok.iloc[aug.index(set())]
    attacks = [c[4:] for c in table.columns if c.startswith("asr.") and c.count(".") == 1]
    out = []
    for (_, r), encs in zip(ok.iterrows(), aug):
        if not encs:
            continue
        moved = {"augmented": [], "held out": []}
        for a in attacks:
            enc = next((w for w in a.split("_") if w in ENCODING_NAMES), None)  # encoded_rot13_reply -> rot13
            if enc is None:
                continue
            side = "augmented" if enc in encs else "held out"
            moved[side].append(f"{a} {f3(ref[f'asr.{a}'])} -> {f3(r[f'asr.{a}'])}")
        out.append(f"safety_augment {sorted(encs)}: attack success on augmented encodings "
                   f"{', '.join(moved['augmented']) or 'n/a'}; held out {', '.join(moved['held out']) or 'n/a'};"
                   f" {_move('over-refusal', ref['over_refusal'], r['over_refusal'])}.")
    return out


def _compare(rows: pd.DataFrame) -> list[str]:
    parts = [f"{_label(r)}: id accuracy {f3(r['id_accuracy'])}, forgetting {f3(r['forgetting'])}, "
             f"mean gap {f3(r['gap_mean'])}"
             + (f", {int(r['trainable_params']):,} trainable params" if not math.isnan(_num(r["trainable_params"]))
                else "") for _, r in _ok(rows).iterrows()]
    return ["; ".join(parts) + "."] if parts else []


def summarize(table: pd.DataFrame) -> dict[str, list[str]]:
    """group -> its sentences (numbers at three decimals, as they are in table.csv), failures named."""
    shifts = table_shifts(table)
    out = {}
    for group, rows in table.groupby("group", sort=False):
        kind = rows["kind"].iloc[0]
        lines = (_augment(rows, shifts) if kind == "augment" else _replay(rows) if kind == "replay"
                 else _exposure(rows, shifts) if kind == "exposure" else _safety(rows, table) if kind == "safety"
                 else _compare(rows))
        failed = rows[rows["status"].isin([*FAILED, "not run"])]
        lines += [f"{r['experiment']} ({_label(r)}) {r['status']}: {r['reason'] or 'no metrics'}."
                  for _, r in failed.iterrows()]
        out[str(group)] = lines or ["no finished experiments to compare."]
    return out


def summary_text(table: pd.DataFrame) -> str:
    return "\n".join(f"{group}: {line}" for group, lines in summarize(table).items() for line in lines)


# --- figures and page --------------------------------------------------------------------------


def _bars(ax, rows: pd.DataFrame, shifts: list[str], metric: str, title: str) -> None:
    """Grouped bars per shift, one per point, with the 95% CI; hatched where the point augments the shift."""
    width = 0.8 / max(1, len(rows))
    for i, (_, r) in enumerate(rows.iterrows()):
        aug = set(_value(r, "finetune.augment") or [])
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(shifts))]
        ys = [_num(r.get(f"{metric}.{s}")) for s in shifts]
        lo = [max(0.0, y - _num(r.get(f"{metric}.{s}.lo"))) for s, y in zip(shifts, ys)]
        hi = [max(0.0, _num(r.get(f"{metric}.{s}.hi")) - y) for s, y in zip(shifts, ys)]
        label = _label(r) + (f" ({r['status']})" if r["status"] in FAILED else "")
        bars = ax.bar(xs, ys, width, label=label, yerr=[lo, hi], capsize=2, error_kw={"elinewidth": 0.8})
        for bar, s in zip(bars, shifts):
            bar.set_hatch("//" if s in aug else "")
    ax.set_xticks(range(len(shifts)), shifts, rotation=30, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def _overall(ax, rows: pd.DataFrame) -> None:
    xs = list(range(len(rows)))
    acc = [_num(v) for v in rows["id_accuracy"]]
    err = [[max(0.0, a - _num(lo)) for a, lo in zip(acc, rows["id_accuracy_lo"])],
           [max(0.0, _num(hi) - a) for a, hi in zip(acc, rows["id_accuracy_hi"])]]
    ax.errorbar(xs, acc, yerr=err, fmt="o", c="#1a73e8", capsize=3, label="id accuracy (95% CI)")
    ax.set_ylabel("id accuracy", color="#1a73e8")
    twin = ax.twinx()
    twin.plot(xs, [_num(v) for v in rows["forgetting"]], "s--", c="#d93025", label="forgetting")
    twin.set_ylabel("forgetting (relative ppl increase)", color="#d93025")
    ax.set_xticks(xs, [_label(r).split("=", 1)[-1] for _, r in rows.iterrows()], rotation=30, fontsize=8)
    ax.set_title("id accuracy and forgetting", fontsize=10)
    ax.grid(alpha=0.3)


def group_figure(rows: pd.DataFrame, shifts: list[str]) -> bytes:
    """Three panels: gap per shift, probe accuracy per shift (both with 95% CIs), id accuracy and forgetting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), dpi=80)
    _bars(axes[0], rows, shifts, "gap", "gap: id - shifted accuracy (95% CI; hatched: augmented)")
    axes[0].axhline(_num(rows["gap_threshold"].max()), ls=":", c="k", lw=0.8)
    _bars(axes[1], rows, shifts, "probe", "base-model probe accuracy (95% CI; dots: chance)")
    for j, s in enumerate(shifts):
        axes[1].plot([j - 0.4, j + 0.4], [_num(rows[f"chance.{s}"].max())] * 2, ":", c="k", lw=0.8)
    _overall(axes[2], rows)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _cell(r, s: str) -> str:
    gap, lo, hi = (f3(r.get(f"gap.{s}{x}")) for x in ("", ".lo", ".hi"))
    verdict = VERDICT_SHORT.get(str(r.get(f"verdict.{s}") or ""), "")
    return f"{gap} [{lo}, {hi}] {verdict}".strip()


def _group_table(rows: pd.DataFrame, shifts: list[str]) -> str:
    head = ["experiment", "overrides", "status", "id accuracy [CI]", "forgetting", "mean gap", *shifts]
    body = []
    for _, r in rows.iterrows():
        cells = [r["experiment"], _label(r), r["status"] + (f": {r['reason']}" if r["reason"] else ""),
                 f"{f3(r['id_accuracy'])} [{f3(r['id_accuracy_lo'])}, {f3(r['id_accuracy_hi'])}]",
                 f3(r["forgetting"]), f3(r["gap_mean"]), *[_cell(r, s) for s in shifts]]
        cls = ' class="failed"' if r["status"] in FAILED else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(body) + "</tbody></table>")


def render_page(table: pd.DataFrame, meta: dict) -> str:
    shifts, summary = table_shifts(table), summarize(table)
    sections = []
    for group, rows in table.groupby("group", sort=False):
        png = base64.b64encode(group_figure(rows, shifts)).decode() if len(_ok(rows)) else ""
        img = f'<img alt="{html.escape(str(group))}" src="data:image/png;base64,{png}">' if png else ""
        items = "".join(f"<li>{html.escape(s)}</li>" for s in summary[str(group)])
        sections.append(f"<h2>{html.escape(str(group))}</h2><p>{html.escape(QUESTIONS[rows['kind'].iloc[0]])}</p>"
                        f"<ul>{items}</ul>{img}{_group_table(rows, shifts)}")
    failed = table[table["status"].isin(FAILED)].drop_duplicates("experiment")
    fail = (f'<h2 class="failed">{len(failed)} experiment(s) failed</h2><ul>'
            + "".join(f"<li><b>{html.escape(r['experiment'])}</b> {html.escape(r['status'])}: "
                      f"{html.escape(str(r['reason']))}</li>" for _, r in failed.iterrows()) + "</ul>") if len(failed) else ""
    legend = ", ".join(f"{v} = {k}" for k, v in VERDICT_SHORT.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>lmpipe remedy study</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ddd;padding:3px 6px}}tr.failed,h2.failed{{color:#b00020}}img{{max-width:100%}}</style>
</head><body><h1>lmpipe remedy study <code>{html.escape(meta['prefix'])}</code></h1>
{fail}<p>{html.escape(meta['about'])}</p>
<p>Gap = in-distribution minus shifted accuracy of the fine-tuned classifier; probe = a linear probe on the frozen
base model's features (capability). Cells: gap [95% CI] verdict ({html.escape(legend)}). Every column, one row
per group point: <code>table.csv</code>.</p>{''.join(sections)}</body></html>
"""


def write_outputs(table: pd.DataFrame, out_dir: Path, meta: dict) -> dict:
    """table.csv and index.html under `out_dir`; returns their paths and the summary text."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, page = out_dir / "table.csv", out_dir / "index.html"
    table.to_csv(csv, index=False)
    text = summary_text(read_table(csv))  # from the file as written: the numbers a reader of it sees
    page.write_text(render_page(read_table(csv), meta), encoding="utf-8")
    return {"csv": csv, "html": page, "summary": text}
