"""Run monitoring ends every run: README, Security/Faults, "Every run ends within 2 h
(`run_monitoring.max_runtime_seconds: 7200`)" and "a run CANCELING for 60 s is marked CANCELED by
run monitoring (`cancel_timeout_seconds`)"; the fault table's "a code server that never returns:
`max_runtime_seconds` (2 h)".

The behaviour, not only the file: the repo's dagster.yaml, written by `prepare_dagster_home` as
`make run` and the test stacks write it, with those two values (and the poll) shortened, and a
real `dagster-daemon` (no code location needed: monitoring reads the run storage). The runs are
put in the states the promises are about: STARTED on a code server that no longer answers (our
launcher's health check leaves such a run to max_runtime), and CANCELING with nothing left to
finish the cancel.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import dagster as dg
import pytest
import yaml

from devtools.stack import BIN, prepare_dagster_home
from tests.support.e2e_stack import free_port, wait_until

pytestmark = pytest.mark.e2e

MAX_RUNTIME = 3  # seconds, in place of 7200
CANCEL_TIMEOUT = 2  # seconds, in place of 60
GRPC_INFO_TAG = ".dagster/grpc_info"  # where DefaultRunLauncher records a run's code server


def test_the_deployment_files_hold_the_values_the_readme_promises() -> None:
    from devtools.instance_config import load_overlays

    # The base, and the instance configs the overlays make of it (PostgreSQL; Celery on top).
    for overlays in ([], ["dagster.postgres.yaml"], ["dagster.postgres.yaml", "dagster.celery.yaml"]):
        monitoring = load_overlays(overlays)["run_monitoring"]
        assert monitoring["enabled"] is True, overlays
        assert (monitoring["max_runtime_seconds"], monitoring["cancel_timeout_seconds"]) == (7200, 60), overlays


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dg.DagsterInstance]:
    """DAGSTER_HOME as `prepare_dagster_home` writes it, monitoring shortened, a daemon on it
    (monitoring already) and the instance to put runs in."""
    home = tmp_path_factory.mktemp("monitoring") / "dagster_home"
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    for name in ("DAGSTER_PG_URL", "DAGSTER_PG_HOST"):
        env.pop(name, None)
    prepare_dagster_home(env)
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    config["run_monitoring"].update(
        max_runtime_seconds=MAX_RUNTIME, cancel_timeout_seconds=CANCEL_TIMEOUT, poll_interval_seconds=1
    )
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    instance = dg.DagsterInstance.from_config(str(home))  # storages made before the daemon reads them
    with open(home / "daemon.log", "ab") as log:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "--empty-workspace"],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def monitoring() -> bool:
            assert daemon.poll() is None, f"dagster-daemon exited: {(home / 'daemon.log').read_text()[-2000:]}"
            return "MONITORING" in instance.get_daemon_heartbeats()

        wait_until(monitoring, "dagster-daemon's run monitoring", timeout=120, every=0.2)
        yield instance
    finally:
        os.killpg(daemon.pid, signal.SIGKILL)  # nothing to finish: the storage is thrown away
        daemon.wait()
        instance.dispose()


def _run(instance: dg.DagsterInstance, tags: dict[str, str]) -> dg.DagsterRun:
    run = dg.DagsterRun(job_name="jewelry_generation", run_id=str(uuid.uuid4()), tags=tags)
    instance.add_run(run)
    return run


def _ended(instance: dg.DagsterInstance, run_id: str, timeout: float = 60.0) -> dg.RunRecord:
    def finished() -> dg.RunRecord | None:
        record = instance.get_run_record_by_id(run_id)
        return record if record is not None and record.dagster_run.is_finished else None

    return wait_until(finished, f"the end of run {run_id}", timeout=timeout)  # type: ignore[no-any-return]


def _messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [entry.message for entry in instance.all_logs(run_id)]


def test_a_run_past_max_runtime_is_failed_and_one_stuck_canceling_is_canceled(
    monitored: dg.DagsterInstance,
) -> None:
    instance = monitored
    # STARTED, its code server gone for good: the health check says "unreachable, ask again",
    # so only max_runtime ends it.
    gone = json.dumps({"host": "127.0.0.1", "port": free_port()})
    hung = _run(instance, {GRPC_INFO_TAG: gone})
    instance.handle_run_event(hung.run_id, dg.DagsterEvent("PIPELINE_START", hung.job_name))
    # CANCELING, and nothing will ever report the cancel done.
    stuck = _run(instance, {})
    instance.handle_run_event(stuck.run_id, dg.DagsterEvent("PIPELINE_START", stuck.job_name))
    canceling_at = time.time()
    instance.report_run_canceling(stuck)

    failed = _ended(instance, hung.run_id)
    assert failed.dagster_run.status == dg.DagsterRunStatus.FAILURE
    assert any(f"maximum runtime of {MAX_RUNTIME} seconds" in m for m in _messages(instance, hung.run_id))
    assert failed.start_time is not None and failed.end_time is not None
    assert failed.end_time - failed.start_time >= MAX_RUNTIME  # not before its time

    canceled = _ended(instance, stuck.run_id)
    assert canceled.dagster_run.status == dg.DagsterRunStatus.CANCELED
    assert any(f"longer than {CANCEL_TIMEOUT} seconds to cancel" in m for m in _messages(instance, stuck.run_id))
    assert canceled.end_time is not None and canceled.end_time - canceling_at >= CANCEL_TIMEOUT
