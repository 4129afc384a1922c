"""The DVC DAG as plain data: stages from dvc.yaml, their edges, topological order, metrics files.

The Prefect flows read the DAG from dvc.yaml rather than keeping a second, hand-written list that
could drift from it. A stage B depends on A when one of B's deps equals, contains or lies inside
one of A's outs — the same rule DVC applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    metrics: tuple[str, ...]


def _paths(entries) -> tuple[str, ...]:
    """dvc.yaml lists entries as plain strings or as {path: options} mappings."""
    out = []
    for entry in entries or []:
        out.extend(entry.keys() if isinstance(entry, dict) else [entry])
    return tuple(out)


def _overlaps(a: str, b: str) -> bool:
    pa, pb = PurePosixPath(a), PurePosixPath(b)
    return pa == pb or pa in pb.parents or pb in pa.parents


def read_stages(dvc_yaml: Path = Path("dvc.yaml")) -> dict[str, Stage]:
    spec = yaml.safe_load(dvc_yaml.read_text())
    stages = {}
    for name, s in spec["stages"].items():
        metrics = _paths(s.get("metrics"))
        stages[name] = Stage(name, s["cmd"], _paths(s.get("deps")),
                             _paths(s.get("outs")) + metrics + _paths(s.get("plots")), metrics)
    return stages


def upstream(stages: dict[str, Stage]) -> dict[str, set[str]]:
    """stage -> the stages whose outputs it reads directly."""
    return {
        b.name: {a.name for a in stages.values() if a.name != b.name
                 and any(_overlaps(d, o) for d in b.deps for o in a.outs)}
        for b in stages.values()
    }


def topological_order(stages: dict[str, Stage]) -> list[str]:
    """Kahn's algorithm, ties broken by dvc.yaml order so the run order is stable."""
    parents = upstream(stages)
    order, done = [], set()
    while len(order) < len(stages):
        ready = [n for n in stages if n not in done and parents[n] <= done]
        if not ready:
            raise ValueError(f"dvc.yaml has a cycle among {sorted(set(stages) - done)}")
        order.append(ready[0])
        done.add(ready[0])
    return order


def with_upstream(selected: list[str], stages: dict[str, Stage]) -> list[str]:
    """The selected stages plus everything they (transitively) depend on, in run order."""
    unknown = [s for s in selected if s not in stages]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {list(stages)}")
    parents, needed, todo = upstream(stages), set(), list(selected)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(parents[name])
    return [n for n in topological_order(stages) if n in needed]
