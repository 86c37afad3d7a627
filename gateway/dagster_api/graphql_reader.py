"""Runs read over dagster-webserver's GraphQL (STATUS_SOURCE=graphql, the default).

Narrow documents, each asking only the fields the gateway uses. Also the reads that have no
storage counterpart here (runs in flight): whichever source reads run status, those go over
GraphQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from gateway.dagster_api.errors import DagsterError, readable_error
from gateway.dagster_api.models import RunInfo, run_info_from
from gateway.dagster_api.run_events import EVENT_TYPES, RunEvent, RunEventLog
from gateway.dagster_api.transport import GraphQLTransport
from jewel_dagster.contract import CHECK_NAME

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

_LISTED_RUNS = """
query ListedRuns($tags: [ExecutionTag!]!, $statuses: [RunStatus!], $after: Float, $before: Float, $limit: Int) {
  runsOrError(
    filter: {tags: $tags, statuses: $statuses, updatedAfter: $after, updatedBefore: $before}
    limit: $limit
  ) {
    __typename
    ... on Runs { results { runId jobName status endTime updateTime tags { key value } } }
    ... on PythonError { message }
  }
}"""

_LATEST_RUN_ID = """
query LatestRunId($tags: [ExecutionTag!]!) {
  runsOrError(filter: {tags: $tags}, limit: 1) {
    __typename
    ... on Runs { results { runId } }
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

# One aliased field per asset (asset names are GraphQL names): one query for all of them.
_NEWEST_METADATA = """
  {alias}: assetOrError(assetKey: {{path: ["{asset}"]}}) {{
    ... on Asset {{
      assetMaterializations(partitions: [$partition], limit: 1) {{
        metadataEntries {{ label ... on TextMetadataEntry {{ text }} }}
      }}
    }}
  }}"""


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in tags.items()]


class GraphQLRunReader:
    """`RunReader` over GraphQL, plus the GraphQL-only reads."""

    def __init__(self, transport: GraphQLTransport) -> None:
        self._transport = transport
        self.events = RunEventLog(self.events_after)

    def close(self) -> None:
        pass  # the transport is the caller's

    def runs_tagged(self, tags: dict[str, str], newest: bool = True, with_steps: bool = True) -> RunInfo | None:
        if not newest:  # the oldest: runs come newest first, and a request has few
            data = self._transport.query(_FIRST_RUN, {"tags": _tag_list(tags)})["runsOrError"]
            if data["__typename"] != "Runs" or not data["results"]:
                return None
            run = data["results"][-1]
            return RunInfo(run["runId"], "", "", [], {t["key"]: t["value"] for t in run["tags"]})
        data = self._transport.query(_LATEST_RUN, {"tags": _tag_list(tags)})["runsOrError"]
        if data["__typename"] != "Runs":
            raise DagsterError(data.get("message", data["__typename"]))
        if not data["results"]:
            return None
        raw = data["results"][0]
        if not with_steps:
            return run_info_from(raw)
        assets, steps = self.events.read(raw["runId"])
        return replace(run_info_from(raw, assets), steps=steps)

    def runs_listed(
        self,
        tags: dict[str, str],
        statuses: Sequence[str],
        updated_after: float | None = None,
        updated_before: float | None = None,
        limit: int = 100,
    ) -> list[RunInfo]:
        variables = {
            "tags": _tag_list(tags),
            "statuses": list(statuses),
            "after": updated_after,
            "before": updated_before,
            "limit": limit,
        }
        data = self._transport.query(_LISTED_RUNS, variables)["runsOrError"]
        if data["__typename"] != "Runs":
            raise DagsterError(data.get("message", data["__typename"]))
        return [run_info_from(raw) for raw in data["results"]]

    def newest_run_id(self, tags: dict[str, str]) -> str | None:
        data = self._transport.query(_LATEST_RUN_ID, {"tags": _tag_list(tags)})["runsOrError"]
        if data["__typename"] != "Runs":
            raise DagsterError(data.get("message", data["__typename"]))
        return str(data["results"][0]["runId"]) if data["results"] else None

    def events_after(self, run_id: str, cursor: str | None) -> tuple[list[RunEvent], str | None]:
        """The run's asset and step events after `cursor` (`logsForRun` pages)."""
        events: list[RunEvent] = []
        while True:
            data = self._transport.query(_RUN_EVENTS, {"runId": run_id, "after": cursor})["logsForRun"]
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

    def newest_texts_of(self, request_id: str, assets: Sequence[str]) -> dict[str, dict[str, str]]:
        names = list(dict.fromkeys(assets))
        if not names:
            return {}
        fields = "".join(_NEWEST_METADATA.format(alias=f"a{i}", asset=name) for i, name in enumerate(names))
        data = self._transport.query(f"query Texts($partition: String!) {{{fields}\n}}", {"partition": request_id})
        texts: dict[str, dict[str, str]] = {}
        for i, name in enumerate(names):
            texts[name] = {}
            for materialization in (data.get(f"a{i}") or {}).get("assetMaterializations") or []:
                entries = materialization.get("metadataEntries", [])
                texts[name] = {e["label"]: str(e["text"]) for e in entries if e.get("text") is not None}
        return texts

    def failure_of(self, run_id: str) -> tuple[str | None, str]:
        """(failed step key, a message a person can read) of a failed run."""
        data = self._transport.query(_RUN_FAILURE, {"runId": run_id})["logsForRun"]
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
        query = self._transport.query
        executions = query(_CHECK, {"partition": request_id, "check": CHECK_NAME})["assetCheckExecutions"]
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

    # ------------------------------------------------------------------ GraphQL-only reads

    def runs_in_flight(self, tags: dict[str, str]) -> int:
        """How many runs with these tags are queued or running (GET /usage)."""
        data = self._transport.query(_RUNS_IN_FLIGHT, {"tags": _tag_list(tags)})["runsOrError"]
        if data["__typename"] != "Runs":
            raise DagsterError(data.get("message", data["__typename"]))
        return int(data["count"])
