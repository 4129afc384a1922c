"""Shared fixtures: offline environment, and a throwaway copy of the repository (git + DVC) set
up with the micro config, for tests that run real `dvc repro` or real Prefect flows."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmpipe.params import parse_params

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "tests" / "params-micro.yaml"
BIN = Path(sys.executable).parent

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}
os.environ.update(OFFLINE_ENV)


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def make_repo(dest: Path, params: Path = MICRO) -> Path:
    """Copy the tracked project files into `dest`, use `params` as params.yaml, and commit it
    all in a fresh git repository (DVC needs git for dvc.lock, experiments and dvclive)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        # outputs stay behind (the copy reproduces them); the user-input folder ingest depends on comes along
        output = rel.startswith(("metrics/", "plots/", "reports/", "data/", "models/")) and not rel.startswith("data/input/")
        if src.is_file() and not output and rel != "dvc.lock":
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    # Write the params with every default filled in: dvc.yaml tracks whole sections and
    # individual keys (e.g. pretrain.device) that a concise test config would otherwise omit.
    full = parse_params(yaml.safe_load(params.read_text())).model_dump(mode="json")
    (dest / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        run(cmd, dest)
    return dest


@pytest.fixture(scope="session")
def micro_repo(tmp_path_factory) -> Path:
    """A micro-config repository on which `dvc repro` has run once (shared by several tests)."""
    repo = make_repo(tmp_path_factory.mktemp("micro"))
    run([str(BIN / "dvc"), "repro"], repo, timeout=900)
    return repo
