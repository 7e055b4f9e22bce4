"""Container records in the state database: what exists, what state it is in, what it was made from.

The record is the source of truth between hutch processes (there is no daemon); a process that finds a
record marked running whose init has gone (hutch or its monitor was killed) reconciles it to exited.
"""

from __future__ import annotations

import json
import time

from hutch.db import Database
from hutch.errors import Conflict, InvalidArgument, NotFound

_DDL = """
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    image_id TEXT NOT NULL,
    image_ref TEXT NOT NULL,
    created REAL NOT NULL,
    state TEXT NOT NULL,
    pid INTEGER NOT NULL DEFAULT 0,
    pid_start TEXT NOT NULL DEFAULT '',
    exit_code INTEGER,
    started REAL,
    finished REAL,
    config TEXT NOT NULL,
    reaper TEXT NOT NULL DEFAULT '',   -- "pid:start time" of the process that waits for the init
    restarts INTEGER NOT NULL DEFAULT 0,  -- restarts by the restart policy since the last manual start
    stopped INTEGER NOT NULL DEFAULT 0    -- 1 once stopped by the user: restart policies leave it alone
);
"""
STATES = ("created", "running", "paused", "restarting", "exited", "removing")
# States in which the container's processes exist (or, restarting, are about to): what ``ps`` shows.
LIVE_STATES = ("running", "paused", "restarting")


class Record:
    """One container; ``config`` holds the run options and the generated OCI spec."""

    __slots__ = (
        "id",
        "name",
        "image_id",
        "image_ref",
        "created",
        "state",
        "pid",
        "pid_start",
        "exit_code",
        "started",
        "finished",
        "config",
        "reaper",
        "restarts",
        "stopped",
    )

    def __init__(
        self,
        id: str,
        name: str,
        image_id: str,
        image_ref: str,
        created: float,
        state: str = "created",
        pid: int = 0,
        pid_start: str = "",
        exit_code: int | None = None,
        started: float | None = None,
        finished: float | None = None,
        config: dict | None = None,
        reaper: str = "",
        restarts: int = 0,
        stopped: int = 0,
    ) -> None:
        self.id = id
        self.name = name
        self.image_id = image_id
        self.image_ref = image_ref
        self.created = created
        self.state = state
        self.pid = pid
        self.pid_start = pid_start
        self.exit_code = exit_code
        self.started = started
        self.finished = finished
        self.config = config or {}
        self.reaper = reaper
        self.restarts = restarts
        self.stopped = stopped

    @property
    def is_microvm(self) -> bool:
        """Whether it runs in a microVM (``--isolation vm``): its pid is then the VM's supervisor, a host
        process, whose namespaces and cgroup are not the container's."""
        return self.config.get("options", {}).get("isolation") == "vm"


class ContainerRecords:
    """CRUD over the ``containers`` table; every change is one short transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure_schema("containers", _DDL)

    def insert(self, record: Record) -> None:
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT INTO containers (id, name, image_id, image_ref, created, state, pid, pid_start,"
                    " exit_code, started, finished, config, reaper) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        record.id,
                        record.name,
                        record.image_id,
                        record.image_ref,
                        record.created,
                        record.state,
                        record.pid,
                        record.pid_start,
                        record.exit_code,
                        record.started,
                        record.finished,
                        json.dumps(record.config),
                        record.reaper,
                    ),
                )
        except Exception as err:
            if "UNIQUE" in str(err):
                raise Conflict(f'the container name "/{record.name}" is already in use')
            raise

    def mark_running(self, cid: str, pid: int, pid_start: str, reaper: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE containers SET state='running', pid=?, pid_start=?, reaper=?, started=?,"
                " exit_code=NULL, finished=NULL, config=json_remove(config, '$.oom_killed'), stopped=0"
                " WHERE id=?",
                (pid, pid_start, reaper, time.time(), cid),
            )

    def mark_restarting(self, cid: str, restarts: int, reaper: str) -> bool:
        """Between a policy restart's exit and its next start; False if the user stopped it meanwhile."""
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE containers SET state='restarting', pid=0, restarts=?, reaper=?"
                " WHERE id=? AND stopped=0 AND state='exited'",
                (restarts, reaper, cid),
            )
            return cur.rowcount == 1

    def transition(self, cid: str, old: str, new: str) -> bool:
        """``old`` -> ``new`` only if the record is still in ``old``: another process may have moved it."""
        with self.db.transaction() as conn:
            cur = conn.execute("UPDATE containers SET state=? WHERE id=? AND state=?", (new, cid, old))
            return cur.rowcount == 1

    def mark_stopped_by_user(self, cid: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE containers SET stopped=1 WHERE id=?", (cid,))

    def reset_restarts(self, cid: str) -> None:
        """A manual start begins a new count, as in Docker."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE containers SET restarts=0 WHERE id=?", (cid,))

    def mark_exited(self, cid: str, exit_code: int, oom_killed: bool = False) -> None:
        """The container exited; ``oom_killed`` (the kernel's OOM killer struck) lives in the config JSON,
        set in the same statement, so the table needs no new column and old databases need no migration."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE containers SET state='exited', pid=0, exit_code=?, finished=?,"
                " config=json_set(config, '$.oom_killed', json(?)) WHERE id=?",
                (exit_code, time.time(), "true" if oom_killed else "false", cid),
            )

    def set_resources(self, cid: str, resources: dict) -> None:
        """``hutch update``: the spec's ``linux.resources`` replaced in one statement (devices included)."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE containers SET config=json_set(config, '$.spec.linux.resources', json(?)) WHERE id=?",
                (json.dumps(resources), cid),
            )

    def set_state(self, cid: str, state: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE containers SET state=? WHERE id=?", (state, cid))

    def rename(self, cid: str, new_name: str) -> None:
        try:
            with self.db.transaction() as conn:
                conn.execute("UPDATE containers SET name=? WHERE id=?", (new_name, cid))
        except Exception as err:
            if "UNIQUE" in str(err):
                raise Conflict(f'the container name "/{new_name}" is already in use')
            raise

    def delete(self, cid: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM containers WHERE id=?", (cid,))

    def get(self, cid: str) -> Record | None:
        row = self.db.conn.execute("SELECT * FROM containers WHERE id=?", (cid,)).fetchone()
        return _record(row) if row else None

    def lookup(self, ref: str) -> Record:
        """By full id, exact name, or unique id prefix, as Docker resolves container references."""
        if not ref:
            raise InvalidArgument("empty container name or id")
        conn = self.db.conn
        row = conn.execute("SELECT * FROM containers WHERE id=? OR name=?", (ref, ref.lstrip("/"))).fetchone()
        if row:
            return _record(row)
        rows = conn.execute(
            "SELECT * FROM containers WHERE id LIKE ? LIMIT 2", (ref.lower() + "%",)
        ).fetchall()
        if len(rows) > 1:
            raise Conflict(f"multiple containers match {ref!r}: use more of the id")
        if not rows:
            raise NotFound(f"no such container: {ref}")
        return _record(rows[0])

    def list(self) -> list[Record]:
        rows = self.db.conn.execute("SELECT * FROM containers ORDER BY created DESC").fetchall()
        return [_record(row) for row in rows]

    def using_image(self, image_id: str) -> list[str]:
        rows = self.db.conn.execute("SELECT name FROM containers WHERE image_id=?", (image_id,)).fetchall()
        return [row["name"] for row in rows]


def _record(row) -> Record:
    values = dict(row)
    values["config"] = json.loads(values["config"])
    return Record(**values)
