"""Prometheus metrics of this manager (answered by any manager), and the
request hooks that time every API request."""

from __future__ import annotations

import time

from flask import Blueprint, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST

from .common import manager, policy
from .openapi import doc

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
@policy("any", local=True)
@doc("Prometheus metrics of this manager.", content_type="text/plain", tags=("meta",))
def metrics():
    return current_app.response_class(manager().metrics.render(),
                                      content_type=CONTENT_TYPE_LATEST)


def start_timer():
    """``before_request`` hook; registered first, so that requests refused
    or forwarded by later hooks are timed too."""
    g.request_started = time.monotonic()


def observe_request(response):
    """``after_request`` hook: records the request's duration."""
    started = g.pop("request_started", None)
    if started is not None:
        manager().metrics.observe_request(request.method, request.endpoint,
                                          response.status_code, time.monotonic() - started)
    return response
