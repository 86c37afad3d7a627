"""Where step logs go, by the storage a deployment has: dagster-azure's stock compute log manager
on real Azure, ours (BlobStoreComputeLogManager) on any other endpoint, none without Azure."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance
from dagster_azure.blob.compute_log_manager import AzureBlobComputeLogManager

from devtools.instance_config import write_instance_config
from tests.support.infra import postgres_database

KEY = "c2VjcmV0LWtleS1ub3QtaW4tdGhlLWZpbGU="  # base64, as Azure account keys are
REAL_AZURE = {"AZURE_ACCOUNT_NAME": "jewelacct", "AZURE_ACCOUNT_KEY": KEY, "AZURE_CONTAINER_NAME": "photos"}
AZURITE = {
    "AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    f"AccountKey={KEY};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
}


def _compute_logs(tmp_path: Path, env: dict[str, str]) -> dict[str, object] | None:
    home = tmp_path / "home"
    path = write_instance_config({"DAGSTER_HOME": str(home), "DAGSTER_PG_URL": "postgresql://u@h/db", **env})
    block: dict[str, object] | None = yaml.safe_load(path.read_text()).get("compute_logs")
    assert KEY not in path.read_text(), "a secret was written to dagster.yaml"
    return block


def test_real_azure_gets_dagster_azures_stock_manager(tmp_path: Path) -> None:
    block = _compute_logs(tmp_path, REAL_AZURE)
    assert block == {
        "module": "dagster_azure.blob.compute_log_manager",
        "class": "AzureBlobComputeLogManager",
        "config": {
            "storage_account": {"env": "AZURE_ACCOUNT_NAME"},
            "container": "photos",
            "access_key_or_sas_token": {"env": "AZURE_ACCOUNT_KEY"},
            "prefix": "compute-logs",
            "upload_interval": 5,
        },
    }
    # The account's own endpoint named explicitly is still real Azure.
    url = {**REAL_AZURE, "AZURE_ACCOUNT_URL": "https://jewelacct.blob.core.windows.net/"}
    assert _compute_logs(tmp_path, url) == block


@pytest.mark.parametrize(
    "env",
    [AZURITE, {**REAL_AZURE, "AZURE_ACCOUNT_URL": "http://127.0.0.1:10000/jewelacct"}],
    ids=["connection-string", "other-endpoint"],
)
def test_other_endpoints_keep_ours(tmp_path: Path, env: dict[str, str]) -> None:
    block = _compute_logs(tmp_path, env)
    assert block is not None and block["class"] == "BlobStoreComputeLogManager"


def test_no_azure_no_block(tmp_path: Path) -> None:
    assert _compute_logs(tmp_path, {}) is None


def test_the_instance_builds_the_stock_manager_on_real_azure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dagster itself loads the written block (no network: the clients connect on first use)."""
    with postgres_database() as url:
        env = {"DAGSTER_HOME": str(tmp_path / "home"), "DAGSTER_PG_URL": url, **REAL_AZURE}
        write_instance_config(env)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            manager = instance.compute_log_manager
            assert type(manager) is AzureBlobComputeLogManager
            assert manager.inst_data is not None and "jewelacct" not in manager.inst_data.config_yaml
