"""Dagster's code server with warm run workers: `python -m jewel_dagster.runtime.warm_code_server -p 4000`.

Stock Dagster starts every run worker with multiprocessing's *spawn*: a fresh interpreter that
imports Dagster, numpy, OpenCV and this code location before the first step runs, about 2 s of
CPU per request on these machines. Here the code server starts its run workers from a
*forkserver* that has imported all of that once, so a worker begins with the modules loaded.
Everything else is Dagster's own `dagster api grpc` (same options, same gRPC API, same run
worker entry point), so the UI, run monitoring, termination and retries work unchanged.

`CODE_SERVER=managed` (devtools.stack) keeps the stock path: the webserver and daemon then
spawn their own code servers from workspace.yaml.

Private symbols used (checked against dagster 1.13.27):
- `dagster._grpc.server.DagsterApiServer`: subclassed; its `_mp_ctx` (a spawn context) replaced.
- `dagster._grpc.impl`: preloaded in the forkserver (the run worker's entry point).
- `dagster._cli.api.grpc_command`: imports `DagsterApiServer` from `dagster._grpc.server` when
  called, so replacing the module attribute hands it ours. If that import moves, the server
  still works but spawns its workers: the canary test sees a worker that was not forked.
Canary: tests/e2e/test_warm_code_server.py (the run worker's parent, from /proc, is the forkserver).
"""

from __future__ import annotations

import multiprocessing
import sys
from typing import Any

import dagster._grpc.server as dagster_grpc_server  # the class `dagster api grpc` instantiates

# Imported once in the forkserver; every run worker forked from it starts with them loaded.
PRELOAD = ["dagster", "dagster._grpc.impl", "jewel_dagster.definitions"]


class WarmApiServer(dagster_grpc_server.DagsterApiServer):
    """DagsterApiServer whose run workers come from a preloaded forkserver instead of spawn."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        self._mp_ctx = context  # type: ignore[assignment]  # Dagster declares a SpawnContext


def main(argv: list[str] | None = None) -> None:
    from dagster._cli.api import grpc_command

    # `grpc_command` imports DagsterApiServer from the module when called: hand it ours.
    dagster_grpc_server.DagsterApiServer = WarmApiServer  # type: ignore[misc]
    grpc_command.main(args=argv if argv is not None else sys.argv[1:], prog_name="jewel-code-server")


if __name__ == "__main__":
    main()
