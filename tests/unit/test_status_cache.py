"""The status cache (stale-while-revalidate) answers a poller with a state newer than its last poll."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

from gateway.dagster_api.client import DagsterRuns
from gateway.dagster_api.models import RunInfo
from gateway.dagster_api.status_cache import StatusCache
from gateway.dagster_api.storage_reader import StorageRunReader
from gateway.settings import GatewaySettings
from gateway.status import position_of
from jewel_dagster.contract import PARTITION_TAG, WILL_RETRY_TAG
from tests.support.e2e_stack import free_port

RID = "jewelry-gen-00000000-0000-0000-0000-0000000000c1"


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runs() -> Iterator[tuple[DagsterRuns, _Clock, list[RunInfo]]]:
    """DagsterRuns whose newest run is the last of a list the test appends to, on a hand-moved clock."""
    settings = GatewaySettings(dagster_port=free_port(), status_cache_seconds=0.25, status_stale_seconds=5.0)
    assert settings.frontend_poll_seconds == 2.0  # the reference frontend's interval
    dagster = DagsterRuns(settings)
    clock, history = _Clock(), [RunInfo("run-1", "jewelry_generation", "STARTED")]
    dagster.status.clock = clock
    dagster.latest_run = lambda request_id: history[-1]  # type: ignore[method-assign]
    try:
        yield dagster, clock, history
    finally:
        dagster.close()


def test_a_run_that_ended_since_the_previous_poll_is_answered_at_once(
    runs: tuple[DagsterRuns, _Clock, list[RunInfo]],
) -> None:
    dagster, clock, history = runs
    assert dagster.latest_run_cached(RID).status == "STARTED"  # a poll
    history.append(RunInfo("run-1", "jewelry_generation", "SUCCESS"))  # the run ends
    clock.now += 1.5  # the next poll: past half the poll interval, within status_stale_seconds
    assert dagster.latest_run_cached(RID).status == "SUCCESS"  # not the state of the previous poll


def test_young_states_are_answered_from_the_cache_final_ones_never(
    runs: tuple[DagsterRuns, _Clock, list[RunInfo]],
) -> None:
    dagster, clock, history = runs
    assert dagster.latest_run_cached(RID).status == "STARTED"
    history.append(RunInfo("run-1", "jewelry_generation", "SUCCESS"))
    clock.now += 0.5  # expired, but younger than half a poll: a crowd of pollers gets it at once
    assert dagster.latest_run_cached(RID).status == "STARTED"
    dagster.forget(RID)
    assert dagster.latest_run_cached(RID).status == "SUCCESS"
    # A final state is not kept: another gateway replica may launch a newer run of the request
    # (a generate, a rerun from the UI) at any moment, and this replica would never hear of it.
    history.append(RunInfo("run-2", "jewelry_regenerate", "STARTED"))
    assert dagster.latest_run_cached(RID).status == "STARTED"


def test_polls_waiting_on_a_slow_read_share_its_answer() -> None:
    """20 polls of one workflow arrive together and the read takes longer than the TTL: they
    share at most two reads (the one in flight when they came, and one asked after they came),
    where each used to ask again in turn: under 100 pollers GET fell to ~80 answers a second."""
    settings = GatewaySettings(dagster_port=free_port(), status_cache_seconds=0.25, status_stale_seconds=5.0)
    dagster = DagsterRuns(settings)
    reads: list[float] = []
    release = threading.Event()

    def slow_latest_run(request_id: str) -> RunInfo:
        reads.append(time.monotonic())
        release.wait(timeout=10)  # held until every poll is waiting
        time.sleep(0.3)  # longer than the TTL: the answer is stale by the time it arrives
        return RunInfo("run-1", "jewelry_generation", "SUCCESS")  # final: never cached by age

    dagster.latest_run = slow_latest_run  # type: ignore[method-assign]
    # A poll reads the clock when it arrives (then waits for the read in flight): once 20 threads
    # have read it, every poll has arrived.
    arrived: set[int] = set()
    clock = dagster.status.clock

    def arrival_clock() -> float:
        arrived.add(threading.get_ident())
        return clock()

    dagster.status.clock = arrival_clock
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
            polls = [pool.submit(dagster.latest_run_cached, RID) for _ in range(20)]
            wait_for(lambda: len(reads) >= 1 and len(arrived) == 20, timeout=10)
            release.set()
            answers = [poll.result(timeout=30) for poll in polls]
    finally:
        dagster.close()
    assert {a.status for a in answers} == {"SUCCESS"}
    assert len(reads) <= 2, f"{len(reads)} reads for 20 polls that arrived together"


def test_polls_of_an_ended_run_share_its_newest_id_read() -> None:
    """20 GETs of one finished request arrive together: they share the newest-run-id reads (at
    most the one in flight when they came and one asked after), where each did its own."""
    settings = GatewaySettings(dagster_port=free_port(), status_cache_seconds=0.25, status_stale_seconds=5.0)
    id_reads: list[float] = []
    release = threading.Event()

    def slow_newest_id(request_id: str) -> str:
        id_reads.append(time.monotonic())
        release.wait(timeout=10)  # held until every poll is waiting
        return "run-1"

    dagster = DagsterRuns(settings)
    cache = StatusCache(
        lambda request_id: RunInfo("run-1", "jewelry_generation", "SUCCESS"),
        lambda: 0.25,
        lambda: 5.0,
        newest_run_id=slow_newest_id,
    )
    dagster.status.close()
    dagster.status = cache
    assert dagster.latest_run_cached(RID).status == "SUCCESS"  # the run read once: ended, kept
    assert id_reads == []
    arrived: set[int] = set()
    clock = cache.clock

    def arrival_clock() -> float:
        arrived.add(threading.get_ident())
        return clock()

    cache.clock = arrival_clock
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
            polls = [pool.submit(dagster.latest_run_cached, RID) for _ in range(20)]
            wait_for(lambda: len(id_reads) >= 1 and len(arrived) == 20, timeout=10)
            release.set()
            answers = [poll.result(timeout=30) for poll in polls]
    finally:
        dagster.close()
    assert {(a.run_id, a.status) for a in answers} == {("run-1", "SUCCESS")}
    assert len(id_reads) <= 2, f"{len(id_reads)} newest-id reads for 20 polls that arrived together"


def test_a_newer_run_is_seen_by_a_poll_that_arrives_after_it_was_launched() -> None:
    """Sharing never hands a poll an id read asked before it arrived."""
    newest = ["run-1"]
    runs = {
        "run-1": RunInfo("run-1", "jewelry_generation", "SUCCESS"),
        "run-2": RunInfo("run-2", "jewelry_generation", "STARTED"),
    }
    cache = StatusCache(
        lambda request_id: runs[newest[-1]], lambda: 0.25, lambda: 5.0, newest_run_id=lambda r: newest[-1]
    )
    clock = _Clock()
    cache.clock = clock
    try:
        assert cache.latest(RID).run_id == "run-1"
        assert cache.latest(RID).run_id == "run-1"  # checked by id: an answer asked at this instant
        newest.append("run-2")  # another replica launches a newer run
        clock.now += 0.001
        assert cache.latest(RID).run_id == "run-2"
    finally:
        cache.close()


@dg.op
def _step() -> int:
    return 1


@dg.job
def _ended_job() -> None:
    _step()


def _counted_full_reads(dagster: DagsterRuns) -> list[dict[str, str]]:
    """The tags of every full read of a run (`runs_tagged`) the storage reader makes from now on."""
    full_reads: list[dict[str, str]] = []
    read = dagster.reader.runs_tagged

    def counted(tags: dict[str, str], newest: bool = True, with_steps: bool = True) -> RunInfo | None:
        full_reads.append(tags)
        return read(tags, newest, with_steps)

    dagster.reader.runs_tagged = counted  # type: ignore[method-assign]
    return full_reads


def test_an_ended_run_is_answered_without_reading_it_again_until_a_newer_run_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll of an ended workflow reads only the newest run id (a GET of a COMPLETED workflow
    re-read the run and its steps, ~5 ms of CPU each); a newer run of the request, launched by
    any replica, is answered at the next poll."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    instance = dg.DagsterInstance.get()
    first = _ended_job.execute_in_process(instance=instance, tags={PARTITION_TAG: RID}).run_id
    dagster = DagsterRuns(GatewaySettings(dagster_port=free_port(), status_source="storage"))
    assert isinstance(dagster.reader, StorageRunReader)
    full_reads = _counted_full_reads(dagster)
    try:
        answers = [dagster.latest_run_cached(RID) for _ in range(6)]
        assert [(a.run_id, a.status) for a in answers if a] == [(first, "SUCCESS")] * 6
        assert len(full_reads) == 1, "an ended run is read once"
        second = _ended_job.execute_in_process(instance=instance, tags={PARTITION_TAG: RID}).run_id
        newer = dagster.latest_run_cached(RID)
        assert newer is not None and newer.run_id == second
    finally:
        dagster.close()
        instance.dispose()


@dg.op
def _failing_step() -> None:
    raise RuntimeError("a model service answered 503")


@dg.job
def _failed_job() -> None:
    _failing_step()


def test_a_failure_whose_retry_could_not_be_launched_is_answered_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed run is first `will_retry=true`; when the retry daemon cannot launch the retry (its
    code server down), it turns the tag to "false" and no newer run ever comes. Kept as an ended
    run checked by its id, the first answer (RUNNING: a retry follows) stayed for good: the soak's
    "still RUNNING after the settle time" (a worker killed, then the code server)."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    instance = dg.DagsterInstance.get()
    failed = _failed_job.execute_in_process(
        instance=instance, tags={PARTITION_TAG: RID}, raise_on_error=False
    ).run_id
    instance.add_run_tags(failed, {WILL_RETRY_TAG: "true"})
    dagster = DagsterRuns(GatewaySettings(dagster_port=free_port(), status_source="storage"))
    try:
        first = dagster.latest_run_cached(RID)
        assert first is not None and position_of(first).status == "RUNNING"
        instance.add_run_tags(failed, {WILL_RETRY_TAG: "false"})  # as the retry daemon does
        deadline = time.monotonic() + 5.0  # past the status TTL: the poll after it reads the tag
        while True:
            again = dagster.latest_run_cached(RID)
            assert again is not None
            if position_of(again).status == "FAILED":
                break
            assert time.monotonic() < deadline, "still RUNNING after the retry was given up"
            time.sleep(0.05)
    finally:
        dagster.close()
        instance.dispose()


def test_what_memory_answers_without_a_read_is_what_latest_would_answer(
    runs: tuple[DagsterRuns, _Clock, list[RunInfo]],
) -> None:
    """GET asks `remembered_run` on the event loop: it must never read, nor answer what `latest`
    would not (a run too old, or one that ended and must be checked by the newest run's id)."""
    dagster, clock, history = runs
    reads = [0]
    read = dagster.latest_run

    def counted(request_id: str) -> RunInfo | None:
        reads[0] += 1
        return read(request_id)

    dagster.latest_run = counted  # type: ignore[method-assign]
    assert dagster.remembered_run(RID) is None and reads[0] == 0  # nothing kept: not read here
    assert dagster.latest_run_cached(RID).status == "STARTED"  # type: ignore[union-attr]
    assert reads[0] == 1
    assert dagster.remembered_run(RID) == history[-1] and reads[0] == 1  # fresh
    clock.now += 0.5  # past the TTL, within the stale limit: answered, one refresh in the background
    history.append(RunInfo("run-1", "jewelry_generation", "SUCCESS"))
    assert dagster.remembered_run(RID) is not None
    wait_for(lambda: reads[0] == 2, timeout=5.0)
    wait_for(lambda: dagster.remembered_run(RID) is None, timeout=5.0)  # ended: never from memory
    clock.now += 0.1
    assert dagster.latest_run_cached(RID).status == "SUCCESS"  # type: ignore[union-attr]
    assert dagster.remembered_run(RID) is None
    history.append(RunInfo("run-2", "jewelry_generation", "STARTED"))
    dagster.forget(RID)
    assert dagster.latest_run_cached(RID).run_id == "run-2"  # type: ignore[union-attr]
    clock.now += 1.5  # older than the stale limit (half a poll): latest would read, so no answer here
    assert dagster.remembered_run(RID) is None


def test_queued_requests_share_one_read_of_the_queued_ids_instead_of_a_read_each() -> None:
    """A burst keeps most requests in Dagster's run queue while a frontend polls each: a refresh of
    a queued request asks only whether its run is still queued, from one ids read shared by every
    queued request for the TTL, where each refresh read the run and its events (~4 ms of CPU)."""
    requests = [f"w{i}" for i in range(20)]
    runs = {rid: RunInfo(f"run-{rid}", "jewelry_generation", "QUEUED") for rid in requests}
    queued = {run.run_id for run in runs.values()}
    full_reads: list[str] = []
    id_reads: list[float] = []
    clock = _Clock()

    def read(request_id: str) -> RunInfo:
        full_reads.append(request_id)
        return runs[request_id]

    def queued_ids() -> frozenset[str]:
        id_reads.append(clock.now)
        return frozenset(queued)

    cache = StatusCache(read, lambda: 0.25, lambda: 1.0, queued_run_ids=queued_ids)
    cache.clock = clock
    try:
        for _ in range(3):  # three rounds of polls, each past the stale limit (as a burst's poller)
            for rid in requests:
                assert cache.latest(rid) == runs[rid]
                clock.now += 0.01
            clock.now += 1.5
        assert sorted(full_reads) == sorted(requests), "each queued run is read once"
        assert len(id_reads) == 2, id_reads  # one a round after the first (the TTL covers each round)
        # A run that leaves the queue is read at the next poll past the TTL: the ids are read again.
        runs["w3"] = RunInfo("run-w3", "jewelry_generation", "STARTED")
        queued.discard("run-w3")
        assert cache.latest("w3").status == "STARTED"  # type: ignore[union-attr]
        assert len(id_reads) == 3 and full_reads.count("w3") == 2
        clock.now += 0.3
        assert cache.latest("w3").status == "STARTED"  # type: ignore[union-attr]  (running: read again)
        assert full_reads.count("w3") == 3
    finally:
        cache.close()


def test_a_queued_request_is_refreshed_from_the_storage_without_reading_its_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The storage source's queued ids (the real run storage): polls of a queued request past the
    TTL read the run once, and see it at once when it leaves the queue."""
    from tests.unit.test_prompt_queue import _origin

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    instance = dg.DagsterInstance.get()
    run = dg.DagsterRun(
        job_name="jewelry_generation",
        run_id="a" * 32,
        status=dg.DagsterRunStatus.QUEUED,
        tags={PARTITION_TAG: RID},
        remote_job_origin=_origin("jewelry_generation"),
    )
    instance.add_run(run)
    other = dg.DagsterRun(job_name="jewelry_generation", run_id="b" * 32, status=dg.DagsterRunStatus.STARTED)
    instance.add_run(other)
    dagster = DagsterRuns(GatewaySettings(dagster_port=free_port(), status_source="storage"))
    assert isinstance(dagster.reader, StorageRunReader)
    assert dagster.reader.queued_run_ids() == frozenset({run.run_id})
    clock = _Clock()
    dagster.status.clock = clock
    full_reads = _counted_full_reads(dagster)
    try:
        for _ in range(4):
            assert dagster.latest_run_cached(RID).status == "QUEUED"  # type: ignore[union-attr]
            clock.now += 1.5
        assert len(full_reads) == 1
        instance.handle_run_event(
            run.run_id,
            dg.DagsterEvent(event_type_value="PIPELINE_STARTING", job_name="jewelry_generation"),
        )
        assert dagster.latest_run_cached(RID).status == "STARTING"  # type: ignore[union-attr]
        assert len(full_reads) == 2
    finally:
        dagster.close()
        instance.dispose()
