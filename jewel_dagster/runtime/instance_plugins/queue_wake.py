"""The run queue's wake-up: a datagram that asks the queue daemon to dequeue now.

Kept apart from the daemon's loop (processes/queue_daemon.py) so that what sends it (the coordinator in the
webserver, the event log storage in every run worker) imports no daemon code.

The wake is a datagram on a Linux abstract Unix socket named after the instance's DAGSTER_HOME:
processes of one instance on one machine reach each other (the embedded default: webserver,
daemon, code server and its run workers) and nothing else; no file to create or clean up.
Processes in other containers or machines do not reach it: their runs wait for the poll.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket

import dagster as dg

from jewel_dagster import run_end_notices

# A run that ends frees its place in the queue.
RUN_END_EVENTS = frozenset(
    {dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_CANCELED}
)


def wake_address(instance: dg.DagsterInstance) -> str:
    """The abstract socket name of this instance's queue daemon (leading NUL: no file)."""
    home = os.path.realpath(instance.root_directory)
    return "\0jewel-run-queue-" + hashlib.sha256(home.encode()).hexdigest()[:24]


# What a wake says. A run's end is stored in the event log before the run's status is updated
# (Dagster's `handle_new_event`), and our storage wakes from the first: the iteration it wakes
# may still count the run in flight, so the daemon looks again a moment later (queue_daemon.py).
QUEUED = b"w"
RUN_ENDED = b"e"


def wake(instance: dg.DagsterInstance, why: bytes = QUEUED) -> bool:
    """Ask the queue daemon of `instance` for a dequeue iteration now; False when none listens
    here (another machine or container, or a daemon that polls): it then dequeues at its poll."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)  # a full buffer already holds a wake: never wait
        sock.sendto(why, wake_address(instance))
        return True
    return False


def wake_on_run_end(instance: dg.DagsterInstance, event: dg.EventLogEntry) -> None:
    """Wake the queue when `event` ends a run, and tell the gateways that answer its status
    (jewel_dagster/run_end_notices.py; called by our event log storages)."""
    dagster_event = event.dagster_event
    if dagster_event is not None and dagster_event.event_type in RUN_END_EVENTS:
        wake(instance, RUN_ENDED)
        with contextlib.suppress(OSError):  # a hint: the gateways' cache expiry tells the end anyway
            run_end_notices.notify(instance.root_directory, event.run_id)
