"""devtools.stack's wait for Celery workers asks again when the broker drops its connection.

The CI soak's chaos restarted a killed Celery worker a little after a Redis restart: the restart
itself worked, but the first ping of the wait raised redis' "Connection closed by server", which
ended the wait, and the soak reported the worker as never back. The broker that drops the one
connection at that moment is stood in for by an app whose first ping raises it (the only mock
here: a real Redis cannot be made to close one client's connection at a chosen call without
closing the other tests' too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celery
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from devtools.stack import Stack


class _BrokerDroppingOnce:
    """A Celery app whose first ping fails as a restarted Redis's first command did."""

    pings = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.control = self

    def ping(self, destination: list[str], timeout: float) -> list[dict[str, Any]]:
        type(self).pings += 1
        if type(self).pings == 1:
            raise RedisConnectionError("Connection closed by server.")
        return [{name: {"ok": "pong"}} for name in destination]

    def close(self) -> None:
        pass


def test_a_dropped_broker_connection_is_asked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(celery, "Celery", _BrokerDroppingOnce)
    stack = Stack({"DAGSTER_HOME": str(tmp_path), "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0"})
    stack._wait_for_workers(["worker1@host"], timeout=10)  # noqa: SLF001 - the helper under test
    assert _BrokerDroppingOnce.pings >= 2
