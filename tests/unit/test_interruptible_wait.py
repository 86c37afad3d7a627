"""A run waiting in a pool's line stops at its cancel (jewel_dagster/runtime/executor/interruptible_wait.py).

Canary: a real in-process run, in its own process (Dagster captures SIGINT only on a main thread),
waits for the only `gpu` slot, which this test holds; SIGINT, what a cancel sends the run worker,
must end it within seconds and take its step out of the line. Stock Dagster keeps the interrupt
captured until a slot frees: this test then fails at its deadline.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest

from jewel_dagster.runtime.executor import interruptible_wait
from jewel_dagster.runtime.instance_plugins import pool_claims
from tests.support.e2e_stack import wait_until

STOP_DEADLINE_SECONDS = 10.0  # the patched loop stops within one 0.25 s claim interval

RUN_WAITING_FOR_THE_GPU = textwrap.dedent(
    """
    import sys
    import dagster as dg
    import jewel_dagster.runtime.instance_plugins.pool_claims  # installs the patches, as in a run worker

    @dg.asset(pool="gpu")
    def on_the_gpu() -> int:
        return 1

    with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
        dg.materialize([on_the_gpu], instance=instance)
    """
)


def _in_line(instance: dg.DagsterInstance) -> int:
    """Steps waiting for a `gpu` slot (the pool's pending steps include those holding one)."""
    pending = instance.event_log_storage.get_concurrency_info("gpu").pending_steps
    return sum(1 for step in pending if step.assigned_timestamp is None)


def test_the_patch_is_installed_where_our_storage_is_loaded() -> None:
    assert pool_claims.__name__  # imported: the patches are in place
    assert interruptible_wait.ActiveExecution.sleep_til_ready is interruptible_wait.sleep_til_ready


def test_an_interrupted_run_waiting_for_a_pool_slot_stops_and_leaves_the_line(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text(
        "event_log_storage:\n"
        f"  module: {pool_claims.__name__}\n"
        f"  class: {pool_claims.QuickClaimSqliteEventLogStorage.__name__}\n"
        f"  config: {{base_dir: {tmp_path / 'history'}, claim_interval_seconds: 0.25}}\n"
        "telemetry: {enabled: false}\n"
    )
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("gpu", 1)
        assert storage.claim_concurrency_slot("gpu", "another-run", "step").is_claimed
        script = tmp_path / "waiting_run.py"
        script.write_text(RUN_WAITING_FOR_THE_GPU)
        run = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_until(lambda: _in_line(instance) == 1, "the run in the pool's line", 60)
            run.send_signal(signal.SIGINT)
            sent = time.monotonic()
            try:
                _, err = run.communicate(timeout=STOP_DEADLINE_SECONDS)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the run still waited for its slot {STOP_DEADLINE_SECONDS:.0f} s after the interrupt")
            stopped_after = time.monotonic() - sent
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        assert run.returncode != 0 and "interrupted while its steps waited for a pool slot" in err, err[-2000:]
        assert stopped_after < STOP_DEADLINE_SECONDS
        assert _in_line(instance) == 0
        storage.free_concurrency_slot_for_step("another-run", "step")
