"""Stage check_params: validate params.yaml on every `dvc repro`, before any other stage runs.

DVC reruns a stage only when a section it tracks changes, so without this stage a misspelled
section (`pretrian:`) or an unknown top-level key would leave every stage "up to date" and the
change would silently do nothing. dvc.yaml marks this stage `always_changed` and ingest depends
on its output, so it runs first on every repro and a bad file stops the DAG before any output is
deleted. It imports only the schema (pydantic + yaml): the no-op repro stays fast.

    python -m stages.check_params             # what dvc repro runs
    python -m stages.check_params --defaults  # every section with its defaults, as YAML
"""

from __future__ import annotations

import argparse
import sys

import yaml

from lmpipe import paths
from lmpipe.io import BAD_INPUT, run_stage, write_json
from lmpipe.params import Params, ParamsError, read_params


def tracked_keys_missing(params: Params) -> list[str]:
    """Keys that dvc.yaml's stages track but the validated params do not have: a dvc.yaml that
    drifted from the schema would otherwise fail only when DVC reaches that stage."""
    stages = yaml.safe_load(paths.DVC_YAML.read_text(encoding="utf-8")).get("stages", {})
    values = params.model_dump(mode="json")
    missing = []
    for name, spec in stages.items():
        for key in spec.get("params", []):
            node = values
            for part in str(key).split("."):
                node = node.get(part) if isinstance(node, dict) else None
                if node is None:
                    missing.append(f"{name}: {key}")
                    break
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description="Validate params.yaml against the typed schema.")
    parser.add_argument("--defaults", action="store_true", help="print every section with its defaults")
    args = parser.parse_args()
    if args.defaults:
        print(yaml.safe_dump(Params().model_dump(mode="json"), sort_keys=False), end="")
        return
    try:
        params = read_params(paths.PARAMS)
    except ParamsError as err:
        print(f"error: {paths.PARAMS}: {err}", file=sys.stderr)
        raise SystemExit(BAD_INPUT) from None
    if missing := tracked_keys_missing(params):
        print(f"error: dvc.yaml tracks params the schema does not have: {', '.join(missing)}", file=sys.stderr)
        raise SystemExit(BAD_INPUT)
    # Constant content while the file is valid: downstream stages depend on this output, and a
    # value that changed with every params edit would rerun the whole DAG for any edit.
    write_json(paths.quality_file("params"), {"stage": "check_params", "passed": True, "file": str(paths.PARAMS)})


if __name__ == "__main__":
    run_stage(main)
