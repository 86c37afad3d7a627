"""Stores every asset value as a blob at a stable, per-request path.

Arrays become PNG (lossless: the generations must keep the jewelry pixels exactly), anything
else JSON. The path is `requests/<partition>/<asset>.<png|json>`, so the gateway can find a
request's artifacts without asking Dagster.
"""

import json
from typing import Any

import dagster as dg
import numpy as np

from jewel_dagster.resources.blob_store import BlobStore, artifact_path
from jewel_dagster.vision import imaging

EXTENSIONS = ("png", "json")


class BlobIOManager(dg.ConfigurableIOManager):
    blob_store: dg.ResourceDependency[BlobStore]

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        name = context.asset_key.path[-1]
        request_id = context.asset_partition_key
        if isinstance(obj, np.ndarray):
            extension, data, content_type = "png", imaging.encode_png(obj), "image/png"
        else:
            extension = "json"
            data, content_type = json.dumps(obj).encode("utf-8"), "application/json"
        uri = self.blob_store.put(artifact_path(request_id, name, extension), data, content_type)
        # A value of the other kind from an earlier run must not shadow this one.
        for other in EXTENSIONS:
            if other != extension:
                self.blob_store.delete_path(artifact_path(request_id, name, other))
        context.add_output_metadata(
            {
                "uri": dg.MetadataValue.text(uri),
                "artifact": dg.MetadataValue.url(self.blob_store.link(artifact_path(request_id, name, extension))),
                "stored_bytes": len(data),
            }
        )

    def load_input(self, context: dg.InputContext) -> Any:
        name = context.asset_key.path[-1]
        request_id = context.asset_partition_key
        png = artifact_path(request_id, name, "png")
        if self.blob_store.exists_path(png):
            return imaging.decode_png(self.blob_store.get_path(png))
        doc = artifact_path(request_id, name, "json")
        if self.blob_store.exists_path(doc):
            return json.loads(self.blob_store.get_path(doc))
        raise dg.Failure(
            description=f"{name} has not been materialized for request {request_id}",
            allow_retries=False,
        )
