"""`cp .env.example .env && make run`: the environment the stack gives its processes."""

from __future__ import annotations

import shutil
from pathlib import Path

from devtools.stack import REPO_ROOT, make_run_environment
from gateway.settings import GatewaySettings


def test_env_example_copied_as_it_is_gives_absolute_folders_and_no_empty_values(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    shutil.copy(REPO_ROOT / ".env.example", dotenv)
    env = make_run_environment({"PATH": "/usr/bin"}, dotenv)
    assert Path(env["DAGSTER_HOME"]).is_absolute() and env["DAGSTER_HOME"].startswith(str(REPO_ROOT))
    assert Path(env["LOCAL_BLOB_ROOT"]).is_absolute()
    assert "" not in env.values() and "STATUS_SOURCE" not in env
    assert env["DAGSTER_PORT"] == "3000" and env["PATH"] == "/usr/bin"


def test_the_shell_wins_over_the_env_file(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("DAGSTER_HOME=relative/home\nGPU_POOL_SIZE=2\n")
    env = make_run_environment({"DAGSTER_HOME": "/srv/home", "GPU_POOL_SIZE": "1"}, dotenv)
    assert env["DAGSTER_HOME"] == "/srv/home" and env["GPU_POOL_SIZE"] == "1"
    assert make_run_environment({}, dotenv)["DAGSTER_HOME"] == str(REPO_ROOT / "relative" / "home")


def test_every_service_reads_env_example_as_it_is(tmp_path: Path) -> None:
    """The gateway's settings (a superset of the pipeline's) accept every value of the file."""
    settings = GatewaySettings(_env_file=REPO_ROOT / ".env.example")
    assert settings.status_cache_seconds is None and settings.api_port == 8001
