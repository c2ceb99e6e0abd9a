"""Opening a store file: permissions, WAL, migrations, and the transactions the other
parts write and read in."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nomade.errors import NomadeError
from nomade.store import schema


class StoreError(NomadeError):
    """The store file cannot be opened, migrated or written; the message names the file."""


class SchemaVersionError(StoreError):
    """The file's schema version is not the one this code reads."""


def _private_file(path: Path) -> None:
    """Create ``path`` 0600 if missing (SQLite gives its -wal and -shm files the same
    mode), or take group and world bits off an existing file of ours. Never follows a
    symlink at ``path``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        info = os.fstat(fd)
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class StoreBase:
    """One connection to a store file, opened as ``Store`` says, and its transactions."""

    def __init__(self, path: str | Path, *, readonly: bool = False,
                 busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._started: set[str] = set()   # jobs committed to job_sample_start
        self._conn = self._connect(busy_timeout_s)
        try:
            self._prepare()
        except sqlite3.Error as e:
            self._conn.close()
            raise StoreError(f"{self.path}: {e}") from e
        except BaseException:
            self._conn.close()
            raise

    # -- opening

    def _connect(self, busy_timeout_s: float) -> sqlite3.Connection:
        """Open the connection (autocommit: transactions are explicit)."""
        try:
            if self.readonly:
                return self._connect_readonly(busy_timeout_s)
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            _private_file(self.path)
            return sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout_s)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"{self.path}: cannot open: {e}") from e

    def _connect_readonly(self, busy_timeout_s: float) -> sqlite3.Connection:
        """Open with ``mode=ro``; if that fails because SQLite would have to create the
        ``-shm`` file (a user who may not write the directory, while no writer has the file
        open: a clean close removes ``-wal`` and ``-shm``), read the file as it is
        (``immutable=1``: valid while no writer appears, which then shows as a read error)."""
        if not self.path.is_file():
            raise StoreError(f"{self.path}: no store file there")
        uri = self.path.resolve().as_uri()
        conn = sqlite3.connect(uri + "?mode=ro", uri=True, isolation_level=None,
                               timeout=busy_timeout_s)
        try:
            conn.execute("PRAGMA user_version").fetchone()
            return conn
        except sqlite3.OperationalError:
            conn.close()
            if Path(f"{self.path}-wal").exists() or Path(f"{self.path}-shm").exists():
                raise
        return sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, isolation_level=None,
                               timeout=busy_timeout_s)

    def _prepare(self) -> None:
        """Set the pragmas and bring the schema to ``schema.schema_version()``."""
        if not self.readonly:
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL (journal_mode is {mode})")
            self._conn.execute("PRAGMA synchronous = FULL")
            # Fewer, larger checkpoints (WAL up to ~40 MB) and a page cache that holds the
            # hot index pages: together about 1.3x the sample write rate of the defaults.
            self._conn.execute("PRAGMA wal_autocheckpoint = 10000")
            self._conn.execute("PRAGMA cache_size = -32768")
        version = self._version()
        if version == schema.schema_version():
            return
        if version > schema.schema_version():
            raise SchemaVersionError(
                f"{self.path}: store schema v{version} is newer than this nomade knows "
                f"(v{schema.schema_version()}); upgrade nomade")
        if self.readonly:
            raise SchemaVersionError(
                f"{self.path}: store schema v{version} is older than this nomade reads "
                f"(v{schema.schema_version()}); open it read-write once (the agent does) to migrate")
        self._migrate()

    def _version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        """Apply the missing migrations in one transaction; the file is unchanged on error."""
        with self._transaction() as conn:
            version = self._version()  # another process may have migrated meanwhile
            if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise StoreError(f"{self.path}: has tables but no schema version: "
                                 "not a nomade store")
            for target in range(version + 1, schema.schema_version() + 1):
                try:
                    schema._apply(conn, schema.MIGRATIONS[target - 1])
                except (sqlite3.Error, ValueError) as e:
                    raise StoreError(f"{self.path}: migration to schema v{target} failed, "
                                     f"file left at v{version}: {e}") from e
            conn.execute(f"PRAGMA user_version = {schema.schema_version():d}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE); commits on success, rolls back on error."""
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"{self.path}: write failed: {e}") from e

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same committed state."""
        conn = self._conn
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: read failed: {e}") from e

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()
