"""Waiting on a condition with a deadline, for tests (not a test module): a test waits
for what it needs to have happened, never for a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(pred: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``pred`` every ``interval`` seconds until it returns a true value, and return
    that value; AssertionError naming ``what`` if ``timeout`` seconds pass first. The
    deadline bounds a broken run; a passing run waits only as long as the condition takes."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} (not within {timeout:g} s)")
        time.sleep(interval)
