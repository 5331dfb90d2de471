"""The manager's garbage-collection policy: a slow full collection moves
what survived it out of the collector's reach, so the next full collection
only walks what was allocated since (and a large store no longer means long
pauses with the GIL held)."""

import gc
import time

import pytest

from flotilla.common import gcpolicy


@pytest.fixture
def policy():
    gcpolicy.install()
    yield
    gc.unfreeze()


def _full_collection_seconds():
    started = time.perf_counter()
    gc.collect()
    return time.perf_counter() - started


def test_slow_full_collection_freezes_the_survivors(policy):
    # A store-like heap: 300,000 small records that stay alive (tracked
    # containers), built without collections so none is frozen yet, and
    # measured before an automatic collection can reach them (whether one
    # would depend on what the tests before this one allocated).
    gc.disable()
    try:
        heap = [{"id": i, "status": {"state": "running"}, "ports": [i]} for i in range(300_000)]
        frozen_before = gc.get_freeze_count()
        before = gcpolicy.stats()
        first = _full_collection_seconds()
    finally:
        gc.enable()
    assert first > gcpolicy.FREEZE_AFTER, "the heap is too small to make a slow collection"
    after = gcpolicy.stats()
    assert after["freezes"] == before["freezes"] + 1
    assert gc.get_freeze_count() >= frozen_before + len(heap)
    assert after["collections"][2] == before["collections"][2] + 1
    assert after["max_pause"] >= first * 0.5
    # The survivors are out of reach: the next full collection is much shorter.
    second = _full_collection_seconds()
    assert second < first / 4, (first, second)
    # Frozen objects are still freed when dropped (reference counting).
    del heap
    assert gc.get_freeze_count() < frozen_before + 300_000


def test_fast_collections_freeze_nothing(policy):
    gc.collect()                        # start from a frozen (or small) heap
    before = gcpolicy.stats()
    small = [{"n": [i]} for i in range(1000)]
    assert _full_collection_seconds() < gcpolicy.FREEZE_AFTER
    assert gcpolicy.stats()["freezes"] == before["freezes"]
    assert small


def test_install_is_idempotent(policy):
    gcpolicy.install()
    gcpolicy.install()
    assert gc.callbacks.count(gcpolicy._on_collection) == 1
