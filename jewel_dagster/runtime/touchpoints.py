"""Every place our code reaches into Dagster past its public API, listed once.

Checked against dagster 1.13.27 (`DAGSTER_VERSION`; tests/unit/test_architecture.py fails when
the installed Dagster differs, so an upgrade starts by checking this table). The same test fails
on a private Dagster attribute (`obj._name`) reached outside jewel_dagster/runtime/ (tests may
reach the ones listed here: they are the canaries), on one runtime/ uses that is not listed, and
on a non-public instance method (not marked `@public` by Dagster) called outside runtime/ that is
not listed. Private *modules* (`dagster._...` imports) are listed in each runtime module's
docstring, as before.

Private symbols used here (checked against dagster 1.13.27):
- `dagster._annotations.is_public`: whether Dagster marks a member public (the test's question).
- `dagster._core.storage.event_log.base.EventLogStorage`, `dagster._core.storage.runs.base.RunStorage`,
  `dagster._core.storage.compute_log_manager.ComputeLogManager`: the classes whose members the
  test checks beside `DagsterInstance`.
"""

from __future__ import annotations

from typing import Any

DAGSTER_VERSION = "1.13.27"

# Private attributes of Dagster (and, marked, Azure SDK) objects: name -> (owner, where, why).
PRIVATE_ATTRIBUTES: dict[str, tuple[str, str, str]] = {
    "_mp_ctx": ("DagsterApiServer", "warm_code_server", "replaced by a forkserver context: warm run workers"),
    "_executions": ("DagsterApiServer", "warm_code_server", "the run's worker process, killed after a cancel's grace"),
    "_execution_lock": ("DagsterApiServer", "warm_code_server", "guards `_executions`"),
    "_termination_events": ("DagsterApiServer", "canary only", "what Dagster's CancelExecution sets"),
    "_termination_times": ("DagsterApiServer", "canary only", "what Dagster's CancelExecution records"),
    "_check_for_orphaned_runs": (
        "DagsterApiServer",
        "warm_code_server",
        "extended: a CANCELING run whose worker exited is CANCELED, not FAILED and retried",
    ),
    "_shutdown_once_executions_finish_event": ("DagsterApiServer", "canary only", "read by Dagster's orphan check"),
    "_pending_claims": ("InstanceConcurrencyContext", "claim_sleep", "the steps still waiting for a pool slot"),
    "_pending_timeouts": ("InstanceConcurrencyContext", "claim_sleep", "when each waiting step checks again"),
    "_claim_concurrency_slot": ("SqlEventLogStorage", "pool_claims", "overridden: a slot is never granted twice"),
    "_allocate_concurrency_slots": ("SqlEventLogStorage", "pool_claims", "a pool's first slots, created once"),
    "_reconcile_concurrency_limits_from_slots": ("SqlEventLogStorage", "pool_claims", "limit rows from slots"),
    "_instance": ("MayHaveInstanceWeakref", "celery_runs, pool_claims, queue_coordinator", "the storage's instance"),
    "_logger": ("DagsterDaemon", "queue_daemon", "the daemon's logger, for the wake-up's warnings"),
    "_get_grpc_client_for_termination": ("DefaultRunLauncher", "run_launcher", "asks the code server"),
    "_engine": ("SqlRunStorage/SqlEventLogStorage (postgres)", "storage_engines", "closes pooled connections"),
    "_conn_string": ("SqliteRunStorage", "storage_engines", "the file a pooled engine of our own opens"),
    "_query": ("DagsterGrpcClient", "run_launcher", "StartRun sent without the client's throwaway instance"),
    "_run_ids": ("DefaultRunLauncher", "run_launcher", "the launched runs `join()` waits for"),
    "_fileno": ("dagster._core.execution.compute_logs", "compute_log_tail", "the stream tail mirrors to"),
    "_clean_up_subprocess": ("dagster._core.execution.compute_logs", "compute_log_tail", "ends the tail"),
    "_run_config_schema": ("JobDefinition", "canary only", "the schema worker_warmup builds, kept on the job"),
    "_connect": ("SqliteEventLogStorage", "sqlite_shard_engines", "overridden: one engine kept per shard"),
    "_db_lock": ("SqliteEventLogStorage", "sqlite_shard_engines", "guards a shard's connection, as Dagster's"),
    "_initdb": ("SqliteEventLogStorage", "sqlite_shard_engines", "a shard's schema, checked at first use"),
    "_initialized_dbs": ("SqliteEventLogStorage", "sqlite_shard_engines", "shards whose schema was checked"),
    "_container_client": ("AzureBlobComputeLogManager", "compute_logs", "replaced by our store's client"),
    "_blob_client": ("AzureBlobComputeLogManager", "compute_logs", "replaced by our store's client"),
}

