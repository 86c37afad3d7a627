"""Stores every asset value as a blob in a folder of its own run, and loads the upstream
materialization a step depends on.

Arrays become PNG (lossless: the generations must keep the jewelry pixels exactly; masks one
bit a pixel), anything else JSON. The path is `requests/<partition>/<run id>/<asset>.<png|json>`: a re-generation, a
rerun from the UI or a second /generate writes new blobs and never replaces one that an earlier
materialization points to. Each materialization records its blob in its metadata (`path`,
`uri`); `load_input` reads the path from the upstream asset's newest materialization of the
partition (through the instance's public `fetch_materializations`).
"""

import json
from typing import Any

import dagster as dg
import numpy as np

from jewel_dagster.resources.blob_store import BlobStore, artifact_path
from jewel_dagster.vision import imaging

EXTENSIONS = ("png", "json")
PATH_METADATA = "path"  # the metadata entry that names a materialization's blob


def latest_path(instance: dg.DagsterInstance, name: str, request_id: str) -> str | None:
    """The blob path recorded by the newest materialization of `name` for the request, if any."""
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(name), asset_partitions=[request_id]), limit=1
    )
    for record in result.records:
        materialization = record.asset_materialization
        entry = materialization.metadata.get(PATH_METADATA) if materialization else None
        if isinstance(entry, dg.TextMetadataValue) and entry.text:
            return entry.text
    return None


class BlobIOManager(dg.ConfigurableIOManager):
    blob_store: dg.ResourceDependency[BlobStore]

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        name = context.asset_key.path[-1]
        request_id = context.asset_partition_key
        if isinstance(obj, np.ndarray):
            extension, data, content_type = "png", imaging.encode_stored_png(obj), "image/png"
        else:
            extension = "json"
            data, content_type = json.dumps(obj).encode("utf-8"), "application/json"
        path = artifact_path(request_id, name, extension, context.run_id)
        uri = self.blob_store.put(path, data, content_type)
        context.add_output_metadata(
            {
                PATH_METADATA: dg.MetadataValue.text(path),
                "uri": dg.MetadataValue.text(uri),
                "artifact": dg.MetadataValue.url(self.blob_store.link(path)),
                "stored_bytes": len(data),
            }
        )

    def load_input(self, context: dg.InputContext) -> Any:
        name = context.asset_key.path[-1]
        request_id = context.asset_partition_key
        recorded = latest_path(context.instance, name, request_id)
        # Artifacts stored before runs had folders sit at the flat path and name no path.
        candidates = [recorded] if recorded else [artifact_path(request_id, name, ext) for ext in EXTENSIONS]
        for path in candidates:
            if self.blob_store.exists_path(path):
                data = self.blob_store.get_path(path)
                return imaging.decode_png(data) if path.endswith(".png") else json.loads(data)
        raise dg.Failure(
            description=f"{name} has not been materialized for request {request_id}"
            + (f" (its blob {recorded} is gone)" if recorded else ""),
            allow_retries=False,
        )
