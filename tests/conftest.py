"""Fixtures every test may use, the suite's rules on skips, and the order tests run in.

On CI (CI=true) a skipped test is a failed test: CI installs every dependency (.ci/run), so a
skip there means something a test needs went missing, and the suite must say so. Elsewhere a
test may skip (no Chromium on a laptop, say), and the end of the run lists each skip and why.

Scheduling (one xdist worker more than the cores, `--dist loadfile`): a file runs whole on one worker, and the files
of one shared stack (tests/support/shared_stacks.py) run together on one worker, one after
another. Work goes out slowest first (SLOWEST_FIRST), not xdist's most-tests-first: a slow file
that started last would leave one core idle at the end while it finishes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

from jewel_dagster.resources.selection import build_resources
from jewel_dagster.settings import PipelineSettings
from tests.support.infra import on_ci
from tests.support.lazy_cas import read_cas_lazily
from tests.support.shared_stacks import GROUP_OF_FILE, SharedStacks

# Test files, slowest first (a file of a shared-stack group brings its whole group forward), from
# `--durations` of single files (README, Layout, on the tests); what is not listed (each a few
# seconds) runs after them, in collection order.
SLOWEST_FIRST: tuple[str, ...] = (
    "tests/e2e/test_live.py",  # with test_gateway: one stack
    "tests/e2e/test_security.py",  # with test_ownership, test_fuzz_sequences, test_artifacts, test_stroke_limits
    "tests/e2e/test_process_faults.py",
    "tests/unit/test_service_contracts.py",
    "tests/unit/test_regeneration.py",
    "tests/e2e/test_running_requests.py",
    "tests/e2e/test_operations.py",
    "tests/e2e/test_compose_processes.py",
    "tests/e2e/test_make_run.py",
    "tests/e2e/test_production.py",
    "tests/unit/test_pipeline.py",
    "tests/e2e/test_services.py",
    "tests/e2e/test_warm_code_server.py",
    "tests/e2e/test_code_server_restart.py",
    "tests/unit/test_pool_claim_race.py",
    "tests/unit/test_retention.py",
    "tests/e2e/test_event_stream.py",
    "tests/unit/test_runtime_canaries.py",
    "tests/unit/test_pool_initialization_race.py",
)
_SHARED_STACKS = pytest.StashKey[SharedStacks]()

read_cas_lazily(os.environ)  # before any client: ~95 CPU-s a run (tests/support/lazy_cas.py)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker more than the cores this process may use. A worker spends part of
    its time waiting (for a stack's processes to start, a run to reach a step, a model call's
    latency), so with one worker a core the 2-core machine sat ~30 % idle; with three, 4-14 %.
    The same suite, this machine: 397 s on two workers, 354 s on three (2026-12-05; the
    seventh session's trial: 478 s against 451 s)."""
    return len(os.sched_getaffinity(0)) + 1


@pytest.fixture
def local_settings(tmp_path: Path) -> PipelineSettings:
    return PipelineSettings(local_blob_root=str(tmp_path / "blobs"))


@pytest.fixture
def local_resources(local_settings: PipelineSettings) -> dict[str, Any]:
    return build_resources(local_settings)


# Hypothesis: failures reproducible. Every failing example is kept in .data/hypothesis (CI keeps
# that folder between runs; locally it is the worktree's) and tried first by the next run, and a
# failure prints its `@reproduce_failure` blob (print_blob), or its seed (`--hypothesis-seed=N`)
# when the blob cannot replay it. Random per session, not derandomized: each run explores anew.
# (A seed forced for the whole session would switch the example database off.)
HYPOTHESIS_DATABASE = Path(__file__).resolve().parents[1] / ".data" / "hypothesis"
settings.register_profile("jewel", database=DirectoryBasedExampleDatabase(str(HYPOTHESIS_DATABASE)), print_blob=True)
settings.load_profile("jewel")


def pytest_report_header(config: pytest.Config) -> str:
    return f"hypothesis: failing examples kept in {HYPOTHESIS_DATABASE}"


