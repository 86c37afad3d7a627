"""Step stdout/stderr in the blob store's Azure container, so the Dagster UI of a deployment shows
them whichever container ran the step.

Dagster's default compute log manager writes under $DAGSTER_HOME/storage of the process that ran
the step: in docker-compose, the code server's container, which the webserver cannot read (the UI
then shows "no logs"). dagster-azure's `AzureBlobComputeLogManager` keeps them in a blob container,
but it only builds `https://<account>.blob.<suffix>/` URLs, so it cannot reach Azurite (or any
endpoint given as a connection string or `AZURE_ACCOUNT_URL`). This subclass takes its container
client from the project's own blob store settings (`AZURE_STORAGE_CONNECTION_STRING`, or
`AZURE_ACCOUNT_NAME` + `AZURE_ACCOUNT_KEY` [+ `AZURE_ACCOUNT_URL`], `AZURE_CONTAINER_NAME`), with
its timeouts and bounded retries: logs go where the blobs go, under `prefix`. Everything else
(capture, partial uploads every `upload_interval` seconds, reads for the UI) is dagster-azure's.

dagster.postgres.yaml names it; devtools/instance_config.py drops it when no Azure storage is
configured, and names dagster-azure's stock manager instead on real Azure (an account name and key
on `https://<account>.blob.core.windows.net`), where this subclass adds nothing.

Private symbols used (checked against dagster 1.13.27, dagster-azure 0.29.27):
- `dagster_azure.blob.compute_log_manager.AzureBlobComputeLogManager`: subclassed (a public class
  of that package); its `_blob_client` and `_container_client` attributes, set in `__init__`,
  replaced by clients on our endpoint (they are all it uses to reach storage).
- `dagster._serdes.ConfigurableClassData`: the `from_config_value` signature.
- `azure.storage.blob.ContainerClient._get_blob_service_client()`: the service client of the
  container client (azure-storage-blob 12.x), for the parent's SAS and delegation-key calls.
Canary: tests/e2e/test_compose_processes.py reads a step's stdout back through the webserver's
GraphQL (`capturedLogs`) from Azurite.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster._serdes import ConfigurableClassData
from dagster_azure.blob.compute_log_manager import AzureBlobComputeLogManager

from jewel_dagster.resources.blob_store import AzureBlobStore
from jewel_dagster.resources.selection import build_blob_store
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.storage_layout import COMPUTE_LOGS_PREFIX


class BlobStoreComputeLogManager(AzureBlobComputeLogManager):
    """AzureBlobComputeLogManager on the blob store's Azure endpoint and container."""

    def __init__(
        self,
        prefix: str = COMPUTE_LOGS_PREFIX,
        local_dir: str | None = None,
        upload_interval: int | None = None,
        inst_data: ConfigurableClassData | None = None,
    ) -> None:
        store = build_blob_store(PipelineSettings(), inside_dagster=False)
        if not isinstance(store, AzureBlobStore):
            raise dg.DagsterInvalidConfigError(
                "compute_logs: BlobStoreComputeLogManager needs Azure storage "
                "(AZURE_STORAGE_CONNECTION_STRING, or AZURE_ACCOUNT_NAME and AZURE_ACCOUNT_KEY)",
                [],
                None,
            )
        container = store.container_client()
        super().__init__(
            storage_account=container.account_name,
            container=container.container_name,
            # Only to satisfy the parent's constructor, which builds clients we replace below.
            access_key_or_sas_token="unused",
            local_dir=local_dir,
            inst_data=inst_data,
            prefix=prefix,
            upload_interval=upload_interval,
        )
        self._container_client = container
        self._blob_client = container._get_blob_service_client()

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            "prefix": dg.Field(dg.StringSource, is_required=False, default_value=COMPUTE_LOGS_PREFIX),
            "local_dir": dg.Field(dg.Noneable(dg.StringSource), is_required=False, default_value=None),
            "upload_interval": dg.Field(dg.Noneable(int), is_required=False, default_value=None),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> BlobStoreComputeLogManager:
        return cls(inst_data=inst_data, **config_value)
