"""Service templates ({{.Node.ID}}, {{.Task.Slot}}...): parsing, expansion per
task, and the spec checks that refuse what a node could not expand."""

import json

import pytest

from flotilla.common import template
from flotilla.common.template import TemplateError
from flotilla.model.validation import ApiError, validate
from flotilla.model.specs import ServiceSpec

TASK = {"id": "t123", "service_id": "s456", "service_name": "web", "slot": 2}
CTX = template.context(TASK, "n789", "node-a", {"os": "linux", "arch": "amd64"})


@pytest.mark.parametrize("text, expanded", [
    ("{{.Node.ID}}", "n789"),
    ("{{ .Node.ID }}", "n789"),
    ("{{.Service.Name}}-{{.Task.Slot}}", "web-2"),
    ("{{.Service.ID}} {{.Node.Hostname}}", "s456 node-a"),
    ("{{.Node.Platform.OS}}/{{.Node.Platform.Architecture}}", "linux/amd64"),
    ("{{.Task.ID}}", "t123"),
    ("{{.Task.Name}}", "web.2.t123"),
    ("tasks.{{.Service.Name}}", "tasks.web"),
    ("no template", "no template"),
    ("a}}b {x} {{\"{{\"}}.Node.ID}}", "a}}b {x} {{.Node.ID}}"),
    ("{{`{{.Raw}}`}}", "{{.Raw}}"),
    ('{{"}}"}}', "}}"),
    ("a  {{- .Task.Slot -}}  b", "a2b"),
    ("a {{-.Task.Slot}}", None),                   # "-." is no trim marker: a bad action
    ("x{{/* a comment */}}y", "xy"),
    ("", ""),
])
def test_expansion(text, expanded):
    if expanded is None:
        with pytest.raises(TemplateError):
            template.check(text)
        return
    template.check(text)
    assert template.expand(text, CTX) == expanded


def test_global_tasks_use_the_node_id_for_the_slot():
    task = dict(TASK, slot=None)
    ctx = template.context(task, "n789", "node-a", {})
    assert template.expand("{{.Task.Slot}} {{.Task.Name}}", ctx) == "n789 web.n789.t123"
    assert template.expand("[{{.Node.Platform.OS}}]", ctx) == "[]"


def test_service_labels_are_expanded():
    ctx = dict(CTX, **{".Service.Labels": {"b": "2", "a": "1"}})
    assert template.expand('{{index .Service.Labels "a"}}-{{index .Service.Labels "c"}}',
                           ctx) == "1-"
    assert template.expand("{{.Service.Labels}}", ctx) == "map[a:1 b:2]"     # Go's format
    for text in ('{{index .Service.Labels "a"}}', "{{.Service.Labels}}"):
        template.check(text)


def test_only_containers_that_read_service_labels_carry_them():
    assert template.uses_labels({"env": ['TIER={{index .Service.Labels "tier"}}']})
    assert template.uses_labels({"hostname": "{{ .Service.Labels }}"})
    assert template.uses_labels({"mounts": [{"source": '/d/{{index .Service.Labels "x"}}',
                                             "target": "/d"}]})
    assert not template.uses_labels({"env": ['A={{".Service.Labels"}}', "B=.Service.Labels"]})
    assert not template.uses_labels({"env": ["ID={{.Service.ID}}"], "hostname": None})
    assert not template.uses_labels({})


@pytest.mark.parametrize("text, message", [
    ("{{.Node.Name}}", "unknown template placeholder {{.Node.Name}} (use .Service.ID, "),
    ("{{.node.id}}", "unknown template placeholder {{.node.id}}"),
    ("{{.Task}}", "unknown template placeholder {{.Task}}"),
    ("{{.Node.Platform}}", "unknown template placeholder {{.Node.Platform}}"),
    ("{{}}", "unknown template placeholder {{}}"),
    ('{{printf "%s" .Node.ID}}', "only {{.Field}} placeholders are supported"),
    ("{{.Node.ID | lower}}", "unknown template placeholder {{.Node.ID | lower}}"),
    ('{{index .Node.Labels "a"}}', "index takes .Service.Labels"),
    ("x {{.Node.ID", 'unclosed template action {{.Node.ID (write {{"{{"}} for a literal {{)'),
    ('{{"abc}}', "unclosed template action"),
    ("{{`abc}}", "unclosed template action"),
    ('{{"\\q"}}', "invalid string"),
])
def test_refused(text, message):
    with pytest.raises(TemplateError) as e:
        template.check(text)
    assert message in str(e.value)


