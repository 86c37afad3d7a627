"""Everything the gateway asks of Dagster, over dagster-webserver's GraphQL API.

Runs are launched and terminated with `dagster_graphql.DagsterGraphQLClient`; the few queries
that client has no method for (dynamic partitions, a partition's newest run, a failure's
message) are sent as narrow GraphQL documents over httpx with a short timeout.

Exceptions::

    DagsterError            Dagster answered, but not with what we asked for
    └── DagsterUnavailable  Dagster did not answer (connection refused, timeout)

(both in `gateway.dagster_api.errors`).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import httpx
import requests
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError
from gql.transport import exceptions as gql_errors

from gateway.dagster_api.errors import DagsterError, DagsterUnavailable, readable_error
from gateway.dagster_api.models import RunInfo, run_info_from
from gateway.dagster_api.run_events import EVENT_TYPES, RunEvent, RunEventLog
from gateway.dagster_api.storage_reader import StorageRunReader
from gateway.settings import GatewaySettings
from jewel_dagster.contract import CHECK_NAME, PARTITION_TAG, PARTITIONS_NAME, json_logging_run_config

_FIRST_RUN = """
query FirstRun($tags: [ExecutionTag!]!) {
  runsOrError(filter: {tags: $tags}) {
    __typename
    ... on Runs { results { runId tags { key value } } }
  }
}"""

_RUNS_IN_FLIGHT = """
query RunsInFlight($tags: [ExecutionTag!]!) {
  runsOrError(filter: {tags: $tags, statuses: [QUEUED, NOT_STARTED, STARTING, STARTED, CANCELING]}) {
    __typename
    ... on Runs { count }
    ... on PythonError { message }
  }
}"""

_LATEST_RUN = """
query LatestRun($tags: [ExecutionTag!]!) {
  runsOrError(filter: {tags: $tags}, limit: 1) {
    __typename
    ... on Runs { results { runId jobName status endTime tags { key value } } }
    ... on PythonError { message }
  }
}"""

# A run's events after a cursor (gateway.dagster_api.run_events keeps what it read): every type
# comes back, only the asset and step events with their fields.
_RUN_EVENTS = """
query RunEvents($runId: ID!, $after: String) {
  logsForRun(runId: $runId, afterCursor: $after) {
    __typename
    ... on EventConnection {
      cursor
      hasMore
      events {
        __typename
        ... on MessageEvent { eventType stepKey timestamp }
        ... on MaterializationEvent { assetKey { path } }
        ... on AssetMaterializationPlannedEvent { assetKey { path } }
      }
    }
    ... on PythonError { message }
  }
}"""

_RUN_FAILURE = """
query RunFailure($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on ExecutionStepFailureEvent { stepKey error { message cause { message } } }
        ... on RunFailureEvent { message }
      }
    }
  }
}"""

_CHECK = """
query Check($partition: String!, $check: String!) {
  assetCheckExecutions(assetKey: {path: ["flux_metrics"]}, checkName: $check, partition: $partition, limit: 1) {
    runId
    status
    evaluation { success metadataEntries { label ... on TextMetadataEntry { text } } }
  }
}"""

_MATERIALIZATION_PATH = """
query MaterializationPath($assetKey: AssetKeyInput!, $partition: String!) {
  assetOrError(assetKey: $assetKey) {
    __typename
    ... on Asset {
      assetMaterializations(partitions: [$partition], limit: 1) {
        runId
        metadataEntries { label ... on TextMetadataEntry { text } }
      }
    }
  }
}"""

# One aliased field per asset (asset names are GraphQL names): one query for all of them.
_NEWEST_METADATA = """
  {alias}: assetOrError(assetKey: {{path: ["{asset}"]}}) {{
    ... on Asset {{
      assetMaterializations(partitions: [$partition], limit: 1) {{
        metadataEntries {{ label ... on TextMetadataEntry {{ text }} }}
      }}
    }}
  }}"""

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

# gql 4 wraps a refused connection in TransportConnectionFailed; gql 3 (what pip resolves with
# some dependency sets) lets the requests error through, which the requests errors beside it catch.
_GQL_CONNECTION_FAILED: tuple[type[Exception], ...] = tuple(
    error for error in (getattr(gql_errors, "TransportConnectionFailed", None),) if error is not None
)


_SETTLED = frozenset({"SUCCESS", "FAILURE", "CANCELED", "CANCELING"})
_ENDED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})  # a run in these states never changes again


class DagsterRuns:
    def __init__(self, settings: GatewaySettings) -> None:
        self._settings = settings
        self._selector = {
            "repositoryLocationName": settings.dagster_location_name,
            "repositoryName": settings.dagster_repository_name,
        }
        self._url = f"http://{settings.dagster_host}:{settings.dagster_port}/graphql"
        self._http = httpx.Client(timeout=settings.dagster_timeout_seconds)
        self._local = threading.local()
        self.launch_slots = threading.BoundedSemaphore(settings.max_parallel_launches)
        self._status_cache: dict[str, tuple[float, RunInfo | None]] = {}
        # The newest answer of each id and when its question was asked, final states included:
        # only for polls that waited while it was being asked (never answered by age).
        self._answers: dict[str, tuple[float, RunInfo | None]] = {}
        self._ended: dict[str, RunInfo] = {}  # each id's newest run once it ended, checked by its id
        self._cache_locks: dict[str, threading.Lock] = {}
        self._cache_guard = threading.Lock()
        self._refreshing: set[str] = set()
        self._epochs: dict[str, int] = {}  # bumped by forget(), so an older refresh cannot undo it
        self._clock = time.monotonic  # the status cache's clock (a test moves it by hand)
        self._refresher = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="status-refresh")
        self.launch_wait_seconds = settings.launch_wait_seconds
        self._ping_lock = threading.Lock()
        self._last_ping: tuple[float, bool] | None = None
        self._contact: tuple[float, bool] | None = None  # (monotonic time, answered) of the last GraphQL call
        self._storage = (
            StorageRunReader(int(settings.dagster_timeout_seconds * 1000))
            if settings.status_source == "storage"
            else None
        )
        self._events = RunEventLog(self._events_after)

    @property
    def _client(self) -> DagsterGraphQLClient:
        """One client per thread: its gql transport holds one session and is not thread-safe
        (shared across FastAPI's worker threads, concurrent launches failed)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = DagsterGraphQLClient(
                self._settings.dagster_host,
                port_number=self._settings.dagster_port,
                timeout=max(1, int(self._settings.dagster_timeout_seconds)),
            )
            self._local.client = client
        return client

    def close(self) -> None:
        self._refresher.shutdown(wait=False, cancel_futures=True)
        self._http.close()
        if self._storage is not None:
            self._storage.close()

    # ------------------------------------------------------------------ plumbing

    def _query(self, document: str, variables: dict[str, Any], attempts: int = 2, timeout: float | None = None) -> Any:
        """POST a GraphQL document; reads are retried once on a dropped connection."""
        last: Exception | None = None
        for _ in range(attempts):
            try:
                response = self._http.post(
                    self._url,
                    json={"query": document, "variables": variables},
                    timeout=timeout or self._settings.dagster_timeout_seconds,
                )
            except httpx.TransportError as exc:
                last = exc
                continue
            self._contact = (time.monotonic(), True)
            if response.status_code != 200:
                raise DagsterError(f"Dagster answered HTTP {response.status_code}: {response.text[:300]}")
            body = response.json()
            if body.get("errors"):
                raise DagsterError(f"Dagster GraphQL error: {body['errors'][0].get('message')}")
            return body["data"]
        self._contact = (time.monotonic(), False)
        raise DagsterUnavailable(f"Dagster is not reachable at {self._url}: {last}")

    def query(self, document: str, variables: dict[str, Any]) -> Any:
        """A read of our own (webhooks, tests); retried once on a dropped connection."""
        return self._query(document, variables)

    def _unwrap_client_error(self, exc: DagsterGraphQLClientError) -> DagsterError:
        cause = exc.__cause__
        if isinstance(
            cause, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, *_GQL_CONNECTION_FAILED)
        ):
            return DagsterUnavailable(f"Dagster did not answer in time at {self._url}")
        if cause is not None:
            return DagsterError(f"Dagster refused the request: {type(cause).__name__}: {str(cause)[:300]}")
        return DagsterError(f"Dagster refused the request: {str(exc.args[-1] if exc.args else exc)[:300]}")

    # ------------------------------------------------------------------ calls

    def ping(self, timeout: float | None = 2.0) -> bool:
        """Is Dagster answering? /health uses the short default; starts wait the full timeout."""
        try:
            self._query("{ version }", {}, attempts=1, timeout=timeout)
            return True
        except DagsterError:
            return False

    def reachable(self, max_age: float) -> bool:
        """Did Dagster answer a call of ours in the last `max_age` seconds, with none unanswered
        since? Else a `ping` (full timeout). What a start asks before storing anything: under
        load the launches answer it for free, where a ping would queue on the busy webserver."""
        contact = self._contact
        if contact is not None and contact[1] and time.monotonic() - contact[0] < max_age:
            return True
        return self.ping(timeout=None)

    def ping_cached(self, ttl: float = 2.0) -> bool:
        """`ping`, at most `ttl` old: /health is open to anyone, and must not be a way to load Dagster."""
        with self._ping_lock:
            if self._last_ping is not None and time.monotonic() - self._last_ping[0] < ttl:
                return self._last_ping[1]
            up = self.ping()
            self._last_ping = (time.monotonic(), up)
            return up

    def add_partition(self, request_id: str) -> None:
        data = self._query(
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
            self._query(
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
            run_id = self._client.submit_job_execution(
                job_name,
                repository_location_name=self._settings.dagster_location_name,
                repository_name=self._settings.dagster_repository_name,
                run_config=run_config,
                tags={**(tags or {}), PARTITION_TAG: request_id},
            )
        except DagsterGraphQLClientError as exc:
            error = self._unwrap_client_error(exc)
            self._contact = (time.monotonic(), not isinstance(error, DagsterUnavailable))
            raise error from exc
        self._contact = (time.monotonic(), True)
        return run_id

    def latest_run(self, request_id: str) -> RunInfo | None:
        """The newest run of the partition: a rerun or regeneration supersedes older runs."""
        return self.newest_run_tagged({PARTITION_TAG: request_id})

    def latest_run_cached(self, request_id: str) -> RunInfo | None:
        """`latest_run`, at most `status_ttl()` old, one query per id at a time.

        A frontend polls every couple of seconds and many may poll: without this, every poll
        is a GraphQL query (~100+ ms of webserver time) and a crowd of pollers slows the
        webserver for everyone, launches included. Only running states are cached (see
        `_refresh`). One that expired is returned at once while one background query refreshes
        it (stale-while-revalidate), so pollers never queue behind the query, but only while
        younger than half of `frontend_poll_seconds` (and `status_stale_seconds`): an older one
        predates the poller's previous poll, and the run's end would reach it one poll late.
        """
        ttl = self._settings.status_ttl()
        if ttl <= 0:
            return self.latest_run(request_id)
        ended = self._ended.get(request_id)
        if ended is not None and self._storage is not None:
            # An ended run never changes: while it is still the request's newest run (one
            # indexed read, so a newer run launched by any replica shows at once), it is the
            # answer. Re-reading it with its steps cost ~5 ms of CPU a poll.
            if self._storage.newest_run_id({PARTITION_TAG: request_id}) == ended.run_id:
                return ended
            with self._cache_guard:
                self._ended.pop(request_id, None)
        arrived = self._clock()
        hit = self._status_cache.get(request_id)
        if hit is not None:
            age = arrived - hit[0]
            if age < ttl:
                return hit[1]
            if age < self._settings.stale_status_limit():
                self._refresh_soon(request_id)
                return hit[1]
        with self._cache_guard:
            lock = self._cache_locks.setdefault(request_id, threading.Lock())
        with lock:
            # A poll that waited here takes the answer of a question asked after it arrived,
            # final states included: it is as new as asking again. Without this, every waiter
            # asked again in turn, and under 100 pollers a read slower than the TTL made each
            # answer stale on arrival: GET fell to ~80/s at a median of ~1 s (benchmarks.status).
            answer = self._answers.get(request_id)
            if answer is not None and answer[0] > arrived:
                return answer[1]
            hit = self._status_cache.get(request_id)
            if hit is not None and self._clock() - hit[0] < ttl:
                return hit[1]
            return self._refresh(request_id)

    def _refresh(self, request_id: str) -> RunInfo | None:
        epoch = self._epochs.get(request_id, 0)
        asked = self._clock()  # the answer is as old as the question, not as its arrival
        run = self.latest_run(request_id)
        with self._cache_guard:
            if self._epochs.get(request_id, 0) != epoch:
                return run  # forgotten meanwhile (a launch): this answer may predate the new run
            self._answers[request_id] = (asked, run)
            if len(self._answers) > 10_000:  # polls waiting on a refresh are few: forget them all
                self._answers = {request_id: (asked, run)}
            if run is not None and run.status in _ENDED:
                self._ended[request_id] = run
                if len(self._ended) > 10_000:  # ids nobody polls any more
                    self._ended = {request_id: run}
            if run is None or run.status in _SETTLED:
                # Only a running run is cached: it cannot be superseded (a generate on a running
                # request is refused), while another gateway replica may launch a newer run of
                # an ended (or not yet visible) request at any moment, and this replica's
                # forget() never hears of it. Callers stop polling an ended workflow anyway.
                self._status_cache.pop(request_id, None)
                return run
            self._status_cache[request_id] = (asked, run)
            if len(self._status_cache) > 10_000:  # forget the oldest half
                for key in sorted(self._status_cache, key=lambda k: self._status_cache[k][0])[:5_000]:
                    self._status_cache.pop(key, None)
                    self._cache_locks.pop(key, None)
                    self._epochs.pop(key, None)
        return run

    def _refresh_soon(self, request_id: str) -> None:
        with self._cache_guard:
            if request_id in self._refreshing:
                return
            self._refreshing.add(request_id)

        def refresh() -> None:
            try:
                self._refresh(request_id)
            except DagsterError:
                pass  # the entry ages out; the next poll after that asks (and reports) itself
            finally:
                with self._cache_guard:
                    self._refreshing.discard(request_id)

        self._refresher.submit(refresh)

    def forget(self, request_id: str) -> None:
        """Drop the cached state after an action that changes it (a launch, a cancel)."""
        with self._cache_guard:
            self._status_cache.pop(request_id, None)
            self._answers.pop(request_id, None)
            self._ended.pop(request_id, None)
            self._epochs[request_id] = self._epochs.get(request_id, 0) + 1
            if len(self._epochs) > 20_000:  # ids nobody polls; a refresh in flight is rarer still
                self._epochs = {request_id: self._epochs[request_id]}

    def newest_run_tagged(self, tags: dict[str, str]) -> RunInfo | None:
        if self._storage is not None:
            return self._storage.runs_tagged(tags)
        variables = {"tags": [{"key": k, "value": v} for k, v in tags.items()]}
        data = self._query(_LATEST_RUN, variables)["runsOrError"]
        if data["__typename"] != "Runs":
            raise DagsterError(data.get("message", data["__typename"]))
        if not data["results"]:
            return None
        raw = data["results"][0]
        assets, steps = self._events.read(raw["runId"])
        return replace(run_info_from(raw, assets), steps=steps)

    def with_progress(self, run: RunInfo) -> RunInfo:
        """The run with its planned and materialized assets and step statuses (where it is), for a
        run read without them (the webhook dispatcher's list of finished runs)."""
        if run.assets is not None:
            return run
        events = self._storage.events if self._storage is not None else self._events
        assets, steps = events.read(run.run_id)
        return replace(run, assets=assets, steps=steps)

    def _events_after(self, run_id: str, cursor: str | None) -> tuple[list[RunEvent], str | None]:
        """The run's asset and step events after `cursor`, over GraphQL (`logsForRun` pages)."""
        events: list[RunEvent] = []
        while True:
            data = self._query(_RUN_EVENTS, {"runId": run_id, "after": cursor})["logsForRun"]
            if data["__typename"] != "EventConnection":
                raise DagsterError(data.get("message", data["__typename"]))
            for raw in data["events"]:
                kind = raw.get("eventType")
                if kind not in EVENT_TYPES:
                    continue
                path = (raw.get("assetKey") or {}).get("path")
                timestamp = float(raw.get("timestamp") or 0) / 1000  # GraphQL gives milliseconds
                events.append(RunEvent(kind, raw.get("stepKey"), "/".join(path) if path else None, timestamp))
            cursor = data["cursor"] or cursor
            if not data["hasMore"] or not data["events"]:
                return events, cursor

    def runs_in_flight(self, tags: dict[str, str]) -> int:
        """How many runs with these tags are queued or running (GET /usage)."""
        variables = {"tags": [{"key": k, "value": v} for k, v in tags.items()]}
        data = self._query(_RUNS_IN_FLIGHT, variables)["runsOrError"]
        if data["__typename"] != "Runs":
            raise DagsterError(data.get("message", data["__typename"]))
        return int(data["count"])

    def first_run_tagged(self, tags: dict[str, str]) -> RunInfo | None:
        """The oldest run with these tags (runs come newest first; a request has few)."""
        if self._storage is not None:
            return self._storage.runs_tagged(tags, newest=False, with_steps=False)
        variables = {"tags": [{"key": k, "value": v} for k, v in tags.items()]}
        data = self._query(_FIRST_RUN, variables)["runsOrError"]
        if data["__typename"] != "Runs" or not data["results"]:
            return None
        run = data["results"][-1]
        return RunInfo(run["runId"], "", "", [], {t["key"]: t["value"] for t in run["tags"]})

    def failure_of(self, run_id: str) -> tuple[str | None, str]:
        """(failed step key, a message a person can read) of a failed run."""
        data = self._query(_RUN_FAILURE, {"runId": run_id})["logsForRun"]
        events = data.get("events", []) if data["__typename"] == "EventConnection" else []
        for event in events:
            if event["__typename"] == "ExecutionStepFailureEvent":
                error = event.get("error") or {}
                message = readable_error(error.get("message") or "")
                cause = (error.get("cause") or {}).get("message")
                if cause:  # e.g. "Exceeded max_retries of 3": the cause is what a person needs
                    message = f"{readable_error(cause)} ({message})"
                return event["stepKey"], message
        for event in events:
            if event["__typename"] == "RunFailureEvent":
                return None, event["message"]
        return None, "the run failed"

    def fidelity_check(self, request_id: str) -> dict[str, Any] | None:
        """The newest `fidelity` check result of the request: {"passed", "status", "violations"},
        and "reason" when the metrics could not be measured."""
        executions = self._query(_CHECK, {"partition": request_id, "check": CHECK_NAME})["assetCheckExecutions"]
        if not executions:
            return None
        newest = executions[0]
        evaluation = newest.get("evaluation") or {}
        texts = {e["label"]: e.get("text") for e in evaluation.get("metadataEntries", [])}
        return {
            "passed": evaluation.get("success"),
            "status": newest["status"],
            "violations": texts.get("violations"),
            "runId": newest["runId"],
            **({"reason": texts["reason"]} if texts.get("reason") else {}),
        }

    def artifact_path(self, request_id: str, asset: str) -> str | None:
        """The blob path of the request's newest materialization of `asset` (its `path` metadata,
        written by the IO manager); None when it has none (never materialized, or stored before
        materializations named their path)."""
        if self._storage is not None:
            return self._storage.newest_texts(request_id, asset).get("path") or None
        data = self._query(_MATERIALIZATION_PATH, {"assetKey": {"path": [asset]}, "partition": request_id})
        found = data["assetOrError"]
        for materialization in found.get("assetMaterializations") or []:
            for entry in materialization.get("metadataEntries", []):
                if entry.get("label") == "path" and entry.get("text"):
                    return str(entry["text"])
        return None

    def backends_of(self, request_id: str, assets: Iterable[str]) -> dict[str, str]:
        """asset -> the implementation its newest materialization of the request names (its
        `backend` metadata, or `model` for a generation without an image); assets whose newest
        materialization names none (a step that called no service) are left out."""
        names = list(dict.fromkeys(assets))
        if not names:
            return {}
        if self._storage is not None:
            texts = {name: self._storage.newest_texts(request_id, name) for name in names}
            named = {name: t.get("backend") or t.get("model") for name, t in texts.items()}
            return {name: backend for name, backend in named.items() if backend}
        fields = "".join(_NEWEST_METADATA.format(alias=f"a{i}", asset=name) for i, name in enumerate(names))
        data = self._query(f"query Backends($partition: String!) {{{fields}\n}}", {"partition": request_id})
        backends = {}
        for i, name in enumerate(names):
            for materialization in (data.get(f"a{i}") or {}).get("assetMaterializations") or []:
                texts = {e["label"]: e.get("text") for e in materialization.get("metadataEntries", [])}
                backend = texts.get("backend") or texts.get("model")
                if backend:
                    backends[name] = str(backend)
        return backends

    def terminate(self, run_id: str) -> None:
        try:
            self._client.terminate_run(run_id)
        except DagsterGraphQLClientError as exc:
            raise self._unwrap_client_error(exc) from exc
