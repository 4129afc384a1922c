"""Generation prompts from a file in the inputs (`data.files.prompts`), checked before they are copied.

Formats: .jsonl, one object per line with a non-empty string "prompt" and optionally a string
"domain" (other keys are dropped); .txt, one prompt per non-blank line. Unlike corpus files, no line
may be broken: the file is small and written by hand, so every line is meant.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lmpipe.io import StageError
from lmpipe.sources.readers import ReadStats, outside_input

KEY = "data.files.prompts"
DEFAULT_DOMAIN = "prompts"


def _jsonl_prompt(path: Path, n: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except ValueError:
        raise StageError(f"{path}: line {n} is not valid JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
        raise StageError(f"{path}: line {n} needs a non-empty string \"prompt\"")
    domain = obj.get("domain", DEFAULT_DOMAIN)
    if not isinstance(domain, str) or not domain:
        raise StageError(f"{path}: line {n}: \"domain\" must be a non-empty string")
    return {"domain": domain, "prompt": obj["prompt"]}


def read_prompts(name: str, stats: ReadStats) -> list[dict]:
    """The prompts of the file `name` as {"domain", "prompt"} rows."""
    path = Path(name)
    if path.suffix.lower() not in (".jsonl", ".txt"):
        raise StageError(f"{KEY}: {path} must be .jsonl (one {{\"prompt\": ...}} per line) or .txt (one per line)")
    if not path.is_file():
        raise StageError(f"{KEY}: {path} " + ("is a directory" if path.is_dir() else "does not exist"))
    outside_input([path], KEY, stats)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise StageError(f"{path}: not UTF-8 (byte {err.start})") from None
    except OSError as err:
        raise StageError(f"{path}: cannot read: {err.strerror or err}") from None
    stats.digests[str(path)] = hashlib.blake2b(raw, digest_size=16).hexdigest()
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise StageError(f"{KEY}: {path} is empty (no prompts)")
    if path.suffix.lower() == ".txt":
        return [{"domain": DEFAULT_DOMAIN, "prompt": line.strip()} for _, line in lines]
    return [_jsonl_prompt(path, n, line) for n, line in lines]
