"""The tests' warm interpreter (tests/support/warm_interpreter.py) starts a program as Popen would:
its arguments, environment, folder, output and session, and its exit status, seen through the
Popen methods the stacks use; and it does save the imports it is there for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.warm_interpreter import WarmProcess, warm_interpreter

PROGRAM = """\
import os, sys
print("argv", sys.argv[1:], "cwd", os.getcwd(), "env", os.environ.get("WARM_TEST"))
print("own session", os.getsid(0) == os.getpid(), "dagster already imported", "dagster" in sys.modules)
print("named", open("/proc/self/comm").read().strip())
sys.stderr.write("to stderr\\n")
sys.exit(int(os.environ.get("WARM_EXIT", "0")))
"""


@pytest.fixture
def program(tmp_path: Path) -> Path:
    (tmp_path / "warm_test_program.py").write_text(PROGRAM)
    return tmp_path


def _start(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with (folder / "out.log").open("ab") as out:
        return warm_interpreter().popen(
            [sys.executable, "-m", "warm_test_program", *args],
            cwd=str(folder),
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_a_module_runs_forked_with_its_arguments_environment_folder_output_and_session(program: Path) -> None:
    process = _start(program, "a", "b c", env={"WARM_TEST": "yes", "WARM_EXIT": "3"})
    assert isinstance(process, WarmProcess)
    assert process.wait(timeout=30) == 3
    assert process.poll() == 3 and process.returncode == 3
    lines = (program / "out.log").read_text().splitlines()
    assert f"argv ['a', 'b c'] cwd {program} env yes" in lines
    # Preloaded: the child found Dagster imported, which is the point of the warm interpreter.
    assert "own session True dagster already imported True" in lines
    assert "to stderr" in lines
    assert "named warm_test_progr" in lines  # ps and samplers tell the children apart (15 bytes)


def test_a_running_child_polls_none_times_out_and_reports_the_signal_that_ended_it(program: Path) -> None:
    (program / "warm_test_program.py").write_text("import signal\nsignal.pause()\n")  # runs until signalled
    process = _start(program)
    assert process.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.2)
    os.killpg(process.pid, signal.SIGTERM)  # as Stack.stop signals a process group
    assert process.wait(timeout=30) == -signal.SIGTERM
    process = _start(program)
    process.kill()
    assert process.wait(timeout=30) == -signal.SIGKILL


def test_what_is_not_plain_python_here_starts_with_popen(tmp_path: Path) -> None:
    started = warm_interpreter().popen(["/bin/true"], cwd=str(tmp_path), env=dict(os.environ))
    assert type(started) is subprocess.Popen and started.wait(timeout=30) == 0
    # A different interpreter start-up setting: only a new interpreter would honour it.
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    started = warm_interpreter().popen([sys.executable, "-m", "json.tool", "--help"], cwd=str(tmp_path), env=env)
    assert type(started) is subprocess.Popen and started.wait(timeout=30) == 0

