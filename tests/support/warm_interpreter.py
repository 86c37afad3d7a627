"""Test stacks' processes forked from a warm interpreter instead of started cold.

Each process of a test stack spent 2-3.5 CPU-s importing Dagster, FastAPI, SQLAlchemy and the rest
before doing anything (measured alone: gateway 2.6, webserver 3.4, daemon 2.3, code server 2.8),
and the suite starts ~70 of them: ~190 of its ~780 CPU-s on a 2-core machine. A warm interpreter
(one per xdist worker) imports those libraries once, then forks a child for each start. The child
takes the start's environment, working folder, output and session, and runs the same entry point
(`python -m module ...` or a script) as `__main__`: the program that runs is the real one, from its
real entry point; only the libraries' import is shared.

Only third-party libraries, and our process entry modules that read nothing at import, are
preloaded: a module that reads the environment at import (gateway.main's app, the code location)
would keep the warm interpreter's environment, so those load in the child. Nothing that starts a
thread is preloaded either (numpy's OpenBLAS and OpenCV start native threads at import): a fork
keeps only the forking thread, and the interpreter refuses to fork once it has more than one.

`WarmProcess` stands in for `subprocess.Popen`: `pid`, `poll`, `wait`, `send_signal`, `returncode`.
The child is the warm interpreter's, not the test's, so its end is seen through a pidfd and its
exit status is asked of the interpreter, which reaps it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

# Imported once in the warm interpreter (see the module docstring for what may not be).
PRELOADED = (
    "dagster",
    "dagster_graphql",
    "dagster_webserver.cli",
    "dagster_webserver.webserver",
    "fastapi",
    "starlette.applications",
    "uvicorn",
    "httpx",
    "pydantic_settings",
    "sqlalchemy",
    "grpc",
    "azure.storage.blob",
    "celery",
    "jewel_dagster.runtime.processes.queue_daemon",
    "jewel_dagster.runtime.processes.warm_code_server",
)
_MAX_MESSAGE = 1 << 20


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _send(sock: socket.socket, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(message).encode() + b"\n"
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def _receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One message (a JSON line, sent in one piece by `_send`) and the descriptors sent with it."""
    data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 4)
    if not data:
        raise EOFError("the other side closed the control socket")
    message: dict[str, Any] = json.loads(data)
    return message, fds


# --- the warm interpreter's side ----------------------------------------------------------------


def _serve(control: socket.socket) -> dict[str, Any]:
    """Answer starts and exit-status questions until the test's process goes; returns (in a forked
    child only) the program that child is to run."""
    while True:
        try:
            message, fds = _receive(control)
        except EOFError:
            os._exit(0)
        if message["op"] == "exit_status":
            _, status = os.waitpid(message["pid"], 0)
            _send(control, {"returncode": os.waitstatus_to_exitcode(status)})
            continue
        if _threads() != 1:
            _send(control, {"error": f"the warm interpreter runs {_threads()} threads: a fork would keep one"})
            continue
        pid = os.fork()
        if pid == 0:
            _become(message, fds)
            return message
        for fd in fds:
            os.close(fd)
        _send(control, {"pid": pid})


