"""What one request leaves in Dagster's event log and the blob store stays small (issue 17):
previews of a few hundred bytes, masks one bit a pixel, readable by every loader."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import cv2
import dagster as dg
import numpy as np
from PIL import Image

from jewel_dagster.resources.blob_store import LocalBlobStore
from jewel_dagster.resources.io_manager import BlobIOManager
from jewel_dagster.vision import imaging
from tests.support.photos import synthetic_ring


def _mask() -> np.ndarray:
    """A ring-sized blob on a third of the canvas (the sizes scale; the test stays fast)."""
    mask = np.zeros((imaging.CANVAS_HEIGHT // 3, imaging.CANVAS_WIDTH // 3), np.uint8)
    cv2.circle(mask, (333, 433), 100, 1, -1)
    return mask.astype(bool)


def test_previews_stay_small_enough_for_the_event_log() -> None:
    photo, _ = synthetic_ring(imaging.CANVAS_WIDTH // 3, imaging.CANVAS_HEIGHT // 3)
    image_preview = imaging.preview_data_uri(photo)
    mask_preview = imaging.preview_data_uri(_mask())
    # Each is stored in its materialization event; an image's JPEG has Huffman tables fitted to
    # it (Dagster's event log on PostgreSQL cannot compress base64: issue 28, ~1.1 KB before).
    assert image_preview.startswith("data:image/jpeg;base64,") and len(image_preview) <= 900
    assert mask_preview.startswith("data:image/png;base64,") and len(mask_preview) <= 400
    shown = Image.open(io.BytesIO(base64.b64decode(mask_preview.split(",", 1)[1])))
    assert shown.mode == "1" and max(shown.size) == 64


def test_masks_are_stored_one_bit_a_pixel_and_every_loader_reads_them(tmp_path: Path) -> None:
    mask = _mask()
    stored = imaging.encode_stored_png(mask)
    assert Image.open(io.BytesIO(stored)).mode == "1"
    # The 8-bit form it replaced (zlib level 1, default strategy), and the 8-bit form encode_png
    # writes now (RLE strategy: ~3x smaller than that, still larger than one bit a pixel).
    ok, replaced = cv2.imencode(".png", mask.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok and len(stored) * 2 < len(replaced)
    assert len(stored) < len(imaging.encode_png(mask))
    assert np.array_equal(imaging.decode_png(stored), mask)  # the IO manager's loader
    assert np.array_equal(imaging.decode_mask(stored), mask)  # a maskUri given to /generate
    rgb = np.random.default_rng(0).integers(0, 256, (31, 17, 3), dtype=np.uint8)
    assert imaging.encode_stored_png(rgb) == imaging.encode_png(rgb)  # images are unchanged

    # Through the IO manager, as an asset writes it and a downstream step reads it.
    store = LocalBlobStore(root=str(tmp_path))
    manager = BlobIOManager(blob_store=store)
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("requests", ["r"])
        partitions = dg.DynamicPartitionsDefinition(name="requests")
        out = dg.build_output_context(
            asset_key=dg.AssetKey("final_mask"),
            partition_key="r",
            run_id="run-1",
            asset_partitions_def=partitions,
            instance=instance,
        )
        manager.handle_output(out, mask)
    (blob,) = (tmp_path / store.container).rglob("final_mask.png")
    assert Image.open(blob).mode == "1"
    assert np.array_equal(imaging.decode_png(blob.read_bytes()), mask)


def _shown(preview: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(preview.split(",", 1)[1]))).convert("L"), np.float32)


def test_a_canvas_preview_shows_what_the_whole_canvas_averages_to() -> None:
    """Previews are made from every few pixels (a full-canvas resize took ~20 ms each, 11 a
    request): they must still look like the area average of every pixel, fine detail included."""
    photo, _ = synthetic_ring(imaging.CANVAS_WIDTH, imaging.CANVAS_HEIGHT)
    yy, xx = np.mgrid[0 : imaging.CANVAS_HEIGHT, 0 : imaging.CANVAS_WIDTH]
    photo[(yy // 3 + xx // 3) % 2 == 0] //= 2  # a 3 px checkerboard: aliasing would show as stripes
    mask = np.zeros((imaging.CANVAS_HEIGHT, imaging.CANVAS_WIDTH), bool)
    cv2.circle(mask.view(np.uint8), (1000, 1300), 300, 1, -1)
    for array in (photo, mask):
        preview = _shown(imaging.preview_data_uri(array))
        h, w = preview.shape
        source = array.astype(np.uint8) * 255 if array.dtype == bool else cv2.cvtColor(array, cv2.COLOR_RGB2GRAY)
        expected = cv2.resize(source, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
        if array.dtype == bool:
            assert np.mean((preview > 127) != (expected > 127)) < 0.01
        else:
            assert np.abs(preview - expected).mean() < 6, np.abs(preview - expected).mean()
