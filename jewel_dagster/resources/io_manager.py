"""Stores every asset value as a blob in a folder of its own run, and loads the upstream
materialization a step depends on.

Arrays become PNG (lossless: the generations must keep the jewelry pixels exactly; masks one
bit a pixel), anything else JSON. The path is `requests/<partition>/<run id>/<asset>.<png|json>`: a re-generation, a
rerun from the UI or a second /generate writes new blobs and never replaces one that an earlier
materialization points to. Each materialization records its blob in its metadata (`path`,
`uri`); `load_input` reads the path from the upstream asset's newest materialization of the
partition (through the instance's public `fetch_materializations`).

Within one run's process the IO manager also keeps the arrays it stored lately (`RecentArrays`,
`reuse_megabytes`): a step loading what an earlier step of the same process stored gets the
array back without decoding the PNG. The generated images are also stored as the JPEG the
gateway hands out (`contract.JPEG_RENDITION_ASSETS`). `png_filter` picks the PNG row filter (`imaging.encode_png`).
"""

import json
from typing import Any

import dagster as dg
import numpy as np
from pydantic import Field, PrivateAttr

from jewel_dagster.contract import JPEG_RENDITION_ASSETS
from jewel_dagster.resources.array_cache import RecentArrays
from jewel_dagster.resources.blob_store import BlobStore, artifact_path, jpeg_rendition_path
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
    png_filter: imaging.PngFilter = Field(
        default="up", description="PNG row filter of stored arrays; adaptive is libpng's default (slower)."
    )
    reuse_megabytes: int = Field(
        default=64, ge=0, description="Arrays this process stored, kept to skip decoding them again; 0 = off."
    )
    _recent: RecentArrays | None = PrivateAttr(default=None)

    def _recent_arrays(self) -> RecentArrays | None:
        if self.reuse_megabytes and self._recent is None:
            self._recent = RecentArrays(self.reuse_megabytes * 1024 * 1024)
        return self._recent

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        name = context.asset_key.path[-1]
        request_id = context.asset_partition_key
        if isinstance(obj, np.ndarray):
            extension, data, content_type = "png", imaging.encode_stored_png(obj, self.png_filter), "image/png"
        else:
            extension = "json"
            data, content_type = json.dumps(obj).encode("utf-8"), "application/json"
        path = artifact_path(request_id, name, extension, context.run_id)
        uri = self.blob_store.put(path, data, content_type)
        if extension == "png" and name in JPEG_RENDITION_ASSETS and obj.ndim == 3:
            self.blob_store.put(jpeg_rendition_path(path), imaging.encode_jpeg(obj), "image/jpeg")
        recent = self._recent_arrays()
        if recent is not None and isinstance(obj, np.ndarray):
            recent.put(path, obj)  # only once the blob is stored
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
        recent = self._recent_arrays()
        kept = recent.get(recorded) if recent is not None and recorded else None
        if kept is not None:
            return kept
        for path in candidates:
            if self.blob_store.exists_path(path):
                data = self.blob_store.get_path(path)
                return imaging.decode_png(data) if path.endswith(".png") else json.loads(data)
        raise dg.Failure(
            description=f"{name} has not been materialized for request {request_id}"
            + (f" (its blob {recorded} is gone)" if recorded else ""),
            allow_retries=False,
        )
