"""A directory queue of hook events (standard library only).

Format. One event per file; the file is a sequence of ``KEY=VALUE`` records each
ended by NUL (the ``env -0`` format: a value may hold any byte but NUL, so the shell
hooks in ``prolog/`` and ``epilog/`` write it without escaping). Bytes that are not
UTF-8 are kept with ``surrogateescape``: a record read back and put again is
byte-identical.

Names. An event lives in ``<sec>.<nsec>-<tag>.ev``; names sort by creation time.
Writers create ``.<name>.tmp``, write, fsync, rename to ``<name>``. ``put`` then fsyncs
the directory; the Slurm hook does not (a journal commit per job event), so a power cut
within seconds of its rename may lose that event, never tear it (docs/ARCHITECTURE.md,
"Slurm hooks"). Readers see only ``*.ev`` files not starting with a dot, so a writer
killed at any point leaves either nothing, an ignored temp file, or a complete event.

Exactly once. ``take`` returns events without removing them; ``confirm`` removes
one. A reader killed between its work and ``confirm`` gets the event again from the
next ``take``, so delivery is *at least once* and never loses a completed ``put``.
Consumers make it *exactly once* by being idempotent on the event: ``SpoolItem.id``
(the file name, unique and stable across re-deliveries) or a natural key (the store
upserts ``job.start``/``job.end`` by job id). ``confirm`` does not fsync the
directory: after a power cut an event may come back, which the same argument covers.

Malformed files (no final NUL, a record without ``=`` or with an empty key, empty
file), and anything not a regular file of at most ``MAX_EVENT_BYTES`` (a symlink is
never followed, a FIFO never blocks the reader), are moved to ``<dir>/bad/`` and
counted, never deleted. Temp files older than
``stale_tmp_s`` (left by killed writers) are removed by ``take``.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".ev"
#: Largest event file read (a hook's record of a job is a few KiB).
MAX_EVENT_BYTES = 1 << 20
TMP_SUFFIX = ".tmp"
BAD_DIR = "bad"
_counter = itertools.count()


class SpoolError(Exception):
    """The spool directory cannot be used (missing, unreadable)."""


class MalformedEvent(ValueError):
    """An event file's bytes are not NUL-ended ``KEY=VALUE`` records."""


@dataclass(frozen=True)
class SpoolItem:
    """One event taken from the spool; ``id`` is its file name (unique, stable)."""

    id: str
    path: Path
    record: dict[str, str]


def encode(record: dict[str, str]) -> bytes:
    """Serialise a record; ``ValueError`` for a key/value that cannot round-trip."""
    if not record:
        raise ValueError("spool record is empty")
    out = bytearray()
    for key, value in record.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"spool record keys and values must be str: {key!r}={value!r}")
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ValueError(f"spool record key must be non-empty without '=' or NUL, "
                             f"value without NUL: {key!r}={value!r}")
        out += key.encode("utf-8", "surrogateescape") + b"="
        out += value.encode("utf-8", "surrogateescape") + b"\0"
    return bytes(out)


