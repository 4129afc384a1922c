"""The DVC DAG as plain data: stages from dvc.yaml, their edges, topological order, metrics files.

The Prefect flows read the DAG from dvc.yaml rather than keeping a second, hand-written list that
could drift from it. A stage B depends on A when one of B's deps equals, contains or lies inside
one of A's outs — the same rule DVC applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

# A stage that declares this param (or its section) may put work on a GPU.
DEVICE_PARAM = "pretrain.device"


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    metrics: tuple[str, ...]
    params: tuple[str, ...] = ()
    untracked: tuple[str, ...] = ()  # outs with cache: false (git's business, not DVC's cache)

    @property
    def uses_device(self) -> bool:
        """True when the stage reads `pretrain.device`, i.e. may run on a GPU."""
        return any(DEVICE_PARAM == p or DEVICE_PARAM.startswith(p + ".") for p in self.params)


def _paths(entries) -> tuple[str, ...]:
    """dvc.yaml lists entries as plain strings or as {path: options} mappings."""
    out = []
    for entry in entries or []:
        out.extend(entry.keys() if isinstance(entry, dict) else [entry])
    return tuple(out)


def _uncached(entries) -> tuple[str, ...]:
    return tuple(path for entry in entries or [] if isinstance(entry, dict)
                 for path, opts in entry.items() if (opts or {}).get("cache") is False)


def _params(entries) -> tuple[str, ...]:
    """`- seed` or `- params.yaml: [a, b]` (a file-scoped list) -> dotted keys."""
    out = []
    for entry in entries or []:
        if isinstance(entry, dict):
            for keys in entry.values():
                out.extend(keys or [])
        else:
            out.append(entry)
    return tuple(out)


def _overlaps(a: str, b: str) -> bool:
    pa, pb = PurePosixPath(a), PurePosixPath(b)
    return pa == pb or pa in pb.parents or pb in pa.parents


def read_stages(dvc_yaml: Path = Path("dvc.yaml")) -> dict[str, Stage]:
    spec = yaml.safe_load(Path(dvc_yaml).read_text()) or {}
    stages = {}
    for name, s in (spec.get("stages") or {}).items():
        if "foreach" in s or "matrix" in s:
            raise ValueError(f"stage '{name}': foreach/matrix stages are not supported by the flow")
        cmd = s["cmd"] if isinstance(s["cmd"], str) else " && ".join(s["cmd"])
        metrics = _paths(s.get("metrics"))
        stages[name] = Stage(
            name, cmd, _paths(s.get("deps")),
            _paths(s.get("outs")) + metrics + _paths(s.get("plots")), metrics, _params(s.get("params")),
            _uncached(s.get("outs")) + _uncached(s.get("metrics")) + _uncached(s.get("plots")),
        )
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


def downstream(name: str, stages: dict[str, Stage]) -> list[str]:
    """Every stage that (transitively) reads `name`'s outputs, in run order."""
    children: dict[str, set[str]] = {n: set() for n in stages}
    for child, parents in upstream(stages).items():
        for parent in parents:
            children[parent].add(child)
    found, todo = set(), [name]
    while todo:
        for child in children[todo.pop()]:
            if child not in found:
                found.add(child)
                todo.append(child)
    return [n for n in topological_order(stages) if n in found]
