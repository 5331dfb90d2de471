"""The agent's durable record of its tasks.

One SQLite database (``<state dir>/agent.db``, WAL journal) with one row per
task this node knows: the task as last assigned, its last observed status,
and whether it was dropped (its container still has to be removed). The
worker writes it on every assignment and every status change, and reads it
once when it starts, before any assignment, so that an agent restart
re-attaches to its containers instead of forgetting or duplicating them.

WAL with ``synchronous=NORMAL``: a commit survives a crash of the agent; the
last commits may be lost if the machine loses power, which only costs a
status that is re-derived from the container anyway.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from types import TracebackType
from typing import Iterable, Literal

from ..common.fsutil import ensure_private_dir

SCHEMA_VERSION = 1
FILENAME = "agent.db"


class TaskRecord:
    __slots__ = ("task", "status", "dropped")

    def __init__(self, task: dict, status: dict | None, dropped: bool):
        self.task = task
        self.status = status
        self.dropped = dropped

    def __repr__(self) -> str:
        state = self.status["state"] if self.status else None
        return f"TaskRecord({self.task.get('id')!r}, state={state!r}, dropped={self.dropped})"


class TaskStore:
    """Thread-safe: one connection, one writer at a time."""

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, FILENAME)
        self._state_dir = state_dir
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------
    def open(self) -> "TaskStore":
        with self._lock:
            if self._db is not None:
                return self
            ensure_private_dir(self._state_dir)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                 timeout=10.0)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise RuntimeError(f"{self.path} has schema version {version}, "
                                       f"newer than this agent ({SCHEMA_VERSION})")
                db.execute("CREATE TABLE IF NOT EXISTS tasks ("
                           " id TEXT PRIMARY KEY,"
                           " task TEXT NOT NULL,"
                           " status TEXT,"
                           " dropped INTEGER NOT NULL DEFAULT 0)")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            except BaseException:
                db.close()
                raise
            os.chmod(self.path, 0o600)
            self._db = db
        return self

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("task store is not open")
        return self._db

    # -- reads -----------------------------------------------------------------------
    def load(self) -> dict[str, TaskRecord]:
        with self._lock:
            rows = self._conn().execute("SELECT id, task, status, dropped FROM tasks").fetchall()
        return {tid: TaskRecord(json.loads(task), json.loads(status) if status else None,
                                bool(dropped))
                for tid, task, status, dropped in rows}

    # -- writes ----------------------------------------------------------------------
    def save_tasks(self, tasks: Iterable[dict]) -> None:
        """Insert or replace the tasks (as assigned), keeping their statuses;
        a task saved again is no longer dropped."""
        rows = [(t["id"], json.dumps(t, sort_keys=True)) for t in tasks]
        if not rows:
            return
        with self._lock:
            db = self._conn()
            with _transaction(db):
                db.executemany("INSERT INTO tasks (id, task) VALUES (?, ?) "
                               "ON CONFLICT(id) DO UPDATE SET task=excluded.task, dropped=0",
                               rows)

    def save_status(self, task_id: str, status: dict) -> None:
        """Record a task's last status (ignored for a task not stored)."""
        with self._lock:
            self._conn().execute("UPDATE tasks SET status=? WHERE id=?",
                                 (json.dumps(status, sort_keys=True), task_id))

    def mark_dropped(self, task_ids: Iterable[str]) -> None:
        ids = [(tid,) for tid in task_ids]
        if not ids:
            return
        with self._lock:
            db = self._conn()
            with _transaction(db):
                db.executemany("UPDATE tasks SET dropped=1 WHERE id=?", ids)

    def delete(self, task_ids: Iterable[str]) -> None:
        ids = [(tid,) for tid in task_ids]
        if not ids:
            return
        with self._lock:
            db = self._conn()
            with _transaction(db):
                db.executemany("DELETE FROM tasks WHERE id=?", ids)


class _transaction:
    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False
