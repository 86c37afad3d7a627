"""Canaries for the Dagster internals jewel_dagster/runtime relies on, one per patch.

- check_history.py: here (a failed check is seen as failed, a passed one not, per partition; the
  newest execution's status, verdict and texts, a planned one's status resolved by its run).
- pool_claims.py: tests/unit/test_pool_claims.py (the quick retry interval) and
  tests/unit/test_pool_claim_race.py (a slot is granted once).
- warm_code_server.py: tests/e2e/test_warm_code_server.py (run workers forked, not spawned).
- json_logs.py: tests/unit/test_json_logs.py (a run's JSON lines carry its ids).
- processes/queue_daemon.py: here (the daemon factory builds our queue loop; `dagster-daemon` is the CLI we
  wrap; the sensor loop's period is a module global it reads at each pass) and
  tests/unit/test_prompt_queue.py (the loop runs Dagster's iteration, woken).
- storage_engines.py: here (the three PostgreSQL storages' engines are found and closed) and
  tests/unit/test_result_metadata_source.py (the gateway's reader keeps no connection after close).
"""

# No `from __future__ import annotations` here: Dagster reads the asset's annotations at run time.
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from jewel_dagster.runtime.storage.check_history import (
    CheckExecution,
    failed_partitions,
    newest_check_execution,
    newest_check_failed,
)
from jewel_dagster.runtime.storage.storage_engines import dispose_storage_engines

PARTITIONS = dg.StaticPartitionsDefinition(["passes", "fails", "recovers", "never-checked", "crashes"])
CHECK = dg.AssetCheckKey(dg.AssetKey("measured"), "fidelity")


class Outcome(dg.Config):
    passed: bool
    crash: bool = False


@dg.asset(
    partitions_def=PARTITIONS,
    check_specs=[dg.AssetCheckSpec("fidelity", asset="measured", partitions_def=PARTITIONS)],
)
def measured(config: Outcome) -> Iterator[dg.Output[int] | dg.AssetCheckResult]:
    if config.crash:  # the check was planned, never evaluated: the run fails
        raise RuntimeError("crashed")
    yield dg.Output(1)
    yield dg.AssetCheckResult(check_name="fidelity", passed=config.passed, metadata={"why": f"passed={config.passed}"})


def _run(instance: dg.DagsterInstance, partition: str, passed: bool, crash: bool = False) -> str:
    result = dg.materialize(
        [measured],
        partition_key=partition,
        instance=instance,
        run_config={"ops": {"measured": {"config": {"passed": passed, "crash": crash}}}},
        raise_on_error=not crash,
    )
    if not crash:
        (evaluation,) = result.get_asset_check_evaluations()
        assert evaluation.passed is passed
    return result.run_id


def test_newest_check_failed_reads_the_newest_result_of_that_partition() -> None:
    with dg.instance_for_test() as instance:
        _run(instance, "passes", passed=True)
        _run(instance, "fails", passed=False)
        _run(instance, "recovers", passed=False)
        _run(instance, "recovers", passed=True)

        assert newest_check_failed(instance, CHECK, "fails")
        assert not newest_check_failed(instance, CHECK, "passes")
        assert not newest_check_failed(instance, CHECK, "recovers"), "an older failure must not count"
        assert not newest_check_failed(instance, CHECK, "never-checked")
        # The partition filter is applied: another partition's failure is not this one's.
        _run(instance, "passes", passed=False)
        assert newest_check_failed(instance, CHECK, "passes")
        assert not newest_check_failed(instance, CHECK, "recovers")
        # The batched form (the regeneration sensor's) agrees, and keeps to the partitions asked.
        assert failed_partitions(instance, CHECK, list(PARTITIONS.get_partition_keys())) == {"fails", "passes"}
        assert failed_partitions(instance, CHECK, ["fails", "recovers"]) == {"fails"}
        assert failed_partitions(instance, CHECK, []) == set()


def test_newest_check_execution_answers_what_graphql_answers() -> None:
    """The gateway's storage read of a result's verdict (gateway.dagster_api.storage_reader):
    the statuses GraphQL's `assetCheckExecutions` resolves, the newest of that partition."""
    with dg.instance_for_test() as instance:
        _run(instance, "fails", passed=False)
        passed = _run(instance, "passes", passed=True)
        assert newest_check_execution(instance, CHECK, "passes") == CheckExecution(
            passed, "SUCCEEDED", True, {"why": "passed=True"}
        )
        failed = _run(instance, "recovers", passed=False)
        assert newest_check_execution(instance, CHECK, "recovers") == CheckExecution(
            failed, "FAILED", False, {"why": "passed=False"}
        )
        assert newest_check_execution(instance, CHECK, "never-checked") is None
        crashed = _run(instance, "crashes", passed=True, crash=True)
        assert newest_check_execution(instance, CHECK, "crashes") == CheckExecution(crashed, "EXECUTION_FAILED", None)


