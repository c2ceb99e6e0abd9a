"""On-disk outbox of unacknowledged batches, bounded in size, one file per batch.

Each batch gets the next per-sender sequence number. The highest number ever handed
out is persisted (``seq`` file) before the batch file is written, so a restart never
reuses a number the agent may already hold (it would drop the new batch as a
duplicate).

Where the sequence starts: a fresh outbox (no ``seq`` file and no batch, e.g. a
reinstalled node, a wiped ``outbox_dir``) or one whose ``seq`` file is unreadable does
not start at 1, which would repeat the (sender, seq) pairs the agent stored from the
node's earlier life: it starts after the wall-clock time in microseconds (``time_ns()
// 1000``, about 1.7e15, far inside the wire's 2**63 - 1), and counts on by one from
there, persisted as above. A number so derived cannot repeat an earlier one unless
the earlier outbox sent more than one batch per microsecond of its life or the clock
is set back by more than the time since then. A start from an existing ``seq`` file
continues it and never looks at the clock.

A batch lives in ``<seq:020d>.batch``, written atomically (temp file,
fsync, rename) before it is sent, and is removed only when its ack arrives. A
collector killed at any point leaves complete batches only; they are resent with the
same ``seq`` after restart and the agent drops the copies it already has.

Bound: when the files exceed ``max_bytes``, the oldest batches are deleted (never the
newest), counted in ``dropped`` and logged: the agent will see a gap in ``seq``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_SUFFIX = ".batch"
_SEQ_FILE = "seq"


class Outbox:
    """A directory of batch files keyed by sequence number (see the module doc)."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"outbox max_bytes must be positive, not {max_bytes}")
        self.dir = Path(directory)
        self.dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.dropped = 0
        self._sizes: dict[int, int] = {}
        for name in os.listdir(self.dir):
            if name.endswith(".tmp"):
                (self.dir / name).unlink(missing_ok=True)
            elif name.endswith(_SUFFIX) and name[:-len(_SUFFIX)].isdigit():
                self._sizes[int(name[:-len(_SUFFIX)])] = (self.dir / name).stat().st_size
        persisted = self._read_seq_file()
        if persisted is None:
            persisted = time.time_ns() // 1000
            log.info("outbox %s: no usable seq file; sequence starts after %d (the clock in µs)",
                     self.dir, persisted)
        self._last_seq = max(persisted, *self._sizes, 0)

    def _read_seq_file(self) -> int | None:
        """The persisted highest seq, or None when the file is missing or unreadable."""
        try:
            text = (self.dir / _SEQ_FILE).read_text().strip()
        except FileNotFoundError:
            return None
        if not text.isdigit():
            log.warning("outbox %s: seq file holds %r, starting after the clock instead", self.dir, text)
            return None
        return int(text)

    @property
    def last_seq(self) -> int:
        """The highest sequence number handed out so far (for a fresh outbox: its starting point)."""
        return self._last_seq

    def add(self, build: Callable[[int], bytes]) -> int:
        """Reserve the next seq, store ``build(seq)`` as that batch, enforce the bound; return seq."""
        seq = self._last_seq + 1
        self._write(self.dir / _SEQ_FILE, str(seq).encode())
        self._last_seq = seq
        data = build(seq)
        self._write(self._path(seq), data)
        self._sizes[seq] = len(data)
        self._enforce_bound()
        return seq

    def pending(self) -> list[int]:
        """Sequence numbers of the unacknowledged batches, oldest first."""
        return sorted(self._sizes)

    def get(self, seq: int) -> bytes | None:
        """The stored batch, or None if it is not (or no longer) in the outbox."""
        if seq not in self._sizes:
            return None
        try:
            return self._path(seq).read_bytes()
        except FileNotFoundError:
            self._sizes.pop(seq, None)
            return None

    def ack(self, seq: int) -> bool:
        """Remove an acknowledged batch; False if it was not pending (a late or stray ack)."""
        if self._sizes.pop(seq, None) is None:
            return False
        self._path(seq).unlink(missing_ok=True)
        return True

    def size_bytes(self) -> int:
        """Total size of the pending batches."""
        return sum(self._sizes.values())

    def _enforce_bound(self) -> None:
        total = self.size_bytes()
        for seq in sorted(self._sizes)[:-1]:
            if total <= self.max_bytes:
                break
            total -= self._sizes.pop(seq)
            self._path(seq).unlink(missing_ok=True)
            self.dropped += 1
            log.warning("outbox %s over %d bytes: dropped unacknowledged batch %d (%d dropped so far)",
                        self.dir, self.max_bytes, seq, self.dropped)

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:020d}{_SUFFIX}"

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
