"""Know at once when a hook event lands in the spool: one inotify watch, through libc.

The hooks hand an event over by renaming a finished file into the spool directory
(``spool.py``), so an ``IN_MOVED_TO`` watch on that directory makes its descriptor
readable exactly when there is something to forward. The collector sleeps in one
poll on its sockets and this descriptor: no timer wakes it between samples (on a
busy 2-core host each wake-up of a Python daemon costs 0.25-0.5 ms of CPU, so a
once-a-second look at the spool alone was worth 0.03 % of a core).

The standard library has no inotify binding; ``ctypes`` calls the two libc functions
(Linux, glibc or musl). Where that fails (no such symbol, the per-user limit of
inotify instances reached), ``SpoolWatch`` raises ``OSError`` and the collector falls
back to looking at the directory's mtime once a second.
"""

from __future__ import annotations

import ctypes
import errno
import os

IN_MOVED_TO = 0x00000080
_IN_NONBLOCK = os.O_NONBLOCK      # the kernel defines IN_NONBLOCK/IN_CLOEXEC as these
_IN_CLOEXEC = os.O_CLOEXEC
_READ_BYTES = 65536


class SpoolWatch:
    """A non-blocking inotify descriptor (``fd``) that turns readable when a file is
    renamed into ``directory``. ``drain`` empties it; ``close`` releases it."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            init, add = libc.inotify_init1, libc.inotify_add_watch
        except AttributeError as e:
            raise OSError(errno.ENOSYS, "this C library has no inotify") from e
        add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        fd = init(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        if add(fd, os.fsencode(directory), IN_MOVED_TO) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {directory}: {os.strerror(err)}")
        self.fd = fd

    def drain(self) -> None:
        """Read and discard the pending events (which files does not matter: the spool is
        read as a whole)."""
        while True:
            try:
                if not os.read(self.fd, _READ_BYTES):
                    return
            except BlockingIOError:
                return

    def close(self) -> None:
        """Release the descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
