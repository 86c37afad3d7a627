"""Reads of Dagster's storage that a GET waits for only so long, and how many may be left behind.

A poll that memory cannot answer reads the run storage on a thread. When PostgreSQL is paused or
overloaded that read blocks; the GET answers 503 at its deadline, but the thread cannot be
stopped and goes on until the storage answers. Cancelling the wait also gives the thread
pool's token back (anyio), so without a bound every poll of a long outage would leave one more
thread blocked on the storage. Past `limit` such reads, a GET answers 503 at once, starting
no read.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

T = TypeVar("T")


class ReadsStalled(TimeoutError):
    """The read outlived its deadline, or too many earlier ones still hold their threads."""


class BoundedReads:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._stalled = 0  # reads whose GET answered at its deadline, still running on a thread
        self._lock = threading.Lock()

    @property
    def stalled(self) -> int:
        return self._stalled

    async def run(self, call: Callable[[], T], deadline: float) -> T:
        """`call()` on a thread, waited for at most `deadline` seconds; ReadsStalled otherwise."""
        if self._stalled >= self._limit:
            raise ReadsStalled(f"{self._stalled} reads of Dagster's storage still wait for it")
        state = {"finished": False, "abandoned": False}

        def tracked() -> T:
            try:
                return call()
            finally:
                with self._lock:
                    state["finished"] = True
                    if state["abandoned"]:
                        self._stalled -= 1

        try:
            return await asyncio.wait_for(run_in_threadpool(tracked), timeout=deadline)
        except TimeoutError:
            with self._lock:
                if not state["finished"]:
                    state["abandoned"] = True
                    self._stalled += 1
            raise ReadsStalled(f"no answer from Dagster's storage within {deadline:g} s") from None
