"""Stage 1 — ingest: bring the corpus, the labelled task, its shifted copies and prompts in.

Sources (`data.source`):
  world  the embedded generated corpus with known ground truth (stages/world.py); offline default
  files  local txt/jsonl/parquet/csv files named by globs
  hf     `datasets.load_dataset` specs (a hub name with a network, or "json"/"csv"/"parquet"
         builders with local data_files)

Outputs (the data contract, see README "What the default run produces"): data/raw/corpus.parquet, data/raw/task/{split}.parquet,
data/raw/task/shifts/<name>.parquet, data/raw/task/labels.json, data/raw/prompts.jsonl,
metrics/ingest.json; then the ingest gate.
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path

import great_expectations.expectations as gxe
import pandas as pd

from lmpipe.gates import Gate
from lmpipe.io import StageError, run_stage, write_json, write_jsonl, write_parquet
from lmpipe.params import DataParams, HubSpec, load_params
from lmpipe.shifts import apply_shift
from lmpipe.text import text_key
from lmpipe.world import generate_world

RAW = Path("data/raw")
SPLITS = ("train", "validation", "test")


# --- reading local files ------------------------------------------------------------------------


class ReadStats:
    """Counts what was repaired or skipped while reading, reported in metrics/ingest.json."""

    def __init__(self) -> None:
        self.replaced_bytes_docs = 0
        self.bad_lines = 0
        self.lines = 0


def _decode(raw: bytes, stats: ReadStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.replaced_bytes_docs += 1
        return raw.decode("utf-8", errors="replace")


def read_table(path: Path, stats: ReadStats) -> pd.DataFrame:
    """One file → DataFrame. txt: one document per blank-line-separated block."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as err:
            raise StageError(f"cannot read {path}: {type(err).__name__}: {err}") from None
    raw = path.read_bytes()
    if suffix == ".csv":
        import io

        return pd.read_csv(io.StringIO(_decode(raw, stats)), dtype=str, keep_default_na=False)
    if suffix in (".jsonl", ".json"):
        rows = []
        for line in raw.splitlines():
            if not line.strip():
                continue
            stats.lines += 1
            try:
                obj = json.loads(_decode(line, stats))
                if not isinstance(obj, dict):
                    raise ValueError("not an object")
                rows.append(obj)
            except ValueError:
                stats.bad_lines += 1
        return pd.DataFrame(rows)
    if suffix == ".txt":
        blocks = re.split(r"\n\s*\n", _decode(raw, stats))
        return pd.DataFrame({"text": [b.strip() for b in blocks if b.strip()]})
    raise StageError(f"unsupported file type {path.suffix!r} for {path} (txt, jsonl, parquet, csv)")


def expand(patterns: list[str] | str) -> list[Path]:
    patterns = [patterns] if isinstance(patterns, str) else patterns
    paths = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern, recursive=True))
        if not found:
            raise StageError(f"no files match {pattern!r}")
        paths += [Path(p) for p in found]
    return paths


