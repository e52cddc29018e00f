"""Runs: one row per long stage execution, with its progress, log, outcome and who started it."""
from __future__ import annotations

import json
import time
from typing import TypedDict

from ..codes import RunStatus
from .base import now


class RunRow(TypedDict):
    """A run as every layer sees it (the store decodes the JSON columns)."""

    id: int
    kind: str
    status: str  # a RunStatus
    settings: dict  # the run kind's settings object, as to_dict() gives it
    inputs: dict  # the workspace, and for training the GPU set it holds
    argv: list[str] | None  # the worker's command line after `python -m studio`
    author: str
    pid: int | None
    done: int
    total: int | None
    created_at: str
    started_at: str | None
    ended_at: str | None
    heartbeat: float | None
    exit_code: int | None
    log_path: str | None
    result: dict | None
    error: str | None
    cancel_requested: bool
    resumes: int | None


class RunsMixin:
    def create_run(self, *, kind: str, settings: dict, inputs: dict, author: str, argv: list[str] | None = None,
                   log_path: str | None = None, status: str = RunStatus.QUEUED, resumes: int | None = None) -> int:
        with self.transaction() as conn:
            cur = conn.execute(
                """INSERT INTO runs(kind, status, settings, inputs, argv, author, created_at, log_path, resumes)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (kind, status, json.dumps(settings, default=str), json.dumps(inputs, default=str),
                 json.dumps(argv) if argv is not None else None, author, now(), log_path, resumes))
            return int(cur.lastrowid)

    def set_run_worker(self, run_id: int, argv: list[str], log_path: str) -> None:
        """The worker's command line (``python -m studio`` + argv) and its log, known once the run has an id."""
        with self.transaction() as conn:
            conn.execute("UPDATE runs SET argv = ?, log_path = ? WHERE id = ?", (json.dumps(argv), log_path, run_id))

    def start_run(self, run_id: int, pid: int) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE runs SET status = 'running', pid = ?, started_at = ?, heartbeat = ? WHERE id = ?",
                         (pid, now(), time.time(), run_id))

    def beat(self, run_id: int) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (time.time(), run_id))

    def run_progress(self, run_id: int, done: int, total: int | None) -> bool:
        """Record progress; returns whether someone asked the run to stop."""
        with self.transaction() as conn:
            conn.execute("UPDATE runs SET done = ?, total = ?, heartbeat = ? WHERE id = ?",
                         (done, total, time.time(), run_id))
            return self.cancel_requested(run_id)  # same connection: read inside the write's transaction

    def finish_run(self, run_id: int, status: str, *, exit_code: int | None = None, result: dict | None = None,
                   error: str | None = None) -> None:
        with self.transaction() as conn:
            conn.execute(
                """UPDATE runs SET status = ?, exit_code = ?, result = COALESCE(?, result), error = ?, ended_at = ?,
                                   heartbeat = ? WHERE id = ? AND status NOT IN ('done', 'failed', 'cancelled')""",
                (status, exit_code, json.dumps(result, default=str) if result is not None else None, error, now(),
                 time.time(), run_id))

    def cancel_requested(self, run_id: int) -> bool:
        """Whether someone asked the run to stop (a read, for the items between progress writes)."""
        row = self.conn.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row[0])

    def request_cancel(self, run_id: int) -> bool:
        """Ask a run to stop at its next item; False when it has already finished."""
        with self.transaction() as conn:
            cur = conn.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ? AND status IN ('queued', 'running')",
                               (run_id,))
            return cur.rowcount == 1

    def run(self, run_id: int) -> RunRow | None:
        row = self.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _run_row(row) if row else None

    def runs(self, *, kind: str | None = None, status: str | None = None, limit: int = 100) -> list[RunRow]:
        where, args = [], []
        for col, value in (("kind", kind), ("status", status)):
            if value:
                where.append(f"{col} = ?")
                args.append(value)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        rows = self.conn.execute(f"SELECT * FROM runs {clause} ORDER BY id DESC LIMIT ?", args + [limit]).fetchall()
        return [_run_row(r) for r in rows]

    def active_runs(self) -> list[RunRow]:
        return [_run_row(r) for r in self.conn.execute(
            "SELECT * FROM runs WHERE status IN ('queued', 'running') ORDER BY id")]

    def record_export(self, *, out_dir: str, settings: dict, result: dict, run_id: int | None, author: str) -> int:
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO exports(out_dir, settings, result, run_id, author, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (out_dir, json.dumps(settings), json.dumps(result), run_id, author, now()))
            return int(cur.lastrowid)


def _run_row(r) -> RunRow:
    d = dict(r)
    for k in ("settings", "inputs", "result", "argv"):
        d[k] = json.loads(d[k]) if d[k] else ({} if k in ("settings", "inputs") else None)
    d["cancel_requested"] = bool(d["cancel_requested"])
    return d  # type: ignore[return-value]
