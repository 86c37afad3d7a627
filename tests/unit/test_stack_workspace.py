"""devtools.stack rewrites the workspace file each time the webserver or daemon starts: a process
reading it meanwhile must find the whole file (test_process_faults restarts the daemon, then the
webserver: the daemon once read an empty file and never started)."""

from __future__ import annotations

import threading
from pathlib import Path

import yaml

from devtools.stack import Stack


def test_a_reader_never_sees_a_half_written_workspace(tmp_path: Path) -> None:
    stack = Stack({"DAGSTER_HOME": str(tmp_path)})
    stack.code_server_port = 4000
    path = Path(stack._workspace())
    done = threading.Event()

    def rewrite() -> None:
        while not done.is_set():
            stack._workspace()

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        torn = 0
        for _ in range(3000):
            loaded = yaml.safe_load(path.read_text())
            torn += not (isinstance(loaded, dict) and "load_from" in loaded)
    finally:
        done.set()
        writer.join()
    assert torn == 0, f"{torn} of 3000 reads found a partial file"
