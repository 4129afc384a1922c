"""Pin the dependency closure of pyproject.toml (runtime + dev extra) from the installed .venv.

Only packages reachable from the declared dependencies are written, so tools installed by hand
(e.g. the bench-only datatrove) never leak into requirements.lock. torch is written as 2.13.0,
the CPU wheel on the build machines (the installed one reports 2.13.0+cpu).
"""

import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> None:
    project = tomllib.load(open("pyproject.toml", "rb"))["project"]
    todo = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    pinned: dict[str, str] = {}
    while todo:
        req = todo.pop()
        name = norm(req.name)
        if name in pinned:
            continue
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            sys.exit(f"error: {req.name} is declared but not installed in this environment")
        pinned[name] = dist.version
        for spec in dist.requires or []:
            dep = Requirement(spec)
            if dep.marker is None or dep.marker.evaluate({"extra": ""}):
                todo.append(dep)
    pinned["torch"] = "2.13.0"
    for name, version in sorted(pinned.items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