def need_columns(df: pd.DataFrame, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise StageError(f"{where}: missing column(s) {missing}; found {sorted(map(str, df.columns))}")


def to_labels(values: pd.Series, p: DataParams, where: str) -> pd.Series:
    """Map raw labels to class indices; anything outside the label set is an error, not a guess."""
    if p.files.label_map:
        mapped = values.astype(str).map(p.files.label_map)
    else:
        mapped = pd.to_numeric(values, errors="coerce")
    bad = values[mapped.isna() | ~mapped.isin(range(len(p.label_names)))]
    if len(bad):
        raise StageError(
            f"{where}: {len(bad)} label(s) outside the label set {p.label_names}"
            f" (e.g. {bad.astype(str).unique()[:5].tolist()}); set data.files.label_map"
        )
    return mapped.astype("int64")


def load_files(p: DataParams, stats: ReadStats) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    f = p.files
    if not f.corpus:
        raise StageError("data.files.corpus is empty: give at least one glob")
    docs = []
    for path in expand(f.corpus):
        df = read_table(path, stats)
        if df.empty:
            continue
        need_columns(df, [f.text_column], str(path))
        docs.append(pd.DataFrame({"text": df[f.text_column].astype(str), "source": str(path)}))
    corpus = pd.concat(docs, ignore_index=True) if docs else pd.DataFrame(columns=["text", "source"])
    task = {}
    for split in SPLITS:
        pattern = getattr(f, f"task_{split}")
        if not pattern:
            raise StageError(f"data.files.task_{split} is empty: give a file or glob")
        frames = [read_table(path, stats) for path in expand(pattern)]
        df = pd.concat(frames, ignore_index=True)
        need_columns(df, [f.task_text_column, f.label_column], pattern)
        task[split] = pd.DataFrame(
            {"text": df[f.task_text_column].astype(str), "label": to_labels(df[f.label_column], p, pattern)}
        )
    return corpus, task


def _load_hub(spec: HubSpec):
    import datasets

    kwargs = {"split": spec.split}
    if spec.data_files:
        kwargs["data_files"] = spec.data_files
    try:
        return datasets.load_dataset(spec.name, spec.config, **kwargs)
    except Exception as err:  # offline, unknown name, bad split: say which spec failed
        raise StageError(f"load_dataset({spec.name!r}, {spec.config!r}, {kwargs}): {err}") from None


def load_hub(p: DataParams) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    h = p.hf
    if h.corpus is None or any(getattr(h, f"task_{s}") is None for s in SPLITS):
        raise StageError("data.hf needs corpus, task_train, task_validation and task_test specs")
    ds = _load_hub(h.corpus)
    need_columns(ds.to_pandas().head(0), [h.corpus.text_column], h.corpus.name)
    ds = ds.select(range(min(len(ds), h.max_docs)))
    corpus = pd.DataFrame({"text": ds[h.corpus.text_column], "source": h.corpus.name})
    task = {}
    for split in SPLITS:
        spec = getattr(h, f"task_{split}")
        df = _load_hub(spec).to_pandas()
        need_columns(df, [spec.text_column, spec.label_column], spec.name)
        task[split] = pd.DataFrame(
            {"text": df[spec.text_column].astype(str), "label": to_labels(df[spec.label_column], p, spec.name)}
        )
    return corpus, task


# --- assembling outputs -------------------------------------------------------------------------


def finish_real(corpus: pd.DataFrame, task: dict, p: DataParams, seed: int) -> dict:
    """Shared path for files/hf: ids, domain, leakage removal, shift splits, prompts."""
    corpus = corpus[corpus["text"].str.strip().astype(bool)].reset_index(drop=True)
    if corpus.empty:
        raise StageError("the corpus is empty after reading (no non-blank documents)")
    corpus.insert(0, "id", [f"doc{i:08d}" for i in range(len(corpus))])
    corpus["domain"] = "files"
    corpus["noise"] = ""
    # Evaluation items must never be trained on: drop train rows whose text is in test/validation.
    held_out = {text_key(t) for s in ("validation", "test") for t in task[s]["text"]}
    leaked = task["train"]["text"].map(text_key).isin(held_out)
    task["train"] = task["train"][~leaked].reset_index(drop=True)
    shifts = {name: apply_shift(name, task["test"], seed) for name in p.shifts}
    prompts = [{"domain": "files", "prompt": " ".join(t.split()[:6])} for t in corpus["text"].head(8)]
    if p.files.prompts:
        stats = ReadStats()
        prompts = read_table(Path(p.files.prompts), stats).to_dict("records")
    return {
        "corpus": corpus, "task": task, "shifts": shifts, "prompts": prompts,
        "label_names": p.label_names, "noise": {}, "train_leaks_removed": int(leaked.sum()),
    }


def build(params) -> tuple[dict, ReadStats]:
    p = params.data
    stats = ReadStats()
    if p.source == "world":
        world = generate_world(params.world, params.seed)
        out = {
            "corpus": world.corpus, "task": world.task, "shifts": world.shifts, "prompts": world.prompts,
            "label_names": world.label_names, "noise": world.noise_counts, "train_leaks_removed": 0,
        }
        return out, stats
    corpus, task = load_files(p, stats) if p.source == "files" else load_hub(p)
    if stats.lines and stats.bad_lines / stats.lines > p.max_bad_line_share:
        raise StageError(
            f"{stats.bad_lines}/{stats.lines} jsonl lines are corrupt, above"
            f" data.max_bad_line_share={p.max_bad_line_share}"
        )
    return finish_real(corpus, task, p, params.seed), stats


def leakage(task: dict, shifts: dict) -> int:
    """Evaluation rows (test and every shift) whose normalized text also occurs in train."""
    train = set(task["train"]["text"].map(text_key))
    evals = [task["test"], *shifts.values()]
    return int(sum(df["text"].map(text_key).isin(train).sum() for df in evals))


def main() -> None:
    params = load_params()
    p = params.data
    out, stats = build(params)
    corpus, task, shifts = out["corpus"], out["task"], out["shifts"]
    print(f"[ingest] source={p.source}: {len(corpus)} docs, task "
          + ", ".join(f"{s}={len(task[s])}" for s in SPLITS) + f", {len(shifts)} shifts", flush=True)

    write_parquet(RAW / "corpus.parquet", corpus)
    for split in SPLITS:
        write_parquet(RAW / "task" / f"{split}.parquet", task[split])
    for name, df in shifts.items():
        write_parquet(RAW / "task" / "shifts" / f"{name}.parquet", df)
    write_json(RAW / "task" / "labels.json", {"label_names": out["label_names"]})
    write_jsonl(RAW / "prompts.jsonl", out["prompts"])

    leaks = leakage(task, shifts)
    write_json("metrics/ingest.json", {
        "docs": len(corpus),
        "chars": int(corpus["text"].str.len().sum()),
        "task": {s: len(task[s]) for s in SPLITS},
        "shifts": {name: len(df) for name, df in shifts.items()},
        "noise": out["noise"],
        "leakage": leaks,
        "train_leaks_removed": out["train_leaks_removed"],
        "read": {"replaced_bytes_docs": stats.replaced_bytes_docs, "bad_lines": stats.bad_lines},
    })

    g = p.gate
    n_classes = len(out["label_names"])
    gate = Gate("ingest").table("corpus", corpus).table("train", task["train"])
    gate.expect("corpus", gxe.ExpectTableRowCountToBeBetween(min_value=g.min_docs))
    gate.expect("corpus", gxe.ExpectTableColumnsToMatchSet(
        column_set=["id", "text", "source", "domain", "noise"], exact_match=False))
    gate.expect("corpus", gxe.ExpectColumnValuesToNotBeNull(column="text"))
    gate.expect("corpus", gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1))
    gate.expect("corpus", gxe.ExpectColumnValuesToBeUnique(column="id"))
    for name, df in {**{s: task[s] for s in SPLITS}, **{f"shift_{k}": v for k, v in shifts.items()}}.items():
        gate.table(name, df)
        gate.expect(name, gxe.ExpectTableRowCountToBeBetween(min_value=g.min_task_rows))
        gate.expect(name, gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1))
        gate.expect(name, gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(n_classes))))
        gate.expect(name, gxe.ExpectColumnValuesToNotBeNull(column="label"))
    shares = task["train"]["label"].value_counts(normalize=True).reindex(range(n_classes), fill_value=0)
    gate.scalars("balance", {f"class_{k}_share": float(v) for k, v in shares.items()} | {"leakage": leaks})
    for k in range(n_classes):
        gate.expect("balance", gxe.ExpectColumnValuesToBeBetween(
            column=f"class_{k}_share", min_value=g.min_class_share))
    gate.expect("balance", gxe.ExpectColumnValuesToBeBetween(column="leakage", min_value=0, max_value=0))
    gate.finish()


if __name__ == "__main__":
    run_stage(main)
