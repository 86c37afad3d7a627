"""Start multiprocessing's forkserver as a fork of this process, with its preloads already imported.

The warm code server's run workers come from a forkserver (processes/warm_code_server.py).
multiprocessing starts one the first time a worker is needed, as a fresh interpreter
(`python -c 'from multiprocessing.forkserver import main; ...'`) that then imports the preloads:
Dagster, numpy, OpenCV, this code location and the warm-up of processes/worker_warmup.py, about
3.5 CPU-s, paid while the first request of a code server waits for its run to start. The code
server imports most of that anyway to serve its code location. So before it starts any thread,
the code server imports Dagster, its code location and the workers' warm-up (which opens the
instance: before Dagster's server opens it, never beside it) and forks the forkserver from itself, which
imports the rest of the preloads beside the code server's start: the same
`multiprocessing.forkserver.main`, the same socket protocol, nothing imported twice, and the
first request finds it running.

A fork is only safe while no other thread can hold a lock the child needs (it would stay held in
the child for ever): so it happens only while the process runs no Python thread but its main one
(before Dagster's gRPC server, heartbeat and cleanup threads); with more, this does nothing and
multiprocessing starts its own forkserver at the first run, as before. So does a forkserver that
died: multiprocessing starts a fresh one. Native threads are allowed: numpy's OpenBLAS and OpenCV
start idle thread pools at import (2 threads here), and every forkserver, the spawned one
included, has imported them and forks each run worker with them there; OpenBLAS resets its pool
in a forked child (pthread_atfork).

Private symbols of the standard library used (checked against CPython 3.11):
- `multiprocessing.forkserver._forkserver` (the process's `ForkServer`) and its fields
  `_lock`, `_forkserver_address`, `_forkserver_alive_fd`, `_forkserver_pid`, `_preload_modules`:
  set as its own `ensure_running()` sets them after it spawned the server, so that
  `ensure_running()` finds it alive and `connect_to_new_process()` connects to it.
- `multiprocessing.connection.arbitrary_address`, `multiprocessing.util.is_abstract_socket_namespace`.
Canary: tests/e2e/test_warm_code_server.py (the forkserver's parent is the code server, and the run
workers' parent is the forkserver).
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
from multiprocessing import connection, forkserver, resource_tracker, util
from typing import Any

_log = logging.getLogger(__name__)

# The names (/proc/PID/comm) of the forked forkserver and of the run workers it forks.
FORKSERVER_NAME = "forkserver"
RUN_WORKER_NAME = "run_worker"


def _name_process(name: str) -> None:
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(name)
    except OSError:  # not Linux: names are only for people reading `ps`
        pass


def python_thread_count() -> int:
    """This process's Python threads (native pools of numpy and OpenCV are not counted)."""
    return threading.active_count()


def start_forked_forkserver(preload: list[str], imported_first: list[str]) -> int | None:
    """Import `imported_first`, fork this process into multiprocessing's forkserver, which then
    imports the rest of `preload`; the forkserver's pid.

    `imported_first` is what this process needs itself (the code server: Dagster and its code
    location); the rest (the workers' warm-up, the Gemini SDK, codecs) is imported by the
    forkserver alone, beside this process's own start. None when nothing was started: the
    process runs another Python thread, or a forkserver runs already. Call it before starting
    any thread (a gRPC server's, a heartbeat's).
    """
    server: Any = forkserver._forkserver  # the process-wide ForkServer (its fields are private)
    for module in imported_first:
        try:
            importlib.import_module(module)
        except ImportError:  # as multiprocessing's forkserver does: a preload is an optimisation
            _log.warning("the forkserver preload %s does not import", module)
    with server._lock:
        if server._forkserver_pid is not None:
            return None
        resource_tracker.ensure_running()  # its fd goes to each worker, as in ensure_running()
        if python_thread_count() != 1:
            _log.warning("threads run already: multiprocessing will spawn the forkserver at the first run")
            return None
        server._preload_modules = list(preload)
        with socket.socket(socket.AF_UNIX) as listener:
            address = connection.arbitrary_address("AF_UNIX")  # type: ignore[attr-defined]
            listener.bind(address)
            if not util.is_abstract_socket_namespace(address):
                os.chmod(address, 0o600)
            listener.listen()
            # Every client holds the write end of "alive"; the server exits once all have closed it.
            alive_r, alive_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the forkserver; it never returns
                _serve(listener.fileno(), alive_r, list(preload))
            os.close(alive_r)
        server._forkserver_address = address
        server._forkserver_alive_fd = alive_w
        server._forkserver_pid = pid
    return pid


def _serve(listener_fd: int, alive_r: int, preload: list[str]) -> None:
    """The forked child: keep only what a spawned forkserver would be handed, then serve."""
    code = 1
    try:
        # As `spawnv_passfds` does for a spawned one: standard streams, the listener and the read
        # end of "alive" only. Above all the write end of "alive" must go, or the server would
        # keep itself alive after the code server died.
        keep = sorted({0, 1, 2, listener_fd, alive_r})
        os.closerange(3, keep[3])
        for low, high in zip(keep[3:], [*keep[4:], os.sysconf("SC_OPEN_MAX")], strict=True):
            os.closerange(low + 1, high)
        # Named for `ps` and /proc (a forked process keeps its parent's command line): this one
        # "forkserver", each worker it forks "run_worker".
        _name_process(FORKSERVER_NAME)
        os.register_at_fork(after_in_child=lambda: _name_process(RUN_WORKER_NAME))
        # main() imports the preloads (those imported before the fork are there already).
        forkserver.main(listener_fd, alive_r, preload)
        code = 0
    except SystemExit as exit_:  # main() raises it when the last client closed "alive"
        code = exit_.code if isinstance(exit_.code, int) else 0
    finally:
        os._exit(code)
