"""The code's layout is a contract: the folder listing is the DAG, every dependency is declared.

- `stages/` holds exactly the modules that dvc.yaml runs;
- every in-project module a stage imports (transitively, lazy imports included) is covered by that
  stage's deps in dvc.yaml, so editing it makes `dvc repro` rerun the stage;
- no import cycle anywhere (a module that imports itself counts);
- no project file over 500 lines and no function over 80 lines outside tests/ and bench/;
- nothing in the repository refers to a document that is not in it.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lmpipe", "stages", "pipelines")
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project packages."""
    mods = {}
    for rel in tracked_files():
        if rel.endswith(".py") and rel.split("/")[0] in PACKAGES:
            parts = rel[:-3].split("/")
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = ROOT / rel
    return mods


def imports_of(path: Path, modules: dict[str, Path], importer: str = "") -> set[str]:
    """In-project modules imported anywhere in the file (top level or inside functions), which is
    the module `importer`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports pkg and, when mod is a module, pkg.mod
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                prefix = ".".join(parts[:i])
                # ...except a package that holds the importer (or is it): Python has started that
                # package's __init__ before the importer runs, so reaching through it to a sibling
                # adds no edge. Importing names from the package itself still does.
                holds_importer = importer == prefix or importer.startswith(prefix + ".")
                if prefix in modules and not (holds_importer and i < len(parts)):
                    found.add(prefix)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules, name) for name, path in modules.items()}


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo.extend(graph.get(mod, ()))
    return seen


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(mod: str, stack: list[str]) -> list[str] | None:
        state[mod] = 1
        for dep in sorted(graph.get(mod, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep] if dep in stack else [mod, dep]
            if dep not in state and (cycle := visit(dep, stack + [dep])):
                return cycle
        state[mod] = 2
        return None

    for mod in sorted(graph):
        if mod not in state and (cycle := visit(mod, [mod])):
            return cycle
    return None


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_module(cmd: str) -> str:
    match = re.search(r"python -m (stages\.\w+)", cmd)
    assert match, f"stage command {cmd!r} does not run a stages.<name> module"
    return match.group(1)


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


def test_stages_folder_holds_exactly_the_dvc_stage_modules():
    run = {stage_module(s["cmd"]) for s in dvc_stages().values()}
    on_disk = {name for name in project_modules() if name.startswith("stages.")}
    assert on_disk == run, f"not run by dvc.yaml: {sorted(on_disk - run)}; missing: {sorted(run - on_disk)}"


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_every_in_project_import_of_a_stage_is_in_its_deps(stage):
    spec = dvc_stages()[stage]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])]
    graph, modules = import_graph(), project_modules()
    needed = closure(graph, stage_module(spec["cmd"]))
    # an empty __init__.py changes nothing when edited... until it is not empty: then it counts
    missing = sorted(modules[m].relative_to(ROOT).as_posix() for m in needed
                     if modules[m].stat().st_size and not covered(modules[m], deps))
    assert not missing, f"stage {stage} imports {missing} but dvc.yaml does not list them in its deps"


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_package_reaching_its_own_submodules_is_no_cycle_but_importing_its_names_back_is(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.a import f\n")
    (pkg / "a.py").write_text("from pkg.b import g\n")
    (pkg / "b.py").write_text("g = 1\n")
    modules = {"pkg": pkg / "__init__.py", "pkg.a": pkg / "a.py", "pkg.b": pkg / "b.py"}
    graph = {name: imports_of(path, modules, name) for name, path in modules.items()}
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": set()}
    assert find_cycle(graph) is None
    (pkg / "b.py").write_text("from pkg import f\n")  # reads a name the package __init__ defines
    graph = {name: imports_of(path, modules, name) for name, path in modules.items()}
    assert find_cycle(graph) == ["pkg", "pkg.a", "pkg.b", "pkg"]


def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) is not None
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def code_files() -> list[Path]:
    return [ROOT / f for f in tracked_files()
            if f.endswith(".py") and not f.startswith(("tests/", "bench/"))]


def test_no_file_over_500_lines():
    long = {p.relative_to(ROOT).as_posix(): n for p in code_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES}
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_over_80_lines():
    long = {}
    for path in code_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT).as_posix()}:{node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_reference_to_documents_outside_the_repository():
    # The team's design notes live outside the repository; the project must stand on its own files.
    pattern = re.compile(r"DESIGN\.md|\.\./shared/|shared/seed")
    offenders = []
    for rel in tracked_files():
        path = ROOT / rel
        if rel == "tests/test_layout.py" or path.suffix not in {".py", ".md", ".yaml", ".yml", ".toml", ""}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        offenders += [f"{rel}:{i}" for i, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not offenders, f"references to documents outside the repository: {offenders}"
