"""Leader failure: a write sent during the election is acknowledged by the new
leader, with no retry by the client; the old leader rejoins."""

import base64
import signal
import threading
import time

from flotilla.common.httpclient import ApiError
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


def _is_ready_leader(c, node) -> bool:
    try:
        h = c.health(node)
    except ApiError:
        return False
    return h["is_leader"] and h["leader_ready"]


def test_a_client_of_one_manager_sees_no_failure_while_leaders_pause(make_cluster):
    """A client that knows one manager only, with no retries of its own,
    keeps writing while the leader is paused (SIGSTOP) until the others
    have elected a new one, four times. Writes held by the paused leader
    are answered after it resumes, by the new leader."""
    c = make_cluster()
    c.init("m1")
    c.join("m2")
    c.join("m3")
    entry = c.wait_leader_ready()
    client = c.admin([entry], timeout=10, retry_for=0)
    failures, acked = [], []
    stop = threading.Event()

    def writer(tag):
        i = 0
        while not stop.is_set():
            i += 1
            name = f"w{tag}-{i}"
            try:
                client.post("/v1/configs", {"name": name,
                                            "data": base64.b64encode(b"x").decode()})
                acked.append(name)
                if client.get(f"/v1/configs/{name}")["name"] != name:
                    failures.append(f"{name}: read back another config")
            except ApiError as exc:
                failures.append(f"{name}: {exc.code}: {exc}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    leaders = [entry.name]
    try:
        leader = entry
        for _ in range(4):
            before = len(acked)
            wait_for(lambda: len(acked) >= before + 20, 30, interval=0.02,
                     what="writes acknowledged before the pause")
            paused = leader
            others = [n for n in c.managers() if n is not paused]
            paused.signal_group(signal.SIGSTOP)
            try:
                leader = wait_for(
                    lambda: next((n for n in others if _is_ready_leader(c, n)), None), 15,
                    interval=0.05, what="a new leader while the old one is paused")
            finally:
                paused.signal_group(signal.SIGCONT)
            leaders.append(leader.name)
        before = len(acked)
        wait_for(lambda: len(acked) >= before + 20, 30, interval=0.02,
                 what="writes acknowledged after the last pause")
    finally:
        stop.set()
        for t in threads:
            t.join()
    print(f"\n{len(acked)} writes acknowledged, {len(failures)} failed; leaders: {leaders}")
    assert not failures, failures[:5]
    stored = {x["name"] for x in c.admin().get("/v1/configs")}
    assert set(acked) <= stored
