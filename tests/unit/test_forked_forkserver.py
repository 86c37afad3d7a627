"""processes/forked_forkserver.py: the forkserver forked from its process serves multiprocessing's
workers, and ends with the process that forked it (it keeps no end of its own "alive" pipe)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.e2e_stack import wait_until

_FORK_AND_USE = """
import multiprocessing, os, sys
from jewel_dagster.runtime.processes.forked_forkserver import start_forked_forkserver

def parent_of_worker(queue):
    # colorsys: preloaded by the forkserver after the fork, so not in the parent
    queue.put((os.getppid(), open("/proc/self/comm").read().strip(), "colorsys" in sys.modules))

if __name__ == "__main__":
    server = start_forked_forkserver(["json", "colorsys"], imported_first=["json"])
    context = multiprocessing.get_context("forkserver")
    queue = context.Queue()
    worker = context.Process(target=parent_of_worker, args=(queue,))
    worker.start()
    parent, name, preloaded = queue.get(timeout=30)
    worker.join(30)
    print(server, parent, name, worker.exitcode, preloaded, "colorsys" in sys.modules, flush=True)
"""

_WITH_A_THREAD = """
import threading
from jewel_dagster.runtime.processes.forked_forkserver import start_forked_forkserver

stop = threading.Event()
threading.Thread(target=stop.wait, daemon=True).start()
print(start_forked_forkserver(["json"], imported_first=["json"]))
stop.set()
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_come_from_the_forked_server_which_ends_with_its_process(tmp_path: Path) -> None:
    script = tmp_path / "fork_and_use.py"
    script.write_text(_FORK_AND_USE)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=os.getcwd(), check=False
    )
    assert done.returncode == 0, done.stderr
    server, parent, name, exitcode, preloaded, imported_here = done.stdout.split()
    assert server != "None", "nothing was forked from a single-threaded process"
    assert parent == server, "the worker was not forked by the forked forkserver"
    assert (name, exitcode) == ("run_worker", "0")
    assert (preloaded, imported_here) == ("True", "False"), "the rest of the preloads is the forkserver's"
    # The process that forked it has exited: its forkserver must follow (init reaps it).
    wait_until(lambda: not _alive(int(server)), "the forkserver's exit after its process ended", timeout=30, every=0.05)


def test_nothing_is_forked_while_another_python_thread_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WITH_A_THREAD], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
