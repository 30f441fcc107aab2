"""Turn pydantic errors into `{"field": "rules[0].notify", "message": ...}` items: one format for 422s and config."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, TypedDict

from pydantic import ValidationError
from pydantic_core import ErrorDetails

# Errors raised by a model-level validator carry no location; name the field they are about.
_FIELD_OF_MODEL_ERROR = {"missing_generation_field": "attempts"}


class FieldProblem(TypedDict):
    field: str
    message: str


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


def dotted_path(loc: Sequence[int | str]) -> str:
    """('rules', 0, 'notify') -> 'rules[0].notify'; a key that is not a plain name is quoted:
    `targets["my target"]`, `["\\r"]`, so a problem always fits on its one line."""
    path = ""
    for part in loc:
        # pydantic's marker for a bad mapping key (the key itself is the path), and the tags of our
        # discriminated unions ("[mapping]": which form of a value was being checked) are not config keys.
        if isinstance(part, str) and part.startswith("[") and part.endswith("]"):
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _PLAIN_KEY.fullmatch(part):
            path += f"[{json.dumps(part)}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _message(error: ErrorDetails, echo_input: bool) -> str:
    message = error["msg"]
    if (echo_input and error["type"] in ("literal_error", "enum")) or error["type"].startswith("string_"):
        given = error.get("input")
        if isinstance(given, str | int | float):
            return f"{message} (got {_short(given)})"
    return message


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def field_problems(exc: ValidationError, *, echo_input: bool = False) -> list[FieldProblem]:
    """Every error, by dotted path. `echo_input` quotes short bad values: for payloads, never for config (secrets)."""
    problems: list[FieldProblem] = []
    for error in exc.errors(include_url=False):
        field = dotted_path(error["loc"]) or _FIELD_OF_MODEL_ERROR.get(error["type"], "(root)")
        problems.append({"field": field, "message": _message(error, echo_input)})
    return problems
