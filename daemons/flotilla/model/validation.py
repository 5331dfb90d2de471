"""Validation without a web framework: the base of every model, the
annotated types fields share, the body of every error
(``{"error": {"code", "message", "field"}}``), strict JSON, and pydantic
errors turned into the field path the client sent. Used by the API's views
(whose one response helper, ``manager/api/common.py``, sends the error
body), by the dispatcher's front for agents, which runs outside Flask, and
by the CLI's Compose translator."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, NoReturn, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints, ValidationError
from pydantic_core import ErrorDetails

from .names import HOSTNAME, LABEL_KEY, OBJECT_NAME


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def error_body(code: str, message: str, field: str | None = None) -> dict:
    body = {"error": {"code": code, "message": message}}
    if field is not None:
        body["error"]["field"] = field
    return body


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)


# Free text (environment entries, arguments, label values) is kept exactly as
# sent: only names and identifiers lose surrounding whitespace.
Text = Annotated[str, StringConstraints(strip_whitespace=False)]



def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """``labels`` if every key is a label key and every value fits; else a
    ValueError saying which does not (at most 64 labels)."""
    if len(labels) > 64:
        raise ValueError("at most 64 labels")
    for k, v in labels.items():
        if not LABEL_KEY.match(k):
            raise ValueError(f"invalid label key {k[:40]!r}")
        if len(v) > 1024:
            raise ValueError(f"label {k} is longer than 1024 characters")
    return labels


def _object_name(v: str) -> str:
    if not OBJECT_NAME.match(v):
        raise ValueError("must be 1-64 characters: letters, digits, '_', '.', '-'")
    return v


def _hostname(v: str) -> str:
    if v and not HOSTNAME.match(v):
        raise ValueError("not a valid hostname")
    return v


# The name of a config or an admin bundle.
ObjectName = Annotated[str, StringConstraints(max_length=64), AfterValidator(_object_name)]
# A node's hostname, as at join and registration ("" when not given).
Hostname = Annotated[str, StringConstraints(max_length=253), AfterValidator(_hostname)]


# What msgpack (the store's encoding) and every JSON reader can carry.
INT_MIN, INT_MAX = -(2 ** 63), 2 ** 64 - 1


class _Constant(ValueError):
    pass


def _refuse_constant(name: str) -> NoReturn:
    raise _Constant(name)


def decode_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8 only, no NaN or Infinity."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "request body is not valid UTF-8") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except _Constant as exc:
        raise ApiError(400, "invalid_json",
                       f"request body is not valid JSON ({exc} is not a JSON number)") from None
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "request body is not valid JSON") from None


def check_values(data: Any) -> None:
    """Refuse numbers and strings no field may hold, wherever they are:
    integers beyond 64 bits, infinite floats (1e999), unpaired surrogates."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        problem = None
        if isinstance(value, dict):
            stack.extend((v, path + (k,)) for k, v in value.items())
            continue
        if isinstance(value, list):
            stack.extend((v, path + (i,)) for i, v in enumerate(value))
            continue
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            if not INT_MIN <= value <= INT_MAX:
                problem = "number out of range (integers must fit in 64 bits)"
        elif isinstance(value, float):
            if not math.isfinite(value):
                problem = "number out of range"
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                problem = "string is not valid Unicode (unpaired surrogate)"
        if problem:
            field = ".".join(str(p) for p in path) or None
            raise ApiError(400, "invalid", f"{field}: {problem}" if field else problem,
                           field=field)


def _field_path(error: ErrorDetails, data: Any) -> str | None:
    """The dotted path of an error within what the client sent. pydantic
    also names the members of a union it tried (``memory.str``); those name
    no place in the body and are left out."""
    parts: list[str] = []
    cur = data
    loc = error["loc"]
    for i, elem in enumerate(loc):
        if isinstance(cur, dict) and isinstance(elem, str) and elem in cur:
            cur = cur[elem]
        elif isinstance(cur, list) and isinstance(elem, int) and 0 <= elem < len(cur):
            cur = cur[elem]
        elif error["type"] == "missing" and i == len(loc) - 1:
            pass
        else:
            break
        parts.append(str(elem))
    return ".".join(parts) or None


def validation_error(exc: ValidationError, data: Any, unknown: str) -> ApiError:
    errors = exc.errors()
    first = errors[0]
    field = _field_path(first, data)
    message = unknown if first["type"] == "extra_forbidden" else first["msg"]
    # A value that fits none of a union's members fails once per member:
    # say what each would have taken.
    others = [e["msg"] for e in errors[1:] if _field_path(e, data) == field
              and e["type"] != "extra_forbidden"]
    if others:
        message = " or ".join(dict.fromkeys([message] + others))
    return ApiError(400, "invalid", f"{field}: {message}" if field else message, field=field)


_M = TypeVar("_M", bound=Model)


def validate(model: type[_M], raw: bytes) -> _M:
    """``raw`` (a JSON object) validated by ``model``, or ApiError 400."""
    if not raw.strip():
        raise ApiError(400, "invalid_json", "a request body (a JSON object) is required")
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    check_values(data)
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise validation_error(exc, data, "unknown field") from None
