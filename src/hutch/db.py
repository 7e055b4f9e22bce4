"""The state database: one SQLite file per root, in WAL mode.

Several ``hutch`` processes may run at once without a daemon, so every change is a short transaction and
readers never block writers (WAL). Each layer owns its own tables (``image/`` the image tables, ``engine/``
the container tables) and creates them through ``ensure_schema``; this module only opens the file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class Database:
    """A connection to ``<root>/hutch.db`` with the settings every hutch process must share."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so writers queue on the lock up front
        # instead of failing with SQLITE_BUSY when they upgrade a read transaction.
        self.conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self._schemas: set[str] = set()

    def ensure_schema(self, name: str, ddl: str) -> None:
        """Create a layer's tables once per process (``IF NOT EXISTS`` keeps it idempotent across them)."""
        if name in self._schemas:
            return
        self.conn.executescript(ddl)
        self._schemas.add(name)

    def transaction(self) -> _Transaction:
        """``with db.transaction(): ...``: BEGIN IMMEDIATE, COMMIT on success, ROLLBACK on error."""
        return _Transaction(self.conn)

    def close(self) -> None:
        self.conn.close()


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        else:
            self._conn.execute("ROLLBACK")
