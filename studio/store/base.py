"""Connections, transactions and settings: what every part of the store shares.

SQLite in WAL mode so that pages read while a stage writes. Writers take the lock with
``BEGIN IMMEDIATE`` and keep transactions short (stages commit in batches), so a waiting writer
waits a moment, never the length of a stage; a wait that still runs out raises
:class:`StoreBusyError` with how long it waited.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .migrations import MIGRATIONS, SCHEMA_VERSION, run_backfills, split_sql

BUSY_TIMEOUT_S = 30.0


class StoreBusyError(RuntimeError):
    """Another writer held the workspace longer than the busy timeout."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def marks(values: Sequence) -> str:
    """``?, ?, ?``: one SQL parameter per value of an IN list."""
    return ",".join("?" * len(values))


class StoreBase:
    """A workspace database. Connections are per thread (Gradio handlers run in threads)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._migrate()

    # -- connection plumbing -------------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.connect()
        return conn

    def connect(self) -> sqlite3.Connection:
        """A new connection of the store's kind (``conn`` keeps one per thread)."""
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (nested calls join the outer one)."""
        conn = self.conn
        if conn.in_transaction:
            yield conn
            return
        self._begin_immediate(conn)
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        """Take the write lock, polling every millisecond or so.

        SQLite's own busy handler sleeps up to 100 ms between tries, so a writer that commits
        in back-to-back batches can starve it; short polls catch the gap between two batches.
        """
        started = time.perf_counter()
        delay = 0.0005
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    waited = time.perf_counter() - started
                    if waited > BUSY_TIMEOUT_S:
                        raise StoreBusyError(f"{self.path}: another writer held the workspace for {waited:.0f} s; "
                                             "try again") from None
                    time.sleep(delay)
                    delay = min(delay * 1.5, 0.004)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")

    @staticmethod
    def yield_to_writers() -> None:
        """Between two batches of a long stage: a moment in which waiting writers take the lock."""
        time.sleep(0.003)

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: a consistent view that never blocks writers (WAL)."""
        conn = self.conn
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN DEFERRED")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self.transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: workspace schema v{version} is newer than this studio (v{SCHEMA_VERSION}); upgrade the studio"
                )
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in split_sql(MIGRATIONS[v]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {v}")
            if version < SCHEMA_VERSION:  # on a new workspace: empty tallies and their triggers
                run_backfills(conn, version, self._refresh_browse)

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    # -- settings ------------------------------------------------------------------------
    def get_setting(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_setting(self, key: str, value: Any) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )
