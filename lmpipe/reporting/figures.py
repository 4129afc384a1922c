"""The report's figures, drawn with matplotlib (no display) and saved as PNG under reports/figures/.

Each function returns the PNG's path, or None when its input curves are missing (the page then
says "not available" in place of the figure).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lmpipe.io import atomic_path
from lmpipe.paths import plots_dir

PRETRAIN_CURVES = plots_dir("pretrain") / "plots" / "metrics"
FINETUNE_CURVES = plots_dir("finetune") / "plots" / "metrics"
CONFUSION_CSV = plots_dir("evaluate") / "confusion.csv"


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


def _finetune_losses(ax, at) -> None:
    """Left panel: the training objective, with its task and replay parts when replay is on."""
    train = read_curve(FINETUNE_CURVES / "loss.tsv")
    replay = read_curve(FINETUNE_CURVES / "replay_lm_loss.tsv")
    ax.plot(at(train)["epoch"], train["loss"], label="train objective" if replay is not None else "train loss")
    if replay is not None:  # lambda > 0: the objective is task loss + lambda x replay LM loss; show both parts
        task = read_curve(FINETUNE_CURVES / "task_loss.tsv")
        if task is not None:
            ax.plot(at(task)["epoch"], task["task_loss"], "--", label="train task loss")
        twin = ax.twinx()
        twin.plot(at(replay)["epoch"], replay["replay_lm_loss"], ":", color="grey")
        twin.set_ylabel("replay LM loss (dotted)")
    eval_loss = read_curve(FINETUNE_CURVES / "eval" / "loss.tsv")
    if eval_loss is not None:
        ax.plot(at(eval_loss)["epoch"], eval_loss["loss"], "o-", label="validation loss")
    ax.set(xlabel="epoch", ylabel="cross-entropy", title="Fine-tuning loss")
    ax.legend(fontsize=8)


def finetune_figure(figures: Path) -> Path | None:
    """Fine-tuning curves against epochs. DVCLive's HF callback counts one step per Trainer log
    call, so its `step` column is joined with the logged `epoch` to get a meaningful x axis."""
    epoch = read_curve(FINETUNE_CURVES / "epoch.tsv")
    if epoch is None or read_curve(FINETUNE_CURVES / "loss.tsv") is None:
        return None
    at = lambda df: df.merge(epoch, on="step", how="left")  # noqa: E731
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    _finetune_losses(left, at)
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


VERDICT_COLOURS = {"transfers": "#2f855a", "mismatched generalization": "#c05621", "no capability": "#718096"}


def capability_figure(ev: dict, figures: Path, gap_threshold: float, ratio_threshold: float) -> Path | None:
    """Each shift as a point in two panels, coloured by its verdict: did behaviour transfer (y, the
    accuracy gap) against the base model's LM-loss ratio (left: does the text look familiar?) and
    against the capability probe's accuracy with its 95% CI (right: does the representation carry
    the task?) joined to the same probe on an untrained twin (hollow: what surface cues alone give),
    with the thresholds the verdicts use."""
    cap, task = ev.get("capability", {}), ev["task"]
    names = [n for n in task["shift"] if isinstance(cap.get(n), dict)]
    if not names:
        return None
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for n in names:
        c, y = cap[n], task["gap"][n]
        colour = VERDICT_COLOURS.get(c.get("verdict"), "black")
        left.scatter(c["loss_ratio"], y, color=colour)
        left.annotate(n, (c["loss_ratio"], y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if "probe_accuracy" in c:
            lo, hi = c["probe_accuracy_ci"]
            acc = c["probe_accuracy"]
            right.errorbar(acc, y, xerr=[[acc - lo], [hi - acc]], fmt="o", color=colour, capsize=3)
            right.annotate(n, (acc, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            if "probe_control_accuracy" in c:  # the untrained twin: the lead is the segment's length
                ctrl = c["probe_control_accuracy"]
                right.plot([ctrl, acc], [y, y], color=colour, lw=1, alpha=0.6)
                right.scatter(ctrl, y, facecolors="none", edgecolors=colour)
            if "transfer_accuracy" in c:  # fit on plain rows: does the base model read it as plain text?
                right.scatter(c["transfer_accuracy"], y, marker="s", color=colour)
    left.axvline(ratio_threshold, ls="--", c="grey", lw=1)
    for ax in (left, right):
        ax.axhline(gap_threshold, ls=":", c="grey", lw=1)
    bars = [cap[n]["probe_chance"] + cap.get("probe_margin", 0.0) for n in names if "probe_chance" in cap[n]]
    if bars:
        right.axvline(max(bars), ls="--", c="grey", lw=1)
    left.set(xlabel="base-model LM loss ratio, shifted / plain (per character)", ylabel="accuracy gap (id − shift)",
             title="Familiar text?")
    right.set(xlabel="capability probe accuracy on the shifted text (95% CI)", title="Readable by the base model?")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=v) for v, c in VERDICT_COLOURS.items()]
    handles.append(plt.Line2D([], [], marker="o", ls="", markerfacecolor="none", color="black",
                              label="untrained-model probe"))
    handles.append(plt.Line2D([], [], marker="s", ls="", color="black", label="transfer probe (fit on plain)"))
    right.legend(handles=handles, fontsize=8, loc="upper right")
    return save_figure(fig, figures / "capability.png")


def _confusion_matrix(ev: dict):
    matrix = ev["task"]["id"].get("confusion")
    if matrix is not None or not CONFUSION_CSV.exists():
        return matrix
    # an evaluate.json without the confusion key: rebuild it from the plot's CSV
    df = pd.read_csv(CONFUSION_CSV)
    labels = ev.get("labels") or sorted(set(df["actual"]) | set(df["predicted"]))
    return pd.crosstab(df["actual"], df["predicted"]).reindex(index=labels, columns=labels, fill_value=0).values


def confusion_figure(ev: dict, figures: Path) -> Path | None:
    matrix = _confusion_matrix(ev)
    if matrix is None:
        return None
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