def test_the_daemon_factory_builds_the_prompt_queue_loop() -> None:
    from importlib.metadata import entry_points

    from jewel_dagster.runtime.instance_plugins.queue_wake import wake_address
    from jewel_dagster.runtime.processes import queue_daemon as prompt_queue

    # What we wrap: the console script `dagster-daemon`; install() patches the factory it uses.
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "dagster-daemon"]
    assert script.value == "dagster._daemon.cli:main"
    coordinator = {
        "module": "jewel_dagster.runtime.instance_plugins.queue_coordinator",
        "class": "PromptQueuedRunCoordinator",
        "config": {"dequeue_interval_seconds": 3},
    }
    stock = {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"}
    with dg.instance_for_test(overrides={"run_coordinator": coordinator}) as instance:
        assert type(prompt_queue.queue_daemon(instance)).__name__ == "QueuedRunCoordinatorDaemon"  # before
        undo = prompt_queue.install()
        try:
            queue = prompt_queue.queue_daemon(instance)
            assert isinstance(queue, prompt_queue.PromptRunQueueDaemon)
            assert queue.interval_seconds == 3 and queue.address == wake_address(instance)
            with dg.instance_for_test(overrides={"run_coordinator": stock}) as other:
                assert type(prompt_queue.queue_daemon(other)).__name__ == "QueuedRunCoordinatorDaemon"
        finally:
            undo()
        assert type(prompt_queue.queue_daemon(instance)).__name__ == "QueuedRunCoordinatorDaemon"


def test_the_sensor_loop_reads_its_period_at_each_pass() -> None:
    from jewel_dagster.runtime.processes.queue_daemon import sensor_loop_reads_its_period, set_sensor_loop_seconds

    before = set_sensor_loop_seconds(0.5)
    try:
        assert before == 5  # Dagster's, and production's (SENSOR_LOOP_SECONDS)
        assert set_sensor_loop_seconds(before) == 0.5
    finally:
        set_sensor_loop_seconds(before)
    # A global the loop looks up when it sleeps, not a value it bound once: setting it takes effect.
    assert sensor_loop_reads_its_period()


def test_dispose_storage_engines_closes_the_pooled_postgresql_connections(tmp_path: Path) -> None:
    """`DagsterInstance.dispose()` leaves an optimized instance's pooled connections open; the
    helper finds the engine of each PostgreSQL storage (`_engine`) and closes them."""
    from tests.support.infra import postgres_database

    with postgres_database() as url:
        pg_url = url.replace("postgresql://", "postgresql+psycopg2://")  # dagster-postgres ships psycopg2
        settings = {"storage": {"postgres": {"postgres_url": pg_url}}, "telemetry": {"enabled": False}}
        with dg.instance_for_test(overrides=settings, temp_dir=str(tmp_path)) as instance:
            instance.optimize_for_webserver(statement_timeout=5000, pool_recycle=3600, max_overflow=2)
            instance.get_run_records(limit=1)
            instance.fetch_materializations(dg.AssetKey("any"), limit=1)
            assert _sessions(url) >= 2, "the pooled connections are open before"
            instance.dispose()
            assert _sessions(url) >= 2, "dispose() alone leaves them open (else this helper is no longer needed)"
            assert dispose_storage_engines(instance) == 3
            deadline = time.monotonic() + 10  # a closed session leaves pg_stat_activity a moment later
            while _sessions(url) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _sessions(url) == 0


def _sessions(url: str) -> int:
    import psycopg2

    with psycopg2.connect(url, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return int(cur.fetchone()[0])  # type: ignore[index]


def test_every_module_the_forkserver_preloads_still_imports() -> None:
    """multiprocessing's forkserver skips a preload module that fails to import, silently: a
    module Dagster moved would leave every run worker importing it again after the fork."""
    import importlib

    from jewel_dagster.runtime.processes.warm_code_server import PRELOAD

    for name in PRELOAD:
        importlib.import_module(name)
