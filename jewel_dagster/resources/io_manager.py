"""Stores every asset value as a blob in a folder of its own run, and loads the upstream
materialization a step depends on.

Arrays become PNG (lossless: the generations must keep the jewelry pixels exactly; masks one
bit a pixel), anything else JSON. The path is `requests/<partition>/<run id>/<asset>.<png|json>`: a re-generation, a
rerun from the UI or a second /generate writes new blobs and never replaces one that an earlier
materialization points to. Each materialization records its blob in its metadata (`path`,
`uri`).

Loads come from this run first: a step needing an asset reads the materialization its own run
made of it, else its parent run's, up the re-execution chain to the root run (`run_lineage`);
only an asset none of those runs made is read from its newest materialization. So a UI run of
the same partition alongside a request's run never hands either the other's image. The steps
load what they need through `load_value` (a step of several assets gets no Dagster input for the
ones it did not make in this run); `load_input` does the same for any Dagster input.

Within one run's process the IO manager also keeps the arrays it stored lately (`RecentArrays`,
`reuse_megabytes`): a step loading what an earlier step of the same process stored gets the
array back without decoding the PNG. It keeps the PNGs it encoded of the last few of them too: an
output equal to one of those arrays (the canvas passed through when the background stays, a mask
no stroke or speck changed) is stored with those bytes, not encoded again (~35 ms for the canvas),
in its own blob all the same. The generated images are also stored as the JPEG the
gateway hands out (`contract.JPEG_RENDITION_ASSETS`). `png_filter` picks the PNG row filter (`imaging.encode_png`).

A generated image arrives already encoded (`EncodedImage`: the step signed its PNG and JPEG,
jewel_dagster/provenance) and is stored byte for byte, so the blob, its signed URL and the API's
base64 all carry the signed bytes.
"""

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
from pydantic import Field, PrivateAttr

from jewel_dagster.contract import JPEG_RENDITION_ASSETS
from jewel_dagster.resources.array_cache import RecentArrays
from jewel_dagster.resources.blob_store import BlobStore
from jewel_dagster.storage_layout import artifact_path, jpeg_rendition_path
from jewel_dagster.vision import imaging

EXTENSIONS = ("png", "json")
PATH_METADATA = "path"  # the metadata entry that names a materialization's blob
RECENT_PNGS = 4  # PNGs kept for equal arrays: a run's canvas and masks (~1 MB each)


PARENT_RUN_TAG = "dagster/parent_run_id"
ROOT_RUN_TAG = "dagster/root_run_id"
MAX_LINEAGE = 20  # re-executions of re-executions: a bound, not a limit anyone reaches


def run_lineage(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """The run, then the run it re-executes, and so on to the root run: where its upstream
    values come from before any other run's."""
    lineage = [run.run_id]
    tags = run.tags
    while (parent := tags.get(PARENT_RUN_TAG)) and parent not in lineage and len(lineage) < MAX_LINEAGE:
        lineage.append(parent)
        parent_run = instance.get_run_by_id(parent)
        if parent_run is None:
            break
        tags = parent_run.tags
    root = run.tags.get(ROOT_RUN_TAG)
    if root and root not in lineage:
        lineage.append(root)
    return lineage


def materialization_in_runs(
    instance: dg.DagsterInstance, name: str, request_id: str, run_ids: list[str]
) -> dg.AssetMaterialization | None:
    """The newest materialization of `name` for the request made by the first of `run_ids` that
    made one (one indexed read of that run's materializations each)."""
    key = dg.AssetKey(str(name))
    for run_id in run_ids:
        records = instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, ascending=False
        ).records
        for record in records:
            materialization = record.asset_materialization
            if materialization and materialization.asset_key == key and materialization.partition == request_id:
                return materialization
    return None


def newest_materialization(instance: dg.DagsterInstance, name: str, request_id: str) -> dg.AssetMaterialization | None:
    """The request's newest materialization of `name`, whichever run made it."""
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(str(name)), asset_partitions=[request_id]), limit=1
    )
    return next((r.asset_materialization for r in result.records if r.asset_materialization), None)


def upstream_materialization(
    instance: dg.DagsterInstance, run: dg.DagsterRun, name: str, request_id: str
) -> dg.AssetMaterialization | None:
    """The materialization a run reads `name` from: its lineage's own, else the newest."""
    return materialization_in_runs(instance, name, request_id, run_lineage(instance, run)) or newest_materialization(
        instance, name, request_id
    )


