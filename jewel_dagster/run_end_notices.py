"""A run's end, told at once to the gateways on this machine that answer its status.

A gateway answers polls from its status cache and reads a running run again only when the kept
state is `STATUS_CACHE_SECONDS` (0.25 s) old: a run's end reached a poll ~0.13 s late on average,
plus the poll that was answered stale while the read ran (`benchmarks.orchestration`, "end -> GET
COMPLETED", median 0.17-0.2 s with instant backends). The process that stores a run's end (our
event log storage, in the run worker) now sends the run id in a datagram to every gateway of the
same instance on this machine, which drops what it keeps of that run: the next poll reads the end.

Like the run queue's wake (runtime/instance_plugins/queue_wake.py), a notice travels on Linux
abstract Unix sockets named after the instance's DAGSTER_HOME: no file to create or clean up, and
only processes of one instance on one machine reach each other. Each listening process binds a
name of its own (the prefix, its pid and a counter), and a sender finds the listeners in
/proc/net/unix. A notice is a hint: one lost (a full buffer, another container, a gateway that
reads over GraphQL) leaves the status cache's expiry to tell the end, as before.

Imports nothing of ours and no Dagster: the pipeline's storage and the gateway both use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

_log = logging.getLogger(__name__)
_PROC_UNIX = Path("/proc/net/unix")
_counter = itertools.count()
MAX_RUN_ID_BYTES = 200  # a Dagster run id is a 36-character UUID


def name_prefix(dagster_home: str) -> str:
    """The abstract socket names of the listeners of this instance begin so (leading NUL)."""
    home = os.path.realpath(dagster_home)
    return "\0jewel-run-end-" + hashlib.sha256(home.encode()).hexdigest()[:24] + "-"


def listeners(dagster_home: str) -> list[str]:
    """The bound names of this instance's listeners on this machine (from /proc/net/unix, where
    an abstract name shows with `@` for its leading NUL)."""
    shown = "@" + name_prefix(dagster_home)[1:]
    try:
        lines = _PROC_UNIX.read_text().splitlines()[1:]
    except OSError:
        return []
    names = {fields[7] for line in lines if len(fields := line.split()) >= 8}  # the 8th field: the path
    return sorted("\0" + name[1:] for name in names if name.startswith(shown))


def notify(dagster_home: str, run_id: str) -> int:
    """Tell every listener of the instance that `run_id` ended; how many were sent the notice.
    Never waits: a listener whose buffer is full misses this one."""
    sent = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for name in listeners(dagster_home):
            with contextlib.suppress(OSError):  # gone since /proc was read, or its buffer is full
                sock.sendto(run_id.encode(), name)
                sent += 1
    return sent


class RunEndListener:
    """Receives the notices of one instance in a daemon thread and hands each run id to
    `on_end` (which must not raise, and should be quick: notices queue behind it)."""

    def __init__(self, dagster_home: str, on_end: Callable[[str], object]) -> None:
        self._on_end = on_end
        self._closed = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.name = f"{name_prefix(dagster_home)}{os.getpid()}-{next(_counter)}"
        self._sock.bind(self.name)
        self._thread = threading.Thread(target=self._serve, name="run-end-notices", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data = self._sock.recv(MAX_RUN_ID_BYTES)
            except OSError:
                return  # closed
            if self._closed:
                return  # close() woke us
            if not data:
                continue
            try:
                self._on_end(data.decode(errors="replace"))
            except Exception:  # noqa: BLE001 - a notice is a hint; the status cache's expiry still tells the end
                _log.exception("a run-end notice could not be applied")

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as waker:
            waker.sendto(b"", self.name)  # an empty datagram ends the thread's recv
        self._thread.join(timeout=2.0)
        self._sock.close()
