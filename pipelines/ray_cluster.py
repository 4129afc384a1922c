"""The data stages against a Ray cluster, as a Prefect flow: `data_on_ray` runs ingest, clean and
tokenize (and what they depend on) through the lmpipe flow with `clean.engine` and
`tokenize.engine` set to ray and both stages' `ray_address` pointed at the cluster.

Which cluster, first found wins:
  1. the flow's `ray_address` parameter (a deployment's parameters or a run's);
  2. the worker environment's LMPIPE_RAY_ADDRESS (prefect.yaml job_variables.env);
  3. the Prefect variable `ray_address` (`prefect variable set ray_address ray://head:10001`),
so one deployment serves every environment and a cluster moves by changing one variable.
The address is checked against the params schema before any stage runs; none found is one error
naming all three places.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from prefect import flow

from lmpipe.params import CleanParams, ParamsError
from pipelines.flow import lmpipe

ENV_VAR = "LMPIPE_RAY_ADDRESS"
PREFECT_VARIABLE = "ray_address"
DATA_STAGES = ["ingest", "clean", "tokenize"]


def prefect_variable(name: str) -> str | None:
    from prefect.variables import Variable

    value = Variable.get(name, default=None)
    return None if value is None else str(value)


def resolve_ray_address(explicit: str | None, env: Mapping[str, str] = os.environ,
                        variable: Callable[[str], str | None] | None = None) -> tuple[str, str]:
    """(address, where it came from): the parameter, else the environment, else the Prefect variable
    (read with `variable`, default prefect_variable)."""
    for address, source in ((explicit, "the ray_address parameter"), (env.get(ENV_VAR), f"${ENV_VAR}")):
        if address:
            return _checked(address, source), source
    address = (variable or prefect_variable)(PREFECT_VARIABLE)
    if address:
        return _checked(address, f"Prefect variable {PREFECT_VARIABLE}"), f"Prefect variable {PREFECT_VARIABLE}"
    raise ParamsError(f"no Ray cluster address: pass ray_address, set ${ENV_VAR} in the work pool's job variables"
                      f" or `prefect variable set {PREFECT_VARIABLE} ray://head:10001`")


def _checked(address: str, source: str) -> str:
    try:
        return CleanParams(ray_address=address).ray_address
    except ValueError:
        raise ParamsError(f"{source}: ray_address {address!r} is not local, auto, host:port or ray://host:port") from None


def ray_overrides(address: str) -> dict[str, str]:
    return {"clean.engine": "ray", "clean.ray_address": address,
            "tokenize.engine": "ray", "tokenize.ray_address": address}


@flow(name="lmpipe-data-ray", log_prints=True)
def data_on_ray(ray_address: str | None = None, stages: list[str] | None = None, force: bool = False,
                experiment: str | None = None) -> dict:
    """`stages` (default: ingest, clean, tokenize) and their upstream, on the Ray cluster that
    resolve_ray_address finds; the run is saved as a DVC experiment like any lmpipe run with params."""
    address, source = resolve_ray_address(ray_address)
    print(f"Ray cluster {address} (from {source})")
    return lmpipe(stages=stages or DATA_STAGES, force=force, params=ray_overrides(address), experiment=experiment)
