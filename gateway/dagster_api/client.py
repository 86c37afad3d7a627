"""Everything the gateway asks of Dagster, in one object the routes hold: `DagsterRuns`.

It puts together the pieces, each a module with one job:

    transport.GraphQLTransport   the wire: GraphQL documents, DagsterGraphQLClient per thread, pings
    run_reader.RunReader         what is read of runs, from one of two sources (STATUS_SOURCE):
    ├── graphql_reader           dagster-webserver's GraphQL (default)
    └── storage_reader           the run and event storage under DAGSTER_HOME, in-process
    status_cache.StatusCache     each request's newest run, answered from memory while it may be

Runs are launched and terminated with `dagster_graphql.DagsterGraphQLClient` and partitions added
over GraphQL, whichever source reads. Exceptions::

    DagsterError            Dagster answered, but not with what we asked for
    └── DagsterUnavailable  Dagster did not answer (connection refused, timeout)

(both in `gateway.dagster_api.errors`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from dagster_graphql import DagsterGraphQLClientError

from gateway.dagster_api.errors import DagsterError, DagsterUnavailable
from gateway.dagster_api.graphql_reader import GraphQLRunReader
from gateway.dagster_api.models import RunInfo
from gateway.dagster_api.run_reader import RunReader
from gateway.dagster_api.status_cache import StatusCache
from gateway.dagster_api.storage_reader import StorageRunReader
from gateway.dagster_api.transport import GraphQLTransport
from gateway.settings import GatewaySettings
from jewel_dagster.contract import PARTITION_TAG, PARTITIONS_NAME, json_logging_run_config
from jewel_dagster.run_end_notices import RunEndListener

_ADD_PARTITION = """
mutation AddPartition($selector: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""

_DELETE_PARTITION = """
mutation DeletePartition($selector: RepositorySelector!, $name: String!, $key: String!) {
  deleteDynamicPartitions(repositorySelector: $selector, partitionsDefName: $name, partitionKeys: [$key]) {
    __typename
  }
}"""


class DagsterRuns:
    def __init__(self, settings: GatewaySettings) -> None:
        self._settings = settings
        self._selector = {
            "repositoryLocationName": settings.dagster_location_name,
            "repositoryName": settings.dagster_repository_name,
        }
        self.launch_slots = threading.BoundedSemaphore(settings.max_parallel_launches)
        self.launch_wait_seconds = settings.launch_wait_seconds
        self.transport = GraphQLTransport(settings)
        self.graphql = GraphQLRunReader(self.transport)
        self.reader: RunReader = (
            StorageRunReader(int(settings.dagster_timeout_seconds * 1000))
            if settings.status_source == "storage"
            else self.graphql
        )
        storage = self.reader if isinstance(self.reader, StorageRunReader) else None
        self.status = StatusCache(
            # Late-bound: `latest_run` is what a test stands in for.
            lambda request_id: self.latest_run(request_id),
            settings.status_ttl,
            settings.stale_status_limit,
            # Over GraphQL an id costs the webserver a query, as the run itself nearly does.
            (lambda request_id: self.reader.newest_run_id({PARTITION_TAG: request_id})) if storage else None,
            storage.queued_run_ids if storage else None,
        )

        # A run's end told by its run worker on this machine (the storage source: same DAGSTER_HOME)
        # reaches the next poll at once instead of after the cached state expires.
        self._run_ends = (
            RunEndListener(os.environ["DAGSTER_HOME"], self.status.run_ended)
            if settings.status_source == "storage" and settings.status_ttl() > 0 and os.environ.get("DAGSTER_HOME")
            else None
        )

    def close(self) -> None:
        if self._run_ends is not None:
            self._run_ends.close()
        self.status.close()
        self.transport.close()
        self.reader.close()

    # ------------------------------------------------------------------ liveness

    def query(self, document: str, variables: dict[str, Any]) -> Any:
        """A read of our own (webhooks, tests); retried once on a dropped connection."""
        return self.transport.query(document, variables)

    def ping(self, timeout: float | None = 2.0) -> bool:
        return self.transport.ping(timeout)

    def reachable(self, max_age: float) -> bool:
        return self.transport.reachable(max_age)

    def ping_cached(self, ttl: float = 2.0) -> bool:
        return self.transport.ping_cached(ttl)

    # ------------------------------------------------------------------ changes

    def add_partition(self, request_id: str) -> None:
        data = self.transport.query(
            _ADD_PARTITION, {"selector": self._selector, "name": PARTITIONS_NAME, "key": request_id}, attempts=1
        )
        answer = data["addDynamicPartition"]
        if answer["__typename"] not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
            message = f"could not add partition {request_id}: {answer.get('message', answer['__typename'])}"
            if answer["__typename"] == "UnauthorizedError":
                # What the webserver answers while it has no loaded code location to find the
                # partitions definition in: for a few seconds after the code server restarted
                # (measured: tests/e2e/test_process_faults.py). A retry soon works: 503, not 502.
                raise DagsterUnavailable(f"Dagster's code location is not loaded (restarting?): {message}")
            raise DagsterError(message)

    def delete_partition(self, request_id: str) -> None:
        """Best effort: undo add_partition when the launch after it failed."""
        try:
            self.transport.query(
                _DELETE_PARTITION, {"selector": self._selector, "name": PARTITIONS_NAME, "key": request_id}, attempts=1
            )
        except DagsterError:
            pass

    def launch(
        self, job_name: str, request_id: str, run_config: dict[str, Any], tags: dict[str, str] | None = None
    ) -> str:
        """Launch `job_name` for one request partition; not retried, as it is not idempotent."""
        if self._settings.log_format == "json":  # the run logs JSON lines too
            run_config = {**run_config, **json_logging_run_config()}
        try:
            run_id = self.transport.client.submit_job_execution(
                job_name,
                repository_location_name=self._settings.dagster_location_name,
                repository_name=self._settings.dagster_repository_name,
                run_config=run_config,
                tags={**(tags or {}), PARTITION_TAG: request_id},
            )
        except DagsterGraphQLClientError as exc:
            raise self.transport.client_error(exc) from exc
        self.transport.answered()
        return run_id

    def terminate(self, run_id: str) -> None:
        try:
            self.transport.client.terminate_run(run_id)
        except DagsterGraphQLClientError as exc:
            raise self.transport.client_error(exc) from exc

    # ------------------------------------------------------------------ runs

    def latest_run(self, request_id: str) -> RunInfo | None:
        """The newest run of the partition: a rerun or regeneration supersedes older runs."""
        return self.newest_run_tagged({PARTITION_TAG: request_id})

    def latest_run_cached(self, request_id: str) -> RunInfo | None:
        """`latest_run`, answered from `StatusCache` while that is true (what every poll asks)."""
        return self.status.latest(request_id)

    def remembered_run(self, request_id: str) -> RunInfo | None:
        """The request's running run when `StatusCache` holds one it may answer without a read;
        None when `latest_run_cached` must be asked (it may read). Never blocks."""
        return self.status.remembered(request_id)

    def forget(self, request_id: str) -> None:
        """Drop the cached state after an action that changes it (a launch, a cancel)."""
        self.status.forget(request_id)

    def newest_run_tagged(self, tags: dict[str, str]) -> RunInfo | None:
        return self.reader.runs_tagged(tags)

    def first_run_tagged(self, tags: dict[str, str]) -> RunInfo | None:
        """The oldest run with these tags (its tags only: the owner is on the request's first run)."""
        return self.reader.runs_tagged(tags, newest=False, with_steps=False)

    def with_progress(self, run: RunInfo) -> RunInfo:
        """The run with its planned and materialized assets and step statuses (where it is), for a
        run read without them (the webhook dispatcher's list of finished runs)."""
        if run.assets is not None:
            return run
        assets, steps = self.reader.events.read(run.run_id)
        return replace(run, assets=assets, steps=steps)

    def runs_in_flight(self, tags: dict[str, str]) -> int:
        """How many runs with these tags are queued or running (GET /usage)."""
        return self.graphql.runs_in_flight(tags)

    def failure_of(self, run_id: str) -> tuple[str | None, str]:
        """(failed step key, a message a person can read) of a failed run (RunReader.failure_of):
        read from the storage with STATUS_SOURCE=storage, so a FAILED answer needs no webserver."""
        return self.reader.failure_of(run_id)

    def fidelity_check(self, request_id: str) -> dict[str, Any] | None:
        """The newest `fidelity` check result of the request (RunReader.fidelity_check): read from
        the storage with STATUS_SOURCE=storage, so a COMPLETED result needs no webserver."""
        return self.reader.fidelity_check(request_id)

    def artifact_path(self, request_id: str, asset: str) -> str | None:
        """The blob path of the request's newest materialization of `asset` (its `path` metadata,
        written by the IO manager); None when it has none (never materialized, or stored before
        materializations named their path)."""
        return self.reader.newest_texts_of(request_id, [asset]).get(asset, {}).get("path") or None

    def backends_of(self, request_id: str, assets: Iterable[str]) -> dict[str, str]:
        """asset -> the implementation its newest materialization of the request names (its
        `backend` metadata, or `model` for a generation without an image); assets whose newest
        materialization names none (a step that called no service) are left out."""
        texts = self.reader.newest_texts_of(request_id, list(dict.fromkeys(assets)))
        named = {name: t.get("backend") or t.get("model") for name, t in texts.items()}
        return {name: str(backend) for name, backend in named.items() if backend}
