"""Fixtures every test may use, and the suite's rules on skips.

On CI (CI=true) a skipped test is a failed test: CI installs every dependency (.ci/run), so a
skip there means something a test needs went missing, and the suite must say so. Elsewhere a
test may skip (no Chromium on a laptop, say), and the end of the run lists each skip and why.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

from jewel_dagster.resources.selection import build_resources
from jewel_dagster.settings import PipelineSettings
from tests.support.infra import on_ci


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
    """After a local run, every skipped test and why, in one block (CI fails them instead)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if not hasattr(r, "wasxfail")]
    if not skipped:
        return
    terminalreporter.section(f"{len(skipped)} tests skipped: they did NOT run (CI=true fails them)", sep="=")
    for report in sorted(skipped, key=lambda r: r.nodeid):
        terminalreporter.line(f"SKIPPED {report.nodeid}: {_skip_reason(report)}")
