"""Which CPython build the virtualenv is made from: the same work timed on two interpreters,
alternated in one run.

    .venv/bin/python -m benchmarks.interpreter [--repeats 7] [--baseline PATH] [--ours PATH]

Why it matters (issue 27): the suite's time on 2 cores is bound by CPU, and most of that CPU is
pure Python (Dagster, SQLAlchemy, GraphQL, pytest, the gateway). pyenv's default build of
CPython (`--enable-shared`, no profile-guided or link-time optimization) runs it markedly
slower than Debian's python3.11 (built with both, libpython linked into the binary); the
Makefile makes the virtualenv from the latter where it exists (BASE_PYTHON).

Two workloads, each in a fresh process of each interpreter, its CPU (user + system) read from
`wait4`:
- `python`: plain Python of the kinds our processes run (calls, objects, dicts, strings, json,
  regular expressions), stdlib only;
- `import`: `import dagster` and our Definitions, the start-up every stack process and run worker
  pays, with this virtualenv's packages on the path (both builds are CPython 3.11 with one ABI).
Prints each one's median and p95 and ratio = baseline median / ours median (above 1: ours is
faster). Baseline: the interpreter python3 on PATH resolves to when it is not ours (pyenv's on
these machines).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
from pathlib import Path

from benchmarks.common import REPO_ROOT, percentile

_PYTHON_WORK = r"""
import json, re
from dataclasses import dataclass

@dataclass
class Step:
    key: str
    status: str
    seconds: float

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

fib(25)
steps = [Step(f"step_{i}", "SUCCESS" if i % 3 else "FAILURE", i / 7) for i in range(200_000)]
by_status = {}
for step in steps:
    by_status.setdefault(step.status, []).append(step.key.upper())
text = json.dumps([{"key": s.key, "status": s.status, "seconds": s.seconds} for s in steps[:50_000]])
assert len(json.loads(text)) == 50_000
pattern = re.compile(r"step_(\d+)")
assert sum(int(m.group(1)) for m in pattern.finditer(" ".join(s.key for s in steps))) > 0
"""

_IMPORT_WORK = "import dagster\nfrom jewel_dagster.definitions import defs\nassert defs is not None\n"


def _run(interpreter: str, code: str) -> float:
    """CPU-seconds of one fresh process of `interpreter` running `code`."""
    env = {
        **os.environ,
        # This virtualenv's packages and the checkout, whichever interpreter runs.
        "PYTHONWARNINGS": "ignore",  # Dagster's preview warnings, once per process
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), sysconfig.get_paths()["purelib"]]),
    }
    process = subprocess.Popen([interpreter, "-c", code], env=env, cwd=REPO_ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{interpreter} failed on the workload (exit {os.waitstatus_to_exitcode(status)})")
    return usage.ru_utime + usage.ru_stime


def _default_baseline(ours: str) -> str:
    """python3 on PATH outside this virtualenv, resolved; ours if it is the same file."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    found = shutil.which("python3", path=path)
    if found is None:
        return ours
    resolved = subprocess.run(
        [found, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    return os.path.realpath(resolved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--ours", default=os.path.realpath(sys._base_executable), help="default: this venv's base")
    parser.add_argument("--baseline", default=None, help="default: python3 on PATH, resolved")
    args = parser.parse_args()
    baseline = args.baseline or _default_baseline(args.ours)
    print(f"ours: {args.ours}\nbaseline: {baseline}")
    for name, code in (("python", _PYTHON_WORK), ("import", _IMPORT_WORK)):
        _run(args.ours, code), _run(baseline, code)  # warm the page cache for both
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(args.repeats):  # alternated, so a slower phase of the machine hits both
            ours.append(_run(args.ours, code))
            theirs.append(_run(baseline, code))
        ratio = statistics.median(theirs) / statistics.median(ours)
        print(
            f"{name}: ours median {statistics.median(ours):.2f} CPU-s p95 {percentile(ours, 95):.2f}"
            f" | baseline median {statistics.median(theirs):.2f} CPU-s p95 {percentile(theirs, 95):.2f}"
            f" | ratio {ratio:.2f}x"
        )


if __name__ == "__main__":
    main()
