"""Healthcheck specs: exactly one of test, http or tcp, plus shared timings."""

import pytest
from pydantic import ValidationError

from flotilla.model.specs import ServiceSpec, canonical

TIMING_DEFAULTS = {"interval": 30.0, "timeout": 30.0, "retries": 3, "start_period": 0.0}


def healthcheck(hc):
    spec = ServiceSpec.model_validate(
        {"name": "web", "task": {"container": {"image": "web:1", "healthcheck": hc}}})
    return canonical(spec)["task"]["container"]["healthcheck"]


def refused(hc):
    """(dotted field path, message) of the first error."""
    with pytest.raises(ValidationError) as info:
        healthcheck(hc)
    first = info.value.errors()[0]
    return ".".join(str(p) for p in first["loc"]), first["msg"]


def test_command_form_as_before():
    assert healthcheck({"test": ["CMD-SHELL", "true"], "interval": "5s"}) == {
        "test": ["CMD-SHELL", "true"], "http": None, "tcp": None,
        **TIMING_DEFAULTS, "interval": 5.0}
    assert healthcheck({"test": ["NONE"]})["test"] == ["NONE"]


def test_http_form_and_its_defaults():
    assert healthcheck({"http": {"port": 80}}) == {
        "test": None, "http": {"port": 80, "path": "/", "status": ["200-399"]}, "tcp": None,
        **TIMING_DEFAULTS}


def test_http_form_with_path_status_and_timings():
    hc = healthcheck({"http": {"port": 8080, "path": "/health?deep=1", "status": [200, "204", "300-302"]},
                      "interval": "1s", "timeout": "500ms", "retries": 2, "start_period": "1m"})
    assert hc["http"] == {"port": 8080, "path": "/health?deep=1", "status": ["200", "204", "300-302"]}
    assert (hc["interval"], hc["timeout"], hc["retries"], hc["start_period"]) == (1.0, 0.5, 2, 60.0)
    assert healthcheck({"http": {"port": 80, "status": 204}})["http"]["status"] == ["204"]
    assert healthcheck({"http": {"port": 80, "status": "200-299"}})["http"]["status"] == ["200-299"]


def test_tcp_form():
    assert healthcheck({"tcp": {"port": 5432}, "retries": 5}) == {
        "test": None, "http": None, "tcp": {"port": 5432}, **TIMING_DEFAULTS, "retries": 5}


def test_the_stored_form_validates_again():
    for hc in ({"http": {"port": 80}}, {"tcp": {"port": 1}}, {"test": ["CMD", "true"]}):
        stored = healthcheck(hc)
        assert healthcheck(stored) == stored


@pytest.mark.parametrize("hc", [{}, {"interval": "5s"}, {"test": None, "http": None, "tcp": None}])
def test_a_form_is_required(hc):
    field, msg = refused(hc)
    assert field == "task.container.healthcheck"
    assert "one of test, http or tcp is required" in msg


@pytest.mark.parametrize("hc, field, other", [
    ({"test": ["CMD", "true"], "http": {"port": 80}}, "http", "test"),
    ({"test": ["CMD", "true"], "tcp": {"port": 80}}, "tcp", "test"),
    ({"http": {"port": 80}, "tcp": {"port": 80}}, "tcp", "http"),
])
def test_two_forms_are_refused(hc, field, other):
    path, msg = refused(hc)
    assert path == f"task.container.healthcheck.{field}"
    assert f"only one of test, http or tcp may be set ({other} is set too)" in msg


@pytest.mark.parametrize("hc, field, text", [
    ({"http": {"port": 0}}, "http.port", "greater than or equal to 1"),
    ({"http": {"port": 65536}}, "http.port", "less than or equal to 65535"),
    ({"http": {}}, "http.port", "required"),
    ({"http": {"port": 80, "path": "health"}}, "http.path", "must start with '/'"),
    ({"http": {"port": 80, "path": "/a b"}}, "http.path", "spaces"),
    ({"http": {"port": 80, "status": [99]}}, "http.status", "is not a code"),
    ({"http": {"port": 80, "status": ["300-200"]}}, "http.status", "is not a code"),
    ({"http": {"port": 80, "status": ["2xx"]}}, "http.status", "is not a code"),
    ({"http": {"port": 80, "status": []}}, "http.status", "at least 1"),
    ({"tcp": {"port": 0}}, "tcp.port", "greater than or equal to 1"),
    ({"tcp": {}}, "tcp.port", "required"),
    ({"test": ["SHELL", "x"]}, "test", "must start with CMD"),
    ({"test": ["CMD"]}, "test", "needs a command"),
    ({"test": []}, "test", "at least 1"),
    ({"tcp": {"port": 1}, "interval": 0}, "interval", "between"),
])
def test_invalid_fields_are_named(hc, field, text):
    path, msg = refused(hc)
    assert path == f"task.container.healthcheck.{field}"
    assert text in msg


@pytest.mark.parametrize("hc, field", [
    ({"tcp": {"port": 1}, "command": ["x"]}, "command"),
    ({"tcp": {"port": 1, "host": "db"}}, "tcp.host"),
    ({"http": {"port": 1, "method": "HEAD"}}, "http.method"),
])
def test_unknown_keys_are_refused(hc, field):
    path, msg = refused(hc)
    assert path == f"task.container.healthcheck.{field}"
    assert "Extra inputs are not permitted" in msg
