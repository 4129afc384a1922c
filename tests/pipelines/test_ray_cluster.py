"""The data-on-Ray flow (pipelines/ray_cluster.py): which Ray address it uses (parameter, then the
worker's environment, then the Prefect variable), the one-line error when there is none or it is
malformed, the overrides it hands the lmpipe flow, and its deployment in prefect.yaml. No Prefect
server: the variable lookup and the lmpipe flow are replaced (test_prefect_e2e.py runs a real one)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmpipe.params import ParamsError
from pipelines import ray_cluster
from pipelines.experiments import validate_overrides
from pipelines.ray_cluster import ENV_VAR, resolve_ray_address

ROOT = Path(__file__).resolve().parents[2]


def variable(value):
    asked = []

    def get(name):
        asked.append(name)
        return value
    get.asked = asked
    return get


def test_parameter_beats_environment_beats_variable():
    var = variable("ray://from-variable:10001")
    env = {ENV_VAR: "from-env:6379"}
    assert resolve_ray_address("ray://param:10001", env, var) == ("ray://param:10001", "the ray_address parameter")
    assert resolve_ray_address(None, env, var) == ("from-env:6379", f"${ENV_VAR}")
    assert var.asked == []  # never asks the server when it need not
    assert resolve_ray_address("", {}, var) == ("ray://from-variable:10001", "Prefect variable ray_address")
    assert var.asked == ["ray_address"]


def test_no_address_anywhere_names_all_three_places():
    with pytest.raises(ParamsError, match=rf"pass ray_address, set \${ENV_VAR} .*prefect variable set ray_address"):
        resolve_ray_address(None, {}, variable(None))


@pytest.mark.parametrize("explicit, env, var, source", [
    ("http://head:8265", {}, None, "the ray_address parameter"),
    (None, {ENV_VAR: "head"}, None, ENV_VAR),
    (None, {}, "ray://head", "Prefect variable ray_address"),
])
def test_malformed_address_names_where_it_came_from(explicit, env, var, source):
    with pytest.raises(ParamsError, match=rf"{source}.*is not local, auto, host:port or ray://host:port"):
        resolve_ray_address(explicit, env, variable(var))


def test_flow_runs_the_data_stages_on_the_resolved_cluster(monkeypatch):
    calls = []
    monkeypatch.setattr(ray_cluster, "lmpipe", lambda **kw: calls.append(kw) or {"clean": "ran"})
    monkeypatch.setattr(ray_cluster, "prefect_variable", variable("10.0.0.5:6379"))
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert ray_cluster.data_on_ray.fn() == {"clean": "ran"}
    (call,) = calls
    assert call["stages"] == ["ingest", "clean", "tokenize"]
    assert call["params"] == {"clean.engine": "ray", "clean.ray_address": "10.0.0.5:6379",
                              "tokenize.engine": "ray", "tokenize.ray_address": "10.0.0.5:6379"}
    assert validate_overrides(call["params"])  # what the lmpipe flow checks before any stage


def test_deployment_points_at_the_flow():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (dep,) = [d for d in spec["deployments"] if d["name"] == "data-ray"]
    path, name = dep["entrypoint"].split(":")
    assert path == "pipelines/ray_cluster.py" and getattr(ray_cluster, name) is ray_cluster.data_on_ray
    env = dep["work_pool"]["job_variables"]["env"]
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["HF_HUB_OFFLINE"] == "1"