@pytest.fixture(scope="session")
def shared_stacks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedStacks]:
    """This worker's shared stack (one at a time; see tests/support/shared_stacks.py)."""
    stacks = SharedStacks(tmp_path_factory.mktemp("shared"))
    request.config.stash[_SHARED_STACKS] = stacks
    yield stacks
    stacks.close()


def _path(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _scope(nodeid: str) -> str:
    """What runs whole on one worker: the shared stack's group of the test's file, else the file."""
    return GROUP_OF_FILE.get(_path(nodeid), _path(nodeid))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slowest scopes first (SLOWEST_FIRST), each scope's tests together, else collection order;
    and every file that uses a shared stack is one its settings name."""
    rank: dict[str, int] = {}
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        scope, path = _scope(item.nodeid), _path(item.nodeid)
        if "shared_stacks" in getattr(item, "fixturenames", ()) and path not in GROUP_OF_FILE:
            raise pytest.UsageError(f"{path} uses a shared stack: add it to its settings' files (shared_stacks.py)")
        position = SLOWEST_FIRST.index(path) if path in SLOWEST_FIRST else len(SLOWEST_FIRST)
        rank[scope] = min(rank.get(scope, position), position)
        first.setdefault(scope, index)
    order = {id(item): index for index, item in enumerate(items)}
    items.sort(key=lambda item: (rank[_scope(item.nodeid)], first[_scope(item.nodeid)], order[id(item)]))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    """Stop the shared stack once the next test does not use its settings: an idle stack still
    polls (daemon, sensors) and holds ~1 GB."""
    yield
    stacks = item.config.stash.get(_SHARED_STACKS, None)
    running = stacks.running if stacks else None
    if stacks and running and (nextitem is None or GROUP_OF_FILE.get(_path(nextitem.nodeid)) != running.name):
        stacks.close()


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, with the files of a shared stack as one unit (xdist's own `loadgroup`
    cannot be used: the group reaches its scheduler through the node id, which pytest 9 no
    longer lets a plugin rewrite)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedStackScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

    return SharedStackScheduling(config, log)


def _sigterm_ignored() -> bool:
    """Whether this process ignores SIGTERM, as the kernel sees it (C code may have set it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


_SIGTERM_RESET_AFTER: list[str] = []


def pytest_runtest_logfinish(nodeid: str, location: tuple[str, int | None, str]) -> None:
    """A worker left ignoring SIGTERM hands that on to every process it starts: Dagster's compute
    log capture then waits 30 s for each `tail` it terminates (seen once on CI, in two tests that
    run steps in-process). Put the default back and say after which test it was found."""
    if Path("/proc/self/status").exists() and _sigterm_ignored():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _SIGTERM_RESET_AFTER.append(nodeid)


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """On CI, turn a skip (pytest.skip, a skip or skipif mark, importorskip) into a failure."""
    report: pytest.TestReport = yield
    if report.skipped and not hasattr(report, "wasxfail") and on_ci():
        report.outcome = "failed"
        report.longrepr = f"skipped on CI, where every test must run (.ci/run installs it all): {_skip_reason(report)}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, Any]:
    """On CI, a module skipped whole (pytest.skip at import, importorskip) fails its collection."""
    report: pytest.CollectReport = yield
    if report.skipped and on_ci():
        report.outcome = "failed"
        report.longrepr = f"skipped on CI, where every test must run (.ci/run installs it all): {_skip_reason(report)}"
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """After a local run, every skipped test and why, in one block (CI fails them instead); and
    the tests after which a worker was found ignoring SIGTERM."""
    for nodeid in _SIGTERM_RESET_AFTER:
        terminalreporter.line(f"SIGTERM was ignored after {nodeid}: reset to the default")
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if not hasattr(r, "wasxfail")]
    if not skipped:
        return
    terminalreporter.section(f"{len(skipped)} tests skipped: they did NOT run (CI=true fails them)", sep="=")
    for report in sorted(skipped, key=lambda r: r.nodeid):
        terminalreporter.line(f"SKIPPED {report.nodeid}: {_skip_reason(report)}")