def test_sample_keeps_the_shape_of_a_path():
    assert template.sample("/data/{{.Task.Slot}}/{{\"lit\"}}") == "/data/x/lit"
    assert template.sample("{{.Service.Name}}-data") == "x-data"


def test_expand_container_touches_only_the_fields_swarm_expands():
    container = {
        "image": "img:{{.Task.Slot}}", "command": ["{{.Node.ID}}"], "args": ["{{.Node.ID}}"],
        "env": ["A={{.Node.ID}}", "B=plain", "C={{.Task.Slot}}={{.Task.Slot}}"],
        "labels": {"l": "{{.Node.ID}}"}, "hostname": "{{.Service.Name}}-{{.Task.Slot}}",
        "mounts": [{"type": "bind", "source": "/srv/{{.Node.Hostname}}",
                    "target": "/data/{{.Task.Slot}}", "readonly": True},
                   {"type": "tmpfs", "source": "", "target": "/tmp"}],
    }
    before = json.dumps(container, sort_keys=True)
    out = template.expand_container(container, CTX)
    assert json.dumps(container, sort_keys=True) == before       # the task's spec is untouched
    assert out["env"] == ["A=n789", "B=plain", "C=2=2"]
    assert out["hostname"] == "web-2"
    assert out["mounts"] == [{"type": "bind", "source": "/srv/node-a", "target": "/data/2",
                              "readonly": True},
                             {"type": "tmpfs", "source": "", "target": "/tmp"}]
    for key in ("image", "command", "args", "labels"):
        assert out[key] == container[key]


def _refusal(container):
    body = {"name": "web", "task": {"container": dict({"image": "img"}, **container)}}
    with pytest.raises(ApiError) as e:
        validate(ServiceSpec, json.dumps(body).encode())
    return e.value


@pytest.mark.parametrize("container, field, placeholder", [
    ({"env": ["A=1", "B={{.Node.Name}}"]}, "task.container.env.1", "{{.Node.Name}}"),
    ({"hostname": "{{.Service.Name}}-{{.Task.Number}}"}, "task.container.hostname",
     "{{.Task.Number}}"),
    ({"mounts": [{"type": "bind", "source": "/a/{{.Node.Host}}", "target": "/b"}]},
     "task.container.mounts.0.source", "{{.Node.Host}}"),
    ({"mounts": [{"type": "tmpfs", "target": "/b/{{.Slot}}"}]},
     "task.container.mounts.0.target", "{{.Slot}}"),
])
def test_specs_refuse_an_unknown_placeholder_naming_field_and_placeholder(container, field,
                                                                           placeholder):
    err = _refusal(container)
    assert err.status == 400 and err.field == field
    assert f"unknown template placeholder {placeholder}" in err.message


def test_specs_take_templates_where_nodes_expand_them():
    body = {"name": "web", "task": {"container": {
        "image": "img", "env": ["NODE_ID={{.Node.ID}}", "K={{ .Task.Slot }}"],
        "hostname": "{{.Service.Name}}-{{.Task.Slot}}",
        "labels": {"any": "{{.Not.Checked}}"},             # labels are kept as they are
        "mounts": [{"type": "bind", "source": "/srv/{{.Node.Hostname}}", "target": "/data"},
                   {"type": "volume", "source": "data-{{.Task.Slot}}", "target": "/v"}]}}}
    spec = validate(ServiceSpec, json.dumps(body).encode())
    assert spec.task.container.env == ["NODE_ID={{.Node.ID}}", "K={{ .Task.Slot }}"]
    # what surrounds a placeholder is still checked
    err = _refusal({"mounts": [{"type": "bind", "source": "{{.Node.Hostname}}/x",
                                "target": "/data"}]})
    assert err.field == "task.container.mounts.0" and "absolute path" in err.message
    err = _refusal({"mounts": [{"type": "volume", "source": "a b{{.Task.Slot}}",
                                "target": "/data"}]})
    assert "volume name" in err.message
