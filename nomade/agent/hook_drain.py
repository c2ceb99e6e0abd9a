"""Drain hook events from a spool into the store, exactly once.

Each spool item is mapped by ``nomade.jobenv`` to ``job.start``/``job.end`` wire messages,
all messages of one ``take`` are written in one store transaction, and only then are
the items confirmed. A drain killed between the write and the confirms re-reads the
same items next time; the store merges ``job.start``/``job.end`` idempotently (earliest
times, first final state, union of nodes), so the store ends up as if each event had
been applied once: at-least-once delivery from the spool + an idempotent consumer.

An item that maps to nothing (no job id) or that the wire refuses is moved to the
spool's ``bad/`` directory and counted there, never dropped silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from nomade import jobenv
from nomade.spool import Spool, SpoolItem

log = logging.getLogger(__name__)


class MessageSink(Protocol):
    """What the drain needs of ``nomade.store.Store``."""

    def write_messages(self, messages: Iterable[Any]) -> None: ...


MakeMessage = Callable[[str, str, int, Mapping[str, Any], float | None], Any]


def _wire() -> tuple[MakeMessage, tuple[type[Exception], ...]]:
    from nomade import wire  # imported on first use: only drains need the wire

    return wire.make, (wire.WireError, ValueError, TypeError)


def messages_of(item: SpoolItem, sender: str, seq: int, make: MakeMessage) -> list[Any]:
    """The wire messages one hook event stands for, stamped with the hook's time."""
    ts = jobenv.to_ts(item.record.get("NOMADE_TS")) or time.time()
    return [make(kind, sender, seq, dict(body), ts) for kind, body in jobenv.events(item.record)]


def drain_spool(spool: Spool, store: MessageSink, sender: str, *, limit: int = 500,
                accept: Callable[[Mapping[str, str]], bool] | None = None) -> int:
    """Move every event now in ``spool`` into ``store``; returns how many were confirmed.

    ``sender`` names where the events come from (the node or agent host); events whose
    record ``accept`` refuses are left in the spool untouched. A store
    error propagates with nothing of that round confirmed (the events stay for the
    next drain); ``SpoolError`` when the directory cannot be listed.
    """
    make, refused = _wire()
    done = 0
    while True:
        items = spool.take(limit)
        usable: list[SpoolItem] = []
        messages: list[Any] = []
        for item in items:
            if accept is not None and not accept(item.record):
                continue
            try:
                mapped = messages_of(item, sender, done + len(usable), make)
            except refused as e:
                spool.reject(item, f"refused by the wire: {e}")
                continue
            if not mapped:
                spool.reject(item, "no job id or unknown hook: nothing to store")
                continue
            messages += mapped
            usable.append(item)
        if messages:
            store.write_messages(messages)
        for item in usable:
            spool.confirm(item)
        done += len(usable)
        if len(items) < limit or not usable:
            return done
