"""Connections the Raft port refuses do not hold up commits, nor fill the log.

Three real Raft members in this process (mutual TLS on loopback, journals
on disk). The leader's Raft port gets 200 connections a second that it must
refuse: TCP closed at once, TLS without a certificate, a certificate from
another CA, a certificate of the cluster that is not a manager's. The
handshakes and peer checks run off the Raft thread, and refusals are logged
at most once per interval, with their count.
"""

import base64
import logging
import math
import re
import statistics
import time

from flotilla.ca import certs
from flotilla.manager.store.store import Op, new_id
from tests.helpers.cluster import wait_for
from tests.helpers.raftflood import Flooder, other_ca_bundle
from tests.helpers.raftmembers import raft_group

FLOOD_SECONDS = 4.0
MIN_ATTEMPTS = 300      # the flood goes on until it has made as many (on a loaded machine)
LOG_INTERVAL = 5.0      # the Raft port's refusal log interval (raft/security.py)


def _commit(store, name):
    started = time.monotonic()
    store.commit([Op.create("config", {"id": new_id(), "name": name,
                                       "data": base64.b64encode(b"x").decode(), "labels": {}})])
    return time.monotonic() - started


def test_refused_connections_at_200_a_second_neither_stop_commits_nor_fill_the_log(tmp_path,
                                                                                   caplog):
    with raft_group(tmp_path, "floodcluster") as g:
        leader = g.leader()
        store = g.members[leader][0]
        store.barrier()
        worker = tmp_path / "worker.pem"
        key, cert = g.root.issue(certs.ROLE_WORKER, "a-worker", g.cluster_id, 3600)
        certs.write_node_bundle(str(worker), key, cert)
        caplog.set_level(logging.INFO, logger="flotilla.manager.raft.security")
        flood = Flooder(g.addrs[leader], rate=200, not_manager_bundle=str(worker),
                        other_ca_bundle_path=other_ca_bundle(str(tmp_path))).start()
        latencies = []
        started = time.monotonic()
        try:
            deadline, last_resort = started + FLOOD_SECONDS, started + 4 * FLOOD_SECONDS
            while time.monotonic() < deadline or (flood.total < MIN_ATTEMPTS
                                                   and time.monotonic() < last_resort):
                latencies.append(_commit(store, f"during-{len(latencies)}"))
        finally:
            flood.stop()
        flooded = time.monotonic() - started
        # The leader kept its leadership and kept committing.
        assert g.members[leader][1].is_leader
        assert len(latencies) >= 20 and max(latencies) < 2.0, (
            len(latencies), statistics.median(latencies), max(latencies))
        assert flood.total >= MIN_ATTEMPTS, flood.attempts
        refused = wait_for(lambda: _settled(lambda: _refusals(g.counters[leader])), 20,
                           what="the refusals counted")
        assert refused >= 0.9 * flood.total, (refused, flood.attempts)
        # One line at the first refusal, then at most one per interval with
        # the count of those since the line before: every refusal is in
        # the log, in at most 3 lines for a flood of about 4 s (one more per
        # interval the flood went on).
        lines = wait_for(lambda: (lambda ls: ls if _logged(ls) == refused else None)(
            [r.getMessage() for r in caplog.records
             if r.name == "flotilla.manager.raft.security"]), 15, what="every refusal logged")
        assert len(lines) <= 2 + math.ceil(flooded / LOG_INTERVAL), (flooded, lines)


def _refusals(counters) -> int:
    return sum(n for k, n in counters.snapshot().items() if k.startswith("raft."))


def _settled(read):
    """``read()``'s value once it stays the same for half a second."""
    first = read()
    time.sleep(0.5)
    return first if read() == first else None


def _logged(lines) -> int:
    """How many refusals ``lines`` account for."""
    total = 0
    for line in lines:
        found = re.match(r"raft connection refused: (\d+) ", line)
        total += int(found.group(1)) if found else 1
    return total
