"""The figures /metrics reads from Dagster's storage, against a test instance and stand-in jobs."""

# No `from __future__ import annotations` here: Dagster reads the assets' annotations at run time.
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.observability.dagster_figures import DagsterFigures
from jewel_dagster.contract import FULL_JOB, PREPROCESS_JOB
from tests.support.metrics import samples, value


@pytest.fixture
def instance() -> Iterator[Any]:
    with dg.instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 2}}}) as inst:
        yield inst


def _jobs() -> Any:
    """Stand-ins named like the pipeline's assets and jobs: one run completes (a SAM3 call with its
    latency, a fidelity check that could not measure), one fails in prepare_canvas (the image
    manipulator's step)."""

    @dg.asset(name="jewelry_mask")
    def mask() -> dg.Output[int]:
        return dg.Output(1, metadata={"seconds": 0.3, "backend": "http:http://sam3"})

    @dg.asset(name="flux_metrics", check_specs=[dg.AssetCheckSpec("fidelity", asset="flux_metrics")], deps=[mask])
    def metrics() -> Iterator[Any]:
        yield dg.Output(1, metadata={"seconds": 0.2, "backend": "http:http://sam3"})
        yield dg.AssetCheckResult(check_name="fidelity", passed=False)

    @dg.asset(name="unmeasured", check_specs=[dg.AssetCheckSpec("fidelity", asset="unmeasured")])
    def unmeasured() -> Iterator[Any]:
        # Metrics that could not be measured are not materialized; the check says why.
        yield dg.Output(1)
        yield dg.AssetCheckResult(check_name="fidelity", passed=False, metadata={"reason": "SAM3 said 400"})

    @dg.multi_asset(name="prepare_canvas", outs={"zoom_check": dg.AssetOut()})
    def zoom() -> int:
        raise RuntimeError("ImageManipulator answered 503")

    completes = dg.define_asset_job(
        FULL_JOB, selection=[mask, metrics, unmeasured], executor_def=dg.in_process_executor
    )
    fails = dg.define_asset_job(PREPROCESS_JOB, selection=[zoom], executor_def=dg.in_process_executor)
    defs = dg.Definitions(assets=[mask, metrics, unmeasured, zoom], jobs=[completes, fails])
    return defs.resolve_job_def(FULL_JOB), defs.resolve_job_def(PREPROCESS_JOB)


def test_figures_from_dagster_count_runs_calls_and_checks(instance: Any) -> None:
    figures = DagsterFigures(ttl=0.0, instance_factory=lambda: instance)
    registry = CollectorRegistry()
    registry.register(figures)
    completes, fails = _jobs()
    completes.execute_in_process(instance=instance)  # before the first scrape: in the totals only
    before = samples(generate_latest(registry).decode())
    assert value(before, "jewel_dagster_storage_up") == 1
    assert value(before, "jewel_pool_slots", pool="gpu") == 2
    assert value(before, "jewel_pool_slots_claimed", pool="gpu") == 0

    completes.execute_in_process(instance=instance)
    fails.execute_in_process(instance=instance, raise_on_error=False)
    after = samples(generate_latest(registry).decode())

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(after, "jewel_workflows_started_total", dagster_job=FULL_JOB) == 2  # storage totals
    assert moved("jewel_workflows_finished_total", dagster_job=FULL_JOB, status="completed") == 1
    assert moved("jewel_workflows_finished_total", dagster_job=PREPROCESS_JOB, status="failed") == 1
    assert moved("jewel_workflows_finished_total", dagster_job=FULL_JOB, status="failed") == 0
    duration = "jewel_workflow_duration_seconds_count"
    assert moved(duration, dagster_job=FULL_JOB, status="completed") == 1
    assert moved(duration, dagster_job=PREPROCESS_JOB, status="failed") == 1
    assert moved("jewel_run_queue_wait_seconds_count", dagster_job=FULL_JOB) == 1
    # Two SAM3 calls (the mask, the metrics) with the latencies their assets recorded.
    assert moved("jewel_model_calls_total", service="sam3", outcome="ok") == 2
    assert moved("jewel_model_call_duration_seconds_sum", service="sam3") == pytest.approx(0.5)
    assert moved("jewel_model_calls_total", service="image_manipulator", outcome="error") == 1
    assert moved("jewel_model_calls_total", service="sam3", outcome="error") == 1  # the unmeasured metrics
    assert moved("jewel_fidelity_checks_total", result="failed") == 2
    assert moved("jewel_fidelity_checks_total", result="passed") == 0
    assert value(after, "jewel_runs_queued") == 0 and value(after, "jewel_runs_in_progress") == 0


def test_figures_say_when_the_storage_does_not_answer() -> None:

    def broken() -> Any:
        raise OSError("database is down")

    registry = CollectorRegistry()
    registry.register(DagsterFigures(ttl=0.0, instance_factory=broken))
    scrape = samples(generate_latest(registry).decode())
    assert scrape == {("jewel_dagster_storage_up", ()): 0.0}


class _Failing(dg.Config):
    message: str


def test_a_step_failure_counts_against_the_service_its_message_names(instance: Any) -> None:
    """generate_images calls four services: the failure's message says which one failed (the
    reference server's Flux URL is /a100/generate, so URLs cannot), and a refusal of the request
    that names none (an empty mask after the strokes) is no model call's error."""

    @dg.multi_asset(name="generate_images", outs={"flux_generation": dg.AssetOut()})
    def generate(config: _Failing) -> int:
        raise RuntimeError(config.message)

    job = dg.Definitions(
        assets=[generate],
        jobs=[dg.define_asset_job(FULL_JOB, selection=[generate], executor_def=dg.in_process_executor)],
    ).resolve_job_def(FULL_JOB)
    figures = DagsterFigures(ttl=0.0, instance_factory=lambda: instance)
    registry = CollectorRegistry()
    registry.register(figures)
    before = samples(generate_latest(registry).decode())
    messages = [
        "FluxGenerator (http://models/a100/generate) answered 503: busy",
        "MaskRefiner (http://models/a100/refine) answered 503: busy",
        "Segmenter (http://models/segment) timed out after 120.0 s",
        "the refined mask is empty: nothing would be kept; add jewelry back with an 'add' stroke",
    ]
    for message in messages:
        config = {"ops": {"generate_images": {"config": {"message": message}}}}
        job.execute_in_process(instance=instance, run_config=config, raise_on_error=False)
    after = samples(generate_latest(registry).decode())
    errors = {
        service: value(after, "jewel_model_calls_total", service=service, outcome="error")
        - value(before, "jewel_model_calls_total", service=service, outcome="error")
        for service in ("flux", "a100", "sam3", "gemini")
    }
    assert errors == {"flux": 1, "a100": 1, "sam3": 1, "gemini": 0}