def _become(start: Mapping[str, Any], fds: list[int]) -> None:
    """In the forked child: the start's session, output, folder and environment, as Popen sets them."""
    if start["new_session"]:
        os.setsid()
    streams = dict(zip(start["fd_targets"], fds, strict=True))
    for target in (0, 1, 2):
        if target in streams:
            os.dup2(streams[target], target)
        elif target == 2 and start["stderr_to_stdout"]:
            os.dup2(1, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # Popen's close_fds: the control socket too
    os.chdir(start["cwd"])
    os.environ.clear()
    os.environ.update(start["env"])
    _name_process(start["argv"])


def _name_process(argv: Sequence[str]) -> None:
    """Name the child after its program (`ps -o comm`, /proc/PID/comm, 15 bytes at most): every
    child shares the warm interpreter's command line, so without this `ps`, `top` and a CPU
    sampler cannot tell a gateway from a daemon."""
    program = argv[1].rsplit(".", 1)[-1] if argv[0] == "-m" else Path(argv[0]).name
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(program[:15])


def _run(start: Mapping[str, Any]) -> None:
    """Run the start's program as `python` would have: `-m module args` or `script args`."""
    argv: list[str] = start["argv"]
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        sys.path[0] = start["cwd"]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path[0] = str(Path(argv[0]).resolve().parent)
        runpy.run_path(argv[0], run_name="__main__")


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Dagster's preview and deprecation warnings, said again in each child
        for name in PRELOADED:
            importlib.import_module(name)
    _send(control, {"ready": True, "threads": _threads()})
    start = _serve(control)
    _run(start)


# --- the test's side ----------------------------------------------------------------------------


class WarmInterpreter:
    """The warm interpreter of this process (one xdist worker), started at its first use."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._lock = threading.Lock()
        self._control = ours
        self._process = subprocess.Popen(
            [sys.executable, "-u", "-m", __name__, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2],  # where `tests` imports from
        )
        theirs.close()
        ready, _ = _receive(self._control)
        if ready.get("threads") != 1:
            raise RuntimeError(f"the warm interpreter started {ready.get('threads')} threads: it cannot fork")

    @property
    def pid(self) -> int:
        return self._process.pid

    def _ask(self, message: Mapping[str, Any], fds: Sequence[int] = ()) -> dict[str, Any]:
        with self._lock:
            _send(self._control, message, fds)
            answer, _ = _receive(self._control)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def popen(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        cwd: str | os.PathLike[str],
        env: Mapping[str, str],
        stdout: IO[bytes] | int | None = None,
        stderr: IO[bytes] | int | None = None,
        start_new_session: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` like `subprocess.Popen` with the same arguments would: forked from the
        warm interpreter when it runs Python (this interpreter with `-m`, or a Python script such
        as a console script), else with Popen itself."""
        program = _program(args)
        if program is None or _startup_settings(env) != _startup_settings(os.environ):
            # Not Python, or an interpreter set up otherwise (PYTHONPATH, PYTHONWARNINGS, ...):
            # those settings act when an interpreter starts, which the warm one did already.
            return subprocess.Popen(
                args, cwd=cwd, env=env, stdout=stdout, stderr=stderr, start_new_session=start_new_session
            )
        targets, fds = [], []
        for target, stream in ((1, stdout), (2, stderr)):
            if stream is not None and stream != subprocess.STDOUT:
                targets.append(target)
                fds.append(stream if isinstance(stream, int) else stream.fileno())
        start = {
            "op": "start",
            "argv": program,
            "cwd": str(cwd),
            "env": dict(env),
            "new_session": start_new_session,
            "fd_targets": targets,
            "stderr_to_stdout": stderr == subprocess.STDOUT,
        }
        pid = self._ask(start, fds)["pid"]
        return WarmProcess(self, pid, [str(a) for a in args])

    def exit_status(self, pid: int) -> int:
        return int(self._ask({"op": "exit_status", "pid": pid})["returncode"])

    def close(self) -> None:
        self._control.close()  # the interpreter exits at the end of its socket
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=10)


def _startup_settings(env: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key.startswith("PYTHON")}


def _program(args: Sequence[str | os.PathLike[str]]) -> list[str] | None:
    """The argv to run in the warm interpreter (`-m module ...` or `script ...`), or None when
    ``args`` does not run plain Python in this virtualenv."""
    words = [str(a) for a in args]
    if words[0] == sys.executable:
        return words[1:] if len(words) > 2 and words[1] == "-m" else None
    script = Path(words[0])
    if script.parent == Path(sys.executable).parent and script.is_file():
        with script.open("rb") as head:
            first = head.readline()
        if first.startswith(b"#!") and b"python" in first:
            return words
    return None


class WarmProcess(subprocess.Popen[bytes]):
    """A child of the warm interpreter, seen as a Popen: see the module docstring."""

    def __init__(self, interpreter: WarmInterpreter, pid: int, args: list[str]) -> None:
        # Popen.__init__ would start a process: set what its other methods read instead.
        self.args = args
        self.pid = pid
        self.returncode = None
        self.stdin = self.stdout = self.stderr = None
        self._child_created = False  # Popen.__del__ looks at it
        self._interpreter = interpreter
        self._pidfd = os.pidfd_open(pid)

    def _ended(self, timeout: float | None) -> bool:
        return bool(select.select([self._pidfd], [], [], timeout)[0])

    def poll(self) -> int | None:
        if self.returncode is None and self._ended(0):
            self.returncode = self._interpreter.exit_status(self.pid)
            os.close(self._pidfd)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not self._ended(timeout):
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self.returncode = self._interpreter.exit_status(self.pid)
            os.close(self._pidfd)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            signal.pidfd_send_signal(self._pidfd, sig)


_INTERPRETER: WarmInterpreter | None = None
_START_LOCK = threading.Lock()


def warm_interpreter() -> WarmInterpreter:
    """This process's warm interpreter, started on first use and closed at exit."""
    global _INTERPRETER
    with _START_LOCK:
        if _INTERPRETER is None:
            _INTERPRETER = WarmInterpreter()
            atexit.register(_INTERPRETER.close)
        return _INTERPRETER


if __name__ == "__main__":
    main()
