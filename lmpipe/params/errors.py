"""One-line wording of params errors: which key, what was wrong, what was probably meant.

Kept apart from the schema (lmpipe.params) so that the schema reads as a reference of knobs.
"""

from __future__ import annotations

import difflib

import yaml
from pydantic import BaseModel, ValidationError


def _known_keys(loc: tuple, root: type[BaseModel]) -> list[str]:
    """The keys the schema allows next to the one at `loc` (for a "did you mean" hint)."""
    model = root
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _clean_loc(loc: tuple) -> tuple:
    # pydantic appends the union member it tried ("int", "literal['auto']") to the location
    return tuple(p for p in loc if not (isinstance(p, str) and (p in {"int", "float", "str", "bool"}
                                                               or p.startswith(("literal[", "list[", "dict[")))))


def describe(err: ValidationError, root: type[BaseModel]) -> str:
    """One line for the first problem pydantic found, naming the key (and the nearest valid key)."""
    errors = err.errors()
    first, loc = errors[0], _clean_loc(errors[0]["loc"])
    key = ".".join(str(part) for part in loc) or "<root>"
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _known_keys(loc, root), n=1)
        hint = f" (did you mean '{'.'.join(map(str, loc[:-1] + (close[0],)))}'?)" if close else ""
        return f"unknown key '{key}'{hint}"
    got = first.get("input")
    got = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    others = {_clean_loc(e["loc"]) for e in errors} - {loc}
    more = f" (+{len(others)} more)" if others else ""
    if len({_clean_loc(e["loc"]) for e in errors}) == 1 and len(errors) > 1:  # a union: say what is allowed
        msg = " or ".join(dict.fromkeys(e["msg"].removeprefix("Input should be ") for e in errors))
        msg = f"Input should be {msg}"
    else:
        msg = first["msg"]
    msg = msg.removeprefix("Value error, ")
    if "(got " in msg:  # our own validators already show the value
        got = ""
    where = f"'{key}': " if loc else ""  # cross-section rules name their keys themselves
    return f"{where}{msg}{got}{more}"


def describe_yaml_error(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None:  # e.g. an unclosed [ or { : say where it was opened
        problem += f" ({context} at line {start.line + 1}, column {start.column + 1})"
    return f"not valid YAML{where}: {problem}"