def recorded_path(materialization: dg.AssetMaterialization | None) -> str | None:
    """The blob path a materialization names (None for one stored before paths were recorded)."""
    entry = materialization.metadata.get(PATH_METADATA) if materialization else None
    if isinstance(entry, dg.TextMetadataValue) and entry.text:
        return entry.text
    return None


def latest_path(instance: dg.DagsterInstance, name: str, request_id: str) -> str | None:
    """The blob path recorded by the newest materialization of `name` for the request, if any."""
    return recorded_path(newest_materialization(instance, name, request_id))


@dataclass(frozen=True)
class EncodedImage:
    """An image with the exact bytes to store: its PNG and the JPEG rendition the API hands out."""

    array: np.ndarray
    png: bytes
    jpeg: bytes


class BlobIOManager(dg.ConfigurableIOManager):
    blob_store: dg.ResourceDependency[BlobStore]
    png_filter: imaging.PngFilter = Field(
        default="up", description="PNG row filter of stored arrays; adaptive is libpng's default (slower)."
    )
    reuse_megabytes: int = Field(
        default=64, ge=0, description="Arrays this process stored, kept to skip decoding them again; 0 = off."
    )
    _recent: RecentArrays | None = PrivateAttr(default=None)
    _recent_pngs: OrderedDict[str, bytes] = PrivateAttr(default_factory=OrderedDict)

    def _recent_arrays(self) -> RecentArrays | None:
        if self.reuse_megabytes and self._recent is None:
            self._recent = RecentArrays(self.reuse_megabytes * 1024 * 1024)
        return self._recent

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        name = context.asset_key.path[-1]
        context.add_output_metadata(self.store(name, context.asset_partition_key, context.run_id, obj))

    def store(self, name: str, request_id: str, run_id: str, obj: Any) -> dict[str, Any]:
        """Stores `obj` as the blob of asset `name` made by run `run_id`; returns the metadata
        that names the blob. The steps call it themselves before they report a materialization
        (`StepValues.emit`), so Dagster writes no HANDLED_OUTPUT event a materialization (issue 28);
        `handle_output` is the same for any other output."""
        jpeg: bytes | None = None
        encoded_here = False
        if isinstance(obj, EncodedImage):
            extension, data, content_type, jpeg = "png", obj.png, "image/png", obj.jpeg
            obj = obj.array
        elif isinstance(obj, np.ndarray):
            extension, data, content_type = "png", self._png_of(obj), "image/png"
            encoded_here = True
        else:
            extension = "json"
            data, content_type = json.dumps(obj).encode("utf-8"), "application/json"
        path = artifact_path(request_id, name, extension, run_id)
        uri = self.blob_store.put(path, data, content_type)
        if extension == "png" and name in JPEG_RENDITION_ASSETS and obj.ndim == 3:
            jpeg = jpeg if jpeg is not None else imaging.encode_jpeg(obj)
            self.blob_store.put(jpeg_rendition_path(path), jpeg, "image/jpeg")
        recent = self._recent_arrays()
        if recent is not None and isinstance(obj, np.ndarray):
            recent.put(path, obj)  # only once the blob is stored
            if encoded_here:  # not a signed generation (EncodedImage): those bytes name their image
                self._recent_pngs[path] = data
                while len(self._recent_pngs) > RECENT_PNGS:
                    self._recent_pngs.popitem(last=False)
        return {
            PATH_METADATA: dg.MetadataValue.text(path),
            "uri": dg.MetadataValue.text(uri),
            "artifact": dg.MetadataValue.url(self.blob_store.link(path)),
            "stored_bytes": len(data),
        }

    def _png_of(self, array: np.ndarray) -> bytes:
        """The stored PNG of `array`: the bytes this process encoded of an equal array lately
        (equal arrays encode to the same bytes), else encoded now."""
        recent = self._recent_arrays()
        if recent is not None and self._recent_pngs:
            same = recent.equal_at(array, list(reversed(self._recent_pngs)))
            if same is not None:
                return self._recent_pngs[same]
        return imaging.encode_stored_png(array, self.png_filter)

    def load_input(self, context: dg.InputContext) -> Any:
        return self.load_value(
            context.instance, context.step_context.dagster_run, context.asset_key.path[-1], context.asset_partition_key
        )

    def load_value(self, instance: dg.DagsterInstance, run: dg.DagsterRun, name: str, request_id: str) -> Any:
        """The value of `name` for the request that `run` reads: its own lineage's first, else
        the newest materialization's (`upstream_materialization`)."""
        recorded = recorded_path(upstream_materialization(instance, run, name, request_id))
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
