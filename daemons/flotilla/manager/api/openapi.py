"""The API contract: every ``/v1`` view declares its request and response
models with :func:`doc`, and the OpenAPI 3.1 document served at
``/v1/openapi.json`` is generated from those declarations and the pydantic
models themselves (one definition, used both to validate and to describe).
"""

from __future__ import annotations

import re
from typing import Any, Optional

from flask import Blueprint, current_app
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema

from ... import __version__
from .common import json_response, policy

bp = Blueprint("openapi", __name__, url_prefix="/v1")

# Status codes every authenticated view may answer with, and why.
COMMON_ERRORS = {
    "400": "Invalid request: the error names the field.",
    "401": "No valid client certificate from this cluster.",
    "403": "The certificate's role may not use this endpoint.",
    "404": "No such object.",
    "405": "Method not allowed.",
    "409": "Conflict with the current state.",
    "413": "Request body too large.",
    "503": "No leader, or the outcome of a write is unknown; retry.",
}
# ...and those that take a body.
BODY_ERRORS = {
    "415": "The body is not sent as application/json.",
}
# ...and the control writes, which take an Idempotency-Key.
WRITE_ERRORS = {
    "422": "The Idempotency-Key was already used for a different request.",
}


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: Optional[str] = None


class Error(BaseModel):
    """The one error shape of the API."""
    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail


class Doc:
    def __init__(self, summary, response, body, query, status, content_type, tags):
        self.summary = summary
        self.response = response
        self.body = body
        self.query = query
        self.status = status
        self.content_type = content_type
        self.tags = tags


def doc(summary: str, *, response: Any = None, body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None, status: int = 200,
        content_type: str = "application/json", tags: tuple[str, ...] = ()):
    """Describe a view for the OpenAPI document.

    ``response`` is a pydantic model, ``list[Model]``, or None for a free-form
    object; ``body`` and ``query`` are the models the view validates with
    ``parse_body`` and ``parse_query``.
    """

    def deco(fn):
        fn.flotilla_doc = Doc(summary, response, body, query, status, content_type, tags)
        return fn

    return deco


_RULE_ARG = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def _schema_ref(tp, defs_models: list) -> dict:
    origin = getattr(tp, "__origin__", None)
    if origin is list:
        (inner,) = tp.__args__
        return {"type": "array", "items": _schema_ref(inner, defs_models)}
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        defs_models.append(tp)
        return {"$ref": f"#/components/schemas/{tp.__name__}"}
    return {"type": "object"}


def build(app) -> dict:
    """The OpenAPI document for every documented view of ``app``."""
    paths: dict[str, dict] = {}
    models: list[type[BaseModel]] = [Error]
    query_models: list[tuple[dict, type[BaseModel]]] = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        d = getattr(view, "flotilla_doc", None)
        if d is None:
            continue
        path = _RULE_ARG.sub(r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            op_id = rule.endpoint.replace(".", "_") + "_" + method.lower()
            op: dict[str, Any] = {"summary": d.summary, "operationId": op_id}
            if d.tags:
                op["tags"] = list(d.tags)
            params = [{"name": name, "in": "path", "required": True,
                       "schema": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}}
                      for name in _RULE_ARG.findall(rule.rule)]
            if d.query is not None:
                query_models.append((op, d.query))
            if params:
                op["parameters"] = params
            if d.body is not None:
                op["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": _schema_ref(d.body, models)}}}
            responses: dict[str, Any] = {}
            if d.content_type == "application/json":
                schema = (_schema_ref(d.response, models) if d.response is not None
                          else {"type": "object"})
            else:
                schema = {"type": "string"}
            responses[str(d.status)] = {"description": "Success.",
                                        "content": {d.content_type: {"schema": schema}}}
            pol = getattr(view, "flotilla_policy", "control")
            errors = dict(COMMON_ERRORS, **(BODY_ERRORS if d.body is not None else {}),
                          **(WRITE_ERRORS if method != "GET" and pol == "control" else {}))
            for code, why in sorted(errors.items()):
                if pol == "public" and code in ("401", "403"):
                    continue
                responses[code] = {"description": why, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            op["responses"] = responses
            if pol != "public":
                op["security"] = [{"mutualTLS": []}]
            paths.setdefault(path, {})[method.lower()] = op
    _, defs = models_json_schema([(m, "serialization") for m in dict.fromkeys(models)],
                                 ref_template="#/components/schemas/{model}")
    schemas = defs.get("$defs", {})
    for op, model in query_models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        required = set(schema.get("required", []))
        params = op.setdefault("parameters", [])
        for name, prop in schema.get("properties", {}).items():
            prop = {k: v for k, v in prop.items() if k not in ("title", "default")}
            if "anyOf" in prop:   # Optional[X] -> X: an absent parameter is the None
                non_null = [s for s in prop["anyOf"] if s.get("type") != "null"]
                if len(non_null) == 1:
                    prop = dict(prop, **non_null[0])
                    del prop["anyOf"]
            params.append({"name": name, "in": "query", "required": name in required,
                           "schema": prop})
    return {
        "openapi": "3.1.0",
        "info": {"title": "Flotilla manager API", "version": __version__,
                 "description": "Every request is authenticated with a client certificate "
                                "from the cluster's CA (mutual TLS)."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"mutualTLS": {"type": "mutualTLS"}},
        },
    }


@bp.get("/openapi.json")
@policy("any", local=True)
@doc("This document.", tags=("meta",))
def openapi():
    app = current_app
    cached = app.extensions.get("flotilla.openapi")
    if cached is None:
        cached = app.extensions["flotilla.openapi"] = build(app)
    return json_response(cached)
