"""Real-text check of the cleaning: documents of real English technical text that nobody on the
team wrote (man pages, licence texts, Debian copyright files and READMEs, Python docstrings and
sources, package descriptions), plus the junk real scrapes hold (file lists, tables, binary bytes,
certificates, minified code, exact copies, fragments), each labelled keep/drop by hand, by reading
it, with a one-line reason.

    python -m bench.realtext build   # re-extract every document from this machine
    python -m bench.realtext score   # precision and recall of "keep", and the characters kept

bench/realtext/labels.jsonl holds one row per document: id, source (how it was extracted), label
("keep" or "drop") and reason. `build` runs each source and writes bench/realtext/docs.jsonl (id,
text), which is committed, so the score does not depend on what a machine has installed; a
source this machine lacks is reported and its stored text kept. Sources:

    cmd: <shell command>     its standard output (man pages render at MANWIDTH=80)
    docstring: <file.py>     the module's docstring, as Python's help() shows it
    description: <METADATA>  the long description of an installed Python distribution

A text longer than MAX_CHARS is cut at its last paragraph break before that (a page of a long
document, as a scraper's size limit would cut it).

`score` cleans the documents with clean_corpus and the clean section of params.yaml (in one
process) and compares what it kept with the labels: precision = labelled keep among the kept,
recall = kept among the labelled keep. It lists each disagreement with the filter and the reason.
"""

from __future__ import annotations

import argparse
import ast
import email.parser
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the repo root

from lmpipe.cleaning.streaming import CleanResult, clean_corpus  # noqa: E402
from lmpipe.params import CleanParams, read_params  # noqa: E402

DATA = Path(__file__).resolve().parent / "realtext"
LABELS = DATA / "labels.jsonl"
DOCS = DATA / "docs.jsonl"
MAX_CHARS = 12_000
SEED = 0


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


# --- build --------------------------------------------------------------------------------------


def extract(source: str) -> str:
    """The text of one source (see the module docstring); raises OSError if this machine lacks it."""
    kind, _, arg = source.partition(": ")
    if kind == "cmd":
        env = {**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "LC_ALL": "C.UTF-8", "MAN_KEEP_FORMATTING": ""}
        out = subprocess.run(["bash", "-c", arg], capture_output=True, env=env, timeout=60)
        if out.returncode != 0 or not out.stdout:
            raise OSError(f"`{arg}` exited {out.returncode}: {out.stderr.decode(errors='replace').strip()[:200]}")
        return out.stdout.decode("utf-8", errors="replace")
    if kind == "docstring":
        doc = ast.get_docstring(ast.parse(Path(arg).read_bytes()))
        if doc is None:
            raise OSError(f"{arg} has no module docstring")
        return doc
    if kind == "description":
        msg = email.parser.Parser().parsestr(Path(arg).read_text(encoding="utf-8"))
        body = msg.get_payload() or msg.get("Description", "")
        if not body.strip():
            raise OSError(f"{arg} has no description")
        return body
    raise ValueError(f"unknown source kind {kind!r} in {source!r}")


def cut(text: str, limit: int = MAX_CHARS) -> str:
    if len(text) <= limit:
        return text
    head = text[:limit]
    at = head.rfind("\n\n")
    return head[:at] if at > 0 else head[: max(head.rfind("\n"), 1)]


def build() -> None:
    labels = read_jsonl(LABELS)
    stored = {d["id"]: d["text"] for d in read_jsonl(DOCS)} if DOCS.exists() else {}
    docs, missing, changed = [], [], 0
    for row in labels:
        try:
            text = cut(extract(row["source"]))
        except (OSError, subprocess.TimeoutExpired) as err:
            if row["id"] not in stored:
                raise SystemExit(f"{row['id']}: {err}; no stored text to fall back on") from None
            missing.append(f"{row['id']} ({err})")
            text = stored[row["id"]]
        changed += row["id"] in stored and stored[row["id"]] != text
        docs.append({"id": row["id"], "text": text})
    write_jsonl(DOCS, docs)
    print(f"{len(docs)} documents, {sum(len(d['text']) for d in docs):,} chars -> {DOCS}")
    if changed:
        print(f"{changed} document(s) differ from the stored text: re-read them before trusting the labels")
    for line in missing:
        print(f"kept the stored text of {line}")


# --- score --------------------------------------------------------------------------------------


def corpus() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(documents, labels) in one order, checked to match."""
    labels = pd.DataFrame(read_jsonl(LABELS))
    docs = pd.DataFrame(read_jsonl(DOCS))
    if labels["id"].tolist() != docs["id"].tolist():
        raise SystemExit(f"{DOCS} and {LABELS} list different documents: run `python -m bench.realtext build`")
    bad = sorted(set(labels["label"]) - {"keep", "drop"})
    if bad:
        raise SystemExit(f"labels must be keep or drop, found {bad}")
    return docs.assign(source="realtext", domain="realtext"), labels


def score(result: CleanResult, docs: pd.DataFrame, labels: pd.DataFrame) -> dict:
    """Precision and recall of "keep", and the characters kept, of one cleaning of `docs`."""
    kept = docs["id"].isin(result.kept_ids).to_numpy()
    keep = (labels["label"] == "keep").to_numpy()
    chars = docs["text"].str.len().to_numpy()
    out_chars = result.decisions["text"].str.len().to_numpy()
    return {
        "docs": len(docs),
        "labelled_keep": int(keep.sum()),
        "kept": int(kept.sum()),
        "precision": float((keep & kept).sum() / max(kept.sum(), 1)),
        "recall": float((keep & kept).sum() / max(keep.sum(), 1)),
        "chars_in": int(chars.sum()),
        "chars_kept": int(out_chars[kept].sum()),
        "chars_kept_share": float(out_chars[kept].sum() / max(chars.sum(), 1)),
        # of the characters in documents labelled keep, the share that survives (after repairs)
        "keep_chars_kept_share": float(out_chars[keep & kept].sum() / max(chars[keep].sum(), 1)),
    }


def disagreements(result: CleanResult, labels: pd.DataFrame) -> pd.DataFrame:
    d = result.decisions.reset_index(drop=True)
    kept = d["dropped_by"] == ""
    wrong = kept != (labels["label"] == "keep")
    return pd.DataFrame({
        "id": labels["id"], "label": labels["label"], "cleaning": d["dropped_by"].where(~kept, "kept"),
        "detail": d["detail"], "reason": labels["reason"], "source": labels["source"],
    })[wrong.to_numpy()]


def run_score(p: CleanParams | None = None) -> tuple[dict, pd.DataFrame]:
    docs, labels = corpus()
    if p is None:
        p = read_params().clean
    result = clean_corpus(docs, p.model_copy(update={"num_proc": 1}), SEED)
    return score(result, docs, labels), disagreements(result, labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["build", "score"])
    args = ap.parse_args()
    if args.command == "build":
        return build()
    figures, wrong = run_score()
    print(json.dumps(figures, indent=1))
    with pd.option_context("display.width", 200, "display.max_colwidth", 70, "display.max_rows", 500):
        print(f"\n{len(wrong)} disagreement(s):" + ("\n" + wrong.to_string(index=False) if len(wrong) else ""))


if __name__ == "__main__":
    main()