def decode(data: bytes) -> dict[str, str]:
    """Parse an event file's bytes; ``MalformedEvent`` says what is wrong."""
    if not data:
        raise MalformedEvent("empty file")
    if not data.endswith(b"\0"):
        raise MalformedEvent("last record is not ended by NUL (truncated file)")
    record: dict[str, str] = {}
    for i, raw in enumerate(data[:-1].split(b"\0")):
        key, sep, value = raw.partition(b"=")
        if not sep or not key:
            raise MalformedEvent(f"record {i} is not KEY=VALUE: {raw[:60]!r}")
        record[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return record


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """A spool directory; several writers, one reader (more are safe, only wasteful)."""

    def __init__(self, directory: str | os.PathLike[str], *, stale_tmp_s: float = 3600.0) -> None:
        self.dir = Path(directory)
        self.stale_tmp_s = stale_tmp_s
        self.bad_moved = 0
        self.stale_removed = 0

    def put(self, record: dict[str, str], tag: str = "py") -> str:
        """Add one event durably and atomically; returns its id.

        Raises ``ValueError`` for a record that cannot be encoded and ``OSError``
        when the directory cannot be written (nothing is left behind then).
        """
        data = encode(record)
        ns = time.time_ns()
        safe_tag = "".join(c if c.isalnum() or c in "_" else "_" for c in tag)[:32] or "py"
        name = f"{ns // 10**9}.{ns % 10**9:09d}-{safe_tag}-{os.getpid()}-{next(_counter)}{SUFFIX}"
        tmp = self.dir / f".{name}{TMP_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self.dir / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.dir)
        return name

    def take(self, limit: int = 100) -> list[SpoolItem]:
        """Up to ``limit`` events, oldest first, left in place until ``confirm``.

        Malformed files are moved to ``bad/`` on the way (see ``bad_moved``).
        Raises ``SpoolError`` when the directory cannot be listed.
        """
        try:
            names = os.listdir(self.dir)
        except OSError as e:
            raise SpoolError(f"cannot list spool directory {self.dir}: {e.strerror}") from e
        self._remove_stale_tmp(n for n in names if n.startswith(".") and n.endswith(TMP_SUFFIX))
        items: list[SpoolItem] = []
        for name in sorted(n for n in names if n.endswith(SUFFIX) and not n.startswith(".")):
            if len(items) >= limit:
                break
            item = self._read(name)
            if item is not None:
                items.append(item)
        return items

    def confirm(self, item: SpoolItem) -> None:
        """Remove a processed event; confirming twice is harmless."""
        item.path.unlink(missing_ok=True)

    def reject(self, item: SpoolItem, why: str) -> None:
        """Move a well-formed event its consumer cannot use to ``bad/`` (counted, kept)."""
        self._move_bad(item.path, why)

    def pending(self) -> int:
        """How many events wait in the spool (temp files are not events)."""
        return sum(1 for n in os.listdir(self.dir) if n.endswith(SUFFIX) and not n.startswith("."))

    def _read(self, name: str) -> SpoolItem | None:
        """The event in file ``name``: a regular file of at most ``MAX_EVENT_BYTES``, opened
        without following a symlink and without blocking on a FIFO (anything else is moved
        to ``bad/``: the spool's writers can be any job's hooks, its reader a daemon)."""
        path = self.dir / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # confirmed meanwhile by another reader
        except OSError as e:
            if e.errno == errno.ELOOP:
                self._move_bad(path, "a symlink, not an event file")
            else:
                log.warning("spool %s: cannot read %s: %s", self.dir, name, e.strerror)
            return None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_EVENT_BYTES:
                why = "not a regular file" if not stat.S_ISREG(info.st_mode) else \
                    f"{info.st_size} bytes, more than {MAX_EVENT_BYTES}"
                data = None
            else:
                data = f.read(MAX_EVENT_BYTES + 1)
        if data is None or len(data) > MAX_EVENT_BYTES:
            self._move_bad(path, why if data is None else f"more than {MAX_EVENT_BYTES} bytes")
            return None
        try:
            return SpoolItem(name, path, decode(data))
        except MalformedEvent as e:
            self._move_bad(path, str(e))
            return None

    def _move_bad(self, path: Path, why: str) -> None:
        bad = self.dir / BAD_DIR
        try:
            bad.mkdir(exist_ok=True)
            os.rename(path, bad / path.name)
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("spool %s: malformed %s (%s) and cannot move it aside: %s",
                        self.dir, path.name, why, e.strerror)
            return
        self.bad_moved += 1
        log.warning("spool %s: malformed %s moved to %s/: %s", self.dir, path.name, BAD_DIR, why)

    def _remove_stale_tmp(self, names: Iterable[str]) -> None:
        cutoff = time.time() - self.stale_tmp_s
        for name in names:
            path = self.dir / name
            try:
                if path.lstat().st_mtime < cutoff:
                    path.unlink()
                    self.stale_removed += 1
            except OSError:
                continue
