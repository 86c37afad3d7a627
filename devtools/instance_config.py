"""The Dagster instance's dagster.yaml, from one base and overlays, by one function.

`dagster.yaml` is the base every deployment shares (run queue, limits, monitoring, retries,
tick retention); `dagster.postgres.yaml` lays PostgreSQL storage and blob step logs over it;
`dagster.celery.yaml` lays the Celery launcher over that. Each overlay replaces whole top-level
blocks. `make run` (devtools.stack), the tests and every container of the image (its entry point,
`python -m devtools.instance_config <command>`) write $DAGSTER_HOME/dagster.yaml with
`write_instance_config`, so what runs in a container is what the tests ran.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from jewel_dagster.contract import OWNER_TAG
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.storage_layout import COMPUTE_LOGS_PREFIX

CONFIG_DIR = Path(__file__).resolve().parent.parent  # the repo root, /app in the image
BASE = "dagster.yaml"
POSTGRES_OVERLAY = "dagster.postgres.yaml"
CELERY_OVERLAY = "dagster.celery.yaml"
DEFAULT_CONTAINER: str = PipelineSettings.model_fields["azure_container_name"].default


def uses_celery(env: Mapping[str, str]) -> bool:
    return (env.get("RUN_LAUNCHER") or "default").lower() == "celery"


def postgres_url(env: MutableMapping[str, str]) -> str:
    """DAGSTER_PG_URL, built from DAGSTER_PG_HOST/PORT/USERNAME/PASSWORD/DB when only those are
    set, with the psycopg2 driver named (written back into ``env``: the storages read it there)."""
    if env.get("DAGSTER_PG_HOST") and not env.get("DAGSTER_PG_URL"):
        user = quote(env.get("DAGSTER_PG_USERNAME", "postgres"), safe="")
        password = env.get("DAGSTER_PG_PASSWORD", "")
        auth = f"{user}:{quote(password, safe='')}" if password else user
        env["DAGSTER_PG_URL"] = (
            f"postgresql://{auth}@{env['DAGSTER_PG_HOST']}:{env.get('DAGSTER_PG_PORT', '5432')}"
            f"/{env.get('DAGSTER_PG_DB', 'dagster')}"
        )
    url = env.get("DAGSTER_PG_URL", "")
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            # SQLAlchemy 2.1 maps a plain postgresql:// to psycopg 3; dagster-postgres ships psycopg2.
            env["DAGSTER_PG_URL"] = "postgresql+psycopg2://" + url[len(plain) :]
    return url


def load_overlays(names: list[str], config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """The base and the named overlays, each replacing the top-level blocks it has."""
    config: dict[str, Any] = {}
    for name in [BASE, *names]:
        config.update(yaml.safe_load((config_dir / name).read_text()) or {})
    return config


def celery_workers(env: Mapping[str, str]) -> int:
    """The Celery workers runs may go to: CELERY_WORKERS, or the addresses the compose service
    CELERY_WORKERS_SERVICE resolves to (Docker's DNS answers one per replica: `--scale worker=N`)."""
    service = env.get("CELERY_WORKERS_SERVICE")
    if service:
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(service, None, type=socket.SOCK_STREAM)}
        except OSError:
            addresses = set()
        if addresses:
            return len(addresses)
    return int(env.get("CELERY_WORKERS") or "2")


