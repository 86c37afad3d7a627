"""The Makefile's choice of interpreter for .venv (BASE_PYTHON): Debian's optimized python3.11
where it can make a virtualenv, and a .venv made from another interpreter made again, so that an
older checkout's .venv does not keep the slower build (issue 27; `benchmarks.interpreter`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from devtools.stack import REPO_ROOT

DEBIAN_PYTHON = "/usr/bin/python3.11"


def _make(*args: str) -> str:
    # The Makefile's own defaults, whatever the caller's make exported.
    exported = {"BASE_PYTHON", "VENV", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    env = {name: value for name, value in os.environ.items() if name not in exported}
    done = subprocess.run(
        ["make", "-s", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def _debian_python_makes_venvs() -> bool:
    try:
        check = subprocess.run([DEBIAN_PYTHON, "-c", "import ensurepip, venv"], capture_output=True, timeout=30)
    except FileNotFoundError:
        return False
    return check.returncode == 0


def test_the_virtualenv_is_made_from_debians_python_where_it_can_be(tmp_path: Path) -> None:
    expected = DEBIAN_PYTHON if _debian_python_makes_venvs() else "python3"
    # -n prints the recipes without running them: the venv's, for a folder that has none yet.
    planned = _make("-n", "install", f"VENV={tmp_path / 'venv'}")
    assert f"{expected} -m venv {tmp_path / 'venv'}" in planned.splitlines()


def test_a_virtualenv_of_another_interpreter_is_made_again(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".base").write_text("/opt/elsewhere/python3\n")
    (venv / "kept-by-the-old-venv").touch()
    _make(str(venv / ".base"), f"VENV={venv}", f"BASE_PYTHON={DEBIAN_PYTHON}")
    assert (venv / ".base").read_text() == f"{DEBIAN_PYTHON}\n"
    assert not (venv / "kept-by-the-old-venv").exists()


def test_a_virtualenv_of_the_same_interpreter_is_kept(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".base").write_text(f"{DEBIAN_PYTHON}\n")
    (venv / "kept").touch()
    before = (venv / ".base").stat().st_mtime_ns
    _make(str(venv / ".base"), f"VENV={venv}", f"BASE_PYTHON={DEBIAN_PYTHON}")
    assert (venv / "kept").exists()
    assert (venv / ".base").stat().st_mtime_ns == before  # so .installed is not made again
