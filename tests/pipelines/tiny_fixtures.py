"""Fixtures of the flow and sweep tests (`pytest_plugins = ["tiny_fixtures"]`): one temporary
Prefect API per session, and a fresh copy of the tiny repository (tiny_dag.py) per test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import BIN
from prefect.testing.utilities import prefect_test_harness
from tiny_dag import ENV_VARS, make_tiny_repo


@pytest.fixture(scope="session")
def harness():
    """One temporary Prefect API for every flow test of the session."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_template(tmp_path_factory) -> Path:
    return make_tiny_repo(tmp_path_factory.mktemp("tiny") / "repo")


@pytest.fixture
def tiny(tmp_path, monkeypatch, harness, tiny_template):
    """A fresh copy of the tiny repository as the working directory, no failure requested."""
    import pipelines.flow as flow_mod

    repo = tmp_path / "repo"
    shutil.copytree(tiny_template, repo, symlinks=True)  # git + dvc init once per session, not per test
    monkeypatch.chdir(repo)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TINY_COUNTER", str(tmp_path / "counter"))
    # retries keep their count but not their 10-20-40 s backoff
    monkeypatch.setattr(flow_mod, "run_stage", flow_mod.run_stage.with_options(retry_delay_seconds=0))
    return repo