# Private names in runtime/ that Dagster happens to spell too, but that are our own attributes.
OURS: dict[str, str] = {
    "_lock": "queue_daemon's wake-up lock (the daemon subclass's own)",
    "_claim_interval": "pool_claims' retry interval (the storage subclass's own field)",
    "_client": "run_launcher's LaunchingClient: the code server's gRPC client it wraps",
}

# Instance and storage methods Dagster does not mark `@public`, called outside runtime/:
# name -> (class, where: module names, or tests/benchmarks). Each is re-checked on an upgrade; those
# that write (add_run, store_event...) are called by tests and benchmarks only.
NON_PUBLIC_METHODS: dict[str, tuple[str, str]] = {
    "add_run": ("DagsterInstance", "benchmarks, tests"),
    "all_instigator_state": ("DagsterInstance", "stack, tests"),
    "add_run_tags": ("DagsterInstance", "tests"),
    "all_logs": ("DagsterInstance", "benchmarks, run_traces, tests"),
    "build_log_key_for_run": ("ComputeLogManager", "tests"),
    "capture_logs": ("ComputeLogManager", "tests"),
    "claim_concurrency_slot": ("EventLogStorage", "tests"),
    "compute_log_manager": ("DagsterInstance", "retention, tests"),
    "create_run_for_job": ("DagsterInstance", "tests"),
    "delete_logs": ("ComputeLogManager", "retention"),
    "dispose": (
        "DagsterInstance",
        "benchmarks, storage_reader, dagster_figures, retention, tests",
    ),
    "event_log_storage": (
        "DagsterInstance",
        "benchmarks, stack, dagster_figures, tests",
    ),
    "free_concurrency_slot_for_step": ("EventLogStorage", "tests"),
    "from_config": ("DagsterInstance", "benchmarks, stack, tests"),
    "from_ref": ("DagsterInstance", "benchmarks, retention"),
    "get_asset_check_execution_history": ("EventLogStorage", "tests"),
    "get_concurrency_info": ("EventLogStorage", "dagster_figures, queue_estimates, tests"),
    "get_daemon_heartbeats": ("DagsterInstance", "tests"),
    "get_paginated_dynamic_partitions": ("DagsterInstance", "regeneration"),
    "get_records_for_run": (
        "DagsterInstance",
        "storage_reader, dagster_figures, queue_estimates, io_manager",
    ),
    "get_ref": ("DagsterInstance", "benchmarks, retention, tests"),
    "get_run_ids": ("DagsterInstance", "storage_reader"),
    "get_runs": ("DagsterInstance", "stack, tests"),
    "get_runs_count": ("DagsterInstance", "benchmarks, dagster_figures"),
    "handle_run_event": ("DagsterInstance", "tests"),
    "initialize_concurrency_limit_to_default": ("EventLogStorage", "tests"),
    "is_ephemeral": ("DagsterInstance", "retention"),
    "optimize_for_webserver": (
        "DagsterInstance",
        "benchmarks, storage_reader, retention, tests",
    ),
    "register_instance": ("EventLogStorage", "tests"),
    "report_dagster_event": ("DagsterInstance", "tests"),
    "report_engine_event": ("DagsterInstance", "tests"),
    "report_run_canceled": ("DagsterInstance", "tests"),
    "report_run_canceling": ("DagsterInstance", "tests"),
    "report_run_failed": ("DagsterInstance", "tests"),
    "root_directory": ("DagsterInstance", "tests"),
    "run_coordinator": ("DagsterInstance", "tests"),
    "run_launcher": ("DagsterInstance", "tests"),
    "run_storage": ("DagsterInstance", "tests"),
    "set_concurrency_slots": ("EventLogStorage", "tests"),
    "store_event": ("DagsterInstance", "benchmarks"),
    "store_event_batch": ("EventLogStorage", "benchmarks"),
    "submit_run": ("DagsterInstance", "tests"),
}


def is_public(member: Any) -> bool:
    """Whether Dagster marks `member` public (`@public`)."""
    from dagster._annotations import is_public as dagster_is_public

    return bool(dagster_is_public(member))


def instance_classes() -> list[type]:
    """The classes whose non-public members the architecture test looks for outside runtime/."""
    import dagster as dg
    from dagster._core.storage.compute_log_manager import ComputeLogManager
    from dagster._core.storage.event_log.base import EventLogStorage
    from dagster._core.storage.runs.base import RunStorage

    return [dg.DagsterInstance, EventLogStorage, RunStorage, ComputeLogManager]