def instance_config(env: MutableMapping[str, str], config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """The instance configuration ``env`` asks for: SQLite by default, PostgreSQL when DAGSTER_PG_*
    says so, Celery's launcher with RUN_LAUNCHER=celery; then the limits and polls env sets."""
    url = postgres_url(env)
    home = Path(env["DAGSTER_HOME"])
    overlays = [POSTGRES_OVERLAY] if url else []
    if uses_celery(env):
        if not env.get("CELERY_BROKER_URL") or not env.get("CELERY_RESULT_BACKEND"):
            raise ValueError("RUN_LAUNCHER=celery needs CELERY_BROKER_URL and CELERY_RESULT_BACKEND")
        overlays.append(CELERY_OVERLAY)
    config = load_overlays(overlays, config_dir)
    stock = env.get("DAGSTER_STOCK_SETTINGS", "").lower() in ("1", "true")
    if not url and not stock:
        config["event_log_storage"] = {
            "module": "jewel_dagster.runtime.instance_plugins.pool_claims",
            "class": "QuickClaimSqliteEventLogStorage",
            "config": {"base_dir": str(home / "history" / "runs"), "claim_interval_seconds": 0.25},
        }
    if stock:
        # Dagster's defaults (queue polled every 5 s, no threads, pool claims backing off to
        # 15 s): the benchmarks' baseline.
        config["run_coordinator"]["config"] = {}
        if url:
            config["event_log_storage"]["module"] = "dagster_postgres.event_log"
            config["event_log_storage"]["class"] = "PostgresEventLogStorage"
            config["event_log_storage"]["config"].pop("claim_interval_seconds")
    if stock or env.get("RUN_QUEUE") == "polled":
        # Dagster's own coordinator (the daemon then dequeues at its poll only): the baseline.
        config["run_coordinator"].update(module="dagster.core.run_coordinator", **{"class": "QueuedRunCoordinator"})
    if env.get("RUN_QUEUE_POLL_SECONDS"):  # tests: a poll too slow to be what starts a run
        config["run_coordinator"]["config"]["dequeue_interval_seconds"] = int(env["RUN_QUEUE_POLL_SECONDS"])
    compute_logs = compute_logs_config(env, config.get("compute_logs"))
    if compute_logs is None:
        config.pop("compute_logs", None)
    else:
        config["compute_logs"] = compute_logs
    runs = config["concurrency"]["runs"]
    if uses_celery(env):
        if env.get("CELERY_QUEUE"):
            config["run_launcher"]["config"]["default_queue"] = env["CELERY_QUEUE"]
        # What the workers can take now: follows the worker count, no hand edit.
        runs["max_concurrent_runs"] = celery_workers(env) * int(env.get("CELERY_CONCURRENCY") or "2")
    elif env.get("MAX_CONCURRENT_RUNS"):
        runs["max_concurrent_runs"] = int(env["MAX_CONCURRENT_RUNS"])
    # Run monitoring's poll, and how long after a run's end its pool slots are freed: dagster.yaml's
    # 5 s (10 s with Celery) unless set (tests shorten them: each fault test waits for one).
    if env.get("RUN_MONITORING_POLL_SECONDS"):
        config["run_monitoring"]["poll_interval_seconds"] = int(env["RUN_MONITORING_POLL_SECONDS"])
    if env.get("FREE_SLOTS_AFTER_RUN_END_SECONDS"):
        config["run_monitoring"]["free_slots_after_run_end_seconds"] = int(env["FREE_SLOTS_AFTER_RUN_END_SECONDS"])
    if env.get("GPU_POOL_SIZE"):
        config["concurrency"]["pools"]["default_limit"] = int(env["GPU_POOL_SIZE"])
    per_caller(runs, env)
    return config


def compute_logs_config(env: Mapping[str, str], ours: dict[str, Any] | None) -> dict[str, Any] | None:
    """Where step logs go (``ours``: the block dagster.postgres.yaml has, None without it).

    None without Azure storage (logs stay under $DAGSTER_HOME, as on the embedded default);
    dagster-azure's stock `AzureBlobComputeLogManager` on real Azure (an account name and key, on
    the account's own `https://<account>.blob.core.windows.net`); ours on any other endpoint
    (Azurite, a connection string, AZURE_ACCOUNT_URL), which the stock one cannot reach. Secrets
    stay in the environment: the file names the variables."""
    name, key = env.get("AZURE_ACCOUNT_NAME"), env.get("AZURE_ACCOUNT_KEY")
    if ours is None or (not env.get("AZURE_STORAGE_CONNECTION_STRING") and not (name and key)):
        return None
    url = (env.get("AZURE_ACCOUNT_URL") or "").rstrip("/")
    if env.get("AZURE_STORAGE_CONNECTION_STRING") or (url and url != f"https://{name}.blob.core.windows.net"):
        return ours
    settings = ours.get("config", {})
    return {
        "module": "dagster_azure.blob.compute_log_manager",
        "class": "AzureBlobComputeLogManager",
        "config": {
            "storage_account": {"env": "AZURE_ACCOUNT_NAME"},
            "container": env.get("AZURE_CONTAINER_NAME") or DEFAULT_CONTAINER,
            "access_key_or_sas_token": {"env": "AZURE_ACCOUNT_KEY"},
            "prefix": settings.get("prefix", COMPUTE_LOGS_PREFIX),
            "upload_interval": settings.get("upload_interval", 5),
        },
    }


def per_caller(runs: dict[str, Any], env: Mapping[str, str]) -> None:
    """The owner tag's per-caller run limit: RUNS_IN_FLIGHT_PER_CALLER, or no rule without API
    keys (one anonymous caller: the rule would only halve the runs it may have at once).
    CALLERS_HAVE_KEYS=true says there are keys to processes that are not given them (compose)."""
    limits = runs.get("tag_concurrency_limits", [])
    owner = [limit for limit in limits if limit["key"] == OWNER_TAG]
    keyed = env.get("GATEWAY_API_KEYS") or (env.get("CALLERS_HAVE_KEYS") or "").lower() == "true"
    if not keyed:
        runs["tag_concurrency_limits"] = [limit for limit in limits if limit["key"] != OWNER_TAG]
    elif env.get("RUNS_IN_FLIGHT_PER_CALLER"):
        for limit in owner:
            limit["limit"] = int(env["RUNS_IN_FLIGHT_PER_CALLER"])


def write_instance_config(env: MutableMapping[str, str], config_dir: Path = CONFIG_DIR) -> Path:
    """Write $DAGSTER_HOME/dagster.yaml for ``env`` (creating the folder); returns its path."""
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    config = instance_config(env, config_dir)
    path = home / "dagster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main(argv: list[str]) -> None:
    """The image's entry point: write the instance configuration the container's environment asks
    for, then become the service's command (so each container's dagster.yaml follows its env)."""
    env = dict(os.environ)
    write_instance_config(env)
    if argv:
        os.environ.update(env)  # DAGSTER_PG_URL as built from its parts
        os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
