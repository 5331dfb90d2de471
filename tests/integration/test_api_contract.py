"""The API contract: the OpenAPI document served at /v1/openapi.json
describes every endpoint, and a property-based fuzz run against a real
manager (schemathesis, bounded and seeded) finds no server error and no
response that breaks the document."""

import json
import os
import subprocess
import sys

from flotilla.common.httpclient import tls_session
from tests.helpers.cluster import wait_for

ST = os.path.join(os.path.dirname(sys.executable), "st")
FUZZ_EXAMPLES = int(os.environ.get("FLOTILLA_FUZZ_EXAMPLES", "20"))


CLUSTER = {"managers": 1, "workers": 0}      # the `cluster` the tests share (conftest.py)


def _session(c):
    return tls_session(c.admin_dir)


def test_openapi_document_describes_the_api(cluster):
    c = cluster
    s = _session(c)
    base = f"https://{c.first.addr}"
    doc = s.get(f"{base}/v1/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    for path, method in [("/v1/services", "post"), ("/v1/services/{ref}", "patch"),
                         ("/v1/nodes/{ref}", "patch"), ("/v1/tasks", "get"),
                         ("/v1/cluster", "patch"), ("/v1/configs", "post")]:
        assert method in paths[path], (path, method)
    create = paths["/v1/services"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    spec = doc["components"]["schemas"][body.rsplit("/", 1)[1]]
    assert spec["additionalProperties"] is False          # unknown fields are refused
    assert create["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    update = paths["/v1/cluster"]["patch"]["requestBody"]["content"]["application/json"]
    settings = doc["components"]["schemas"][update["schema"]["$ref"].rsplit("/", 1)[1]]
    assert {"network_key_rotation", "rotate_network_keys"} <= set(settings["properties"])

    # Every 4xx has the one error shape with the field path.
    res = s.post(f"{base}/v1/services", json={"name": "x", "task": {"container": {"image": "a",
                                                                                  "imgae": "b"}}})
    assert res.status_code == 400
    assert res.json() == {"error": {"code": "invalid", "field": "task.container.imgae",
                                    "message": "task.container.imgae: unknown field"}}
    res = s.get(f"{base}/v1/tasks", params={"servce": "web"})
    assert res.status_code == 400 and res.json()["error"]["field"] == "servce"
    res = s.post(f"{base}/v1/services", json={"name": "x", "replicas": -1,
                                              "task": {"container": {"image": "a"}}})
    assert res.status_code == 400 and res.json()["error"]["field"] == "replicas"
    res = s.patch(f"{base}/v1/services/nope", json={"replicas": 2})
    assert res.status_code == 404 and res.json()["error"]["code"] == "not_found"


def test_fuzzing_the_api_finds_no_server_error(cluster, tmp_path):
    c = cluster
    s = _session(c)
    base = f"https://{c.first.addr}"
    schema = tmp_path / "openapi.json"
    doc = s.get(f"{base}/v1/openapi.json", timeout=10).json()
    # Long polls only make the fuzzer wait: pin their wait to 0 here (the
    # events tests cover waiting).
    for item in doc["paths"].values():
        for op in item.values():
            for p in op.get("parameters", []):
                if p["name"] == "wait" and p["in"] == "query":
                    p["schema"] = dict(p["schema"], maximum=0)
    schema.write_text(json.dumps(doc))
    before = s.get(f"{base}/v1/health", timeout=10).json()
    report = tmp_path / "report"
    cmd = [ST, "run", str(schema), "--url", base,
           "--request-cert", os.path.join(c.admin_dir, "cert.pem"),
           "--request-cert-key", os.path.join(c.admin_dir, "key.pem"),
           # Managers' certificates name "flotilla-manager", not 127.0.0.1: the
           # client certificate still authenticates every fuzzed request.
           "--tls-verify", "false",
           "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                       "response_schema_conformance",
           "--max-examples", str(FUZZ_EXAMPLES), "--seed", "20261127", "--workers", "1",
           "--phases", "examples,coverage,fuzzing", "--request-timeout", "30",
           "--suppress-health-check", "all", "--no-color",
           "--report", "junit", "--report-dir", str(report)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                         env=dict(os.environ, SCHEMATHESIS_HOOKS=""))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert "passed" in out
    # The manager kept serving and never logged an unhandled error.
    after = s.get(f"{base}/v1/health", timeout=10).json()
    assert after["node_id"] == before["node_id"] and after["is_leader"]
    wait_for(lambda: s.get(f"{base}/v1/services", timeout=10).status_code == 200, 10,
             what="the API to answer")
    assert "unhandled error" not in c.first.log()
