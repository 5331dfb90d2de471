"""Leader failure: a write sent during the election is acknowledged by the new
leader, with no retry by the client; the old leader rejoins."""

import base64
import time

from tests.helpers.cluster import wait_for


def _config(i):
    return {"name": f"cfg-{i}", "data": base64.b64encode(b"x").decode()}


def test_leader_kill_then_rejoin(make_cluster):
    c = make_cluster()
    c.init("m1")
    c.join("m2")
    c.join("m3")
    for i in range(20):
        c.admin().post("/v1/configs", _config(i))
    leader = c.wait_leader_ready()
    survivors = [n for n in c.nodes.values() if n is not leader]
    # No retries by the client: the managers hold requests over the election.
    client = c.admin(survivors, timeout=10, retry_for=0)

    t0 = time.monotonic()
    leader.signal_group()
    client.post("/v1/configs", _config(100))
    elapsed = time.monotonic() - t0
    print(f"\nleader kill -9 -> next acknowledged write: {elapsed:.3f}s")
    assert elapsed < 5.0
    assert "cfg-100" in {x["name"] for x in client.get("/v1/configs")}
    new_leader = c.wait_leader_ready()
    assert new_leader is not leader

    # More writes while the old leader is down, then it comes back as a follower.
    for j in range(30):
        c.admin(survivors).post("/v1/configs", _config(1000 + j))
    leader.kill()
    leader.restart()
    expected = c.health(new_leader)["store_index"]
    h = wait_for(lambda: (lambda h: h if h["store_index"] >= expected else None)(c.health(leader)),
                 30, what="old leader to catch up")
    assert h["raft"]["state"] == "follower" and not h["is_leader"]
    names = {x["name"] for x in c.admin([leader]).get("/v1/configs")}
    assert {f"cfg-{1000 + j}" for j in range(30)} <= names
    c.wait_node_ready(leader, manager=True)
