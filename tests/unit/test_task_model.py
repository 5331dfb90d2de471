"""The task's shape is defined once (model/task.py, model/taskapi.py): the
store's task, its status and ports, and the API's views of it all follow
those definitions."""

import json

from flotilla.manager.orchestrator.tasks import new_task
from flotilla.model import task as taskmodel
from flotilla.model import taskapi
from flotilla.model.specs import ServiceSpec, canonical


def _service():
    spec = canonical(ServiceSpec.model_validate({
        "name": "web", "replicas": 2, "task": {"container": {"image": "nginx:1"}},
        "endpoint": {"ports": [{"target": 80, "published": 8080}]}}))
    return {"id": "svc1", "name": "web", "spec": spec, "spec_version": 3}


def test_a_new_task_has_the_stored_shape():
    task = new_task(_service(), slot=1, now=100.0)
    required = taskmodel.StoredTask.__required_keys__
    optional = taskmodel.StoredTask.__optional_keys__
    assert required <= set(task) <= required | optional
    assert list(task["status"]) == list(taskapi.TaskStatus.model_fields)
    assert [list(p) for p in task["ports"]] == [list(taskapi.TaskPort.model_fields)]
    assert task["ports"] == [{"target": 80, "published": 8080, "protocol": "tcp"}]


def test_a_reported_status_is_stored_with_the_same_fields():
    reported = taskapi.TaskStatus.model_validate({"state": "running", "container_id": "c1"})
    assert list(reported.model_dump()) == list(taskmodel.status("running"))


def test_the_api_views_read_the_stored_task():
    task = dict(new_task(_service(), slot=2, now=100.0), node_id="n1", created_at=1.5,
                updated_at=2.5, version=7)
    task["status"] = taskmodel.status("failed", "exited", err="exit 1", exit_code=1,
                                      container_id="c9", now=101.0)
    listed = taskmodel.viewer(taskapi.Task)(task, node="host-1", up_to_date=True)
    assert json.dumps(listed) == json.dumps({
        "id": task["id"], "service_id": "svc1", "service_name": "web", "slot": 2,
        "node_id": "n1", "node": "host-1", "desired_state": "running", "state": "failed",
        "message": "exited", "error": "exit 1", "exit_code": 1, "container_id": "c9",
        "timestamp": 101.0, "image": "nginx:1", "spec_version": 3, "up_to_date": True,
        "networks": [], "created_at": 1.5, "updated_at": 2.5})
    on_net = dict(task, networks=[{"network_id": "n1", "addr": "10.0.0.2/24", "aliases": []}])
    assert taskmodel.viewer(taskapi.Task)(on_net, node=None, up_to_date=True)["networks"] == \
        on_net["networks"]
    detail = taskmodel.viewer(taskapi.TaskDetail)(task, node=None, up_to_date=False)
    assert list(detail) == list(listed) + ["spec", "ports"]
    assert detail["spec"] is task["spec"] and detail["ports"] is task["ports"]
    taskapi.TaskDetail.model_validate(detail)


def test_the_view_takes_a_status_stored_without_its_optional_fields():
    task = dict(new_task(_service(), slot=1), status={"state": "pending"})
    listed = taskmodel.viewer(taskapi.Task)(task, node=None, up_to_date=True)
    assert (listed["message"], listed["error"], listed["created_at"]) == ("", None, None)
