"""A launch refused because the code location is down or reloading (a code server restarted) is
503 with Retry-After, not 502: the chaos soak's code-server kills found /workflow/generate, which
launches inside the call, answering 502 "the pipeline refused the request" for both messages below
(the webserver's words, from the soak's gateway logs)."""

from __future__ import annotations

import pytest
from dagster_graphql import DagsterGraphQLClientError

from gateway.dagster_api.errors import DagsterError, DagsterUnavailable
from gateway.dagster_api.transport import GraphQLTransport
from gateway.settings import GatewaySettings
from gateway.workflows.errors import pipeline_unavailable

UNREACHABLE = (
    "PythonError",
    "dagster._core.errors.DagsterUserCodeUnreachableError: Could not reach user code server. "
    "gRPC Error code: UNAVAILABLE\n",
)
RELOADING = ("PipelineNotFoundError", "Could not find Pipeline jewel_dagster.__repository__.jewelry_generate")
INVALID = ("RunConfigValidationInvalid", "Received unexpected config entry \"bogus\" at the root.")


@pytest.fixture
def transport() -> GraphQLTransport:
    return GraphQLTransport(GatewaySettings())


@pytest.mark.parametrize("args", [UNREACHABLE, RELOADING], ids=["unreachable", "reloading"])
def test_a_code_location_down_is_unavailable_and_503(transport: GraphQLTransport, args: tuple[str, str]) -> None:
    error = transport.client_error(DagsterGraphQLClientError(*args))
    assert isinstance(error, DagsterUnavailable), error
    answer = pipeline_unavailable(error)
    assert answer.status_code == 503 and answer.headers == {"Retry-After": "5"}
    assert "retry shortly" in answer.detail


def test_a_real_refusal_stays_502(transport: GraphQLTransport) -> None:
    error = transport.client_error(DagsterGraphQLClientError(*INVALID))
    assert type(error) is DagsterError
    assert pipeline_unavailable(error).status_code == 502
