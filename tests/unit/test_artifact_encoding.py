"""Intermediate artifacts: the PNG row filter, and arrays reused within one run's process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest

from jewel_dagster.resources import io_manager
from jewel_dagster.resources.array_cache import RecentArrays
from jewel_dagster.resources.blob_store import LocalBlobStore
from jewel_dagster.resources.io_manager import BlobIOManager
from jewel_dagster.storage_layout import artifact_path
from jewel_dagster.vision import imaging

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (60, 40, 3), dtype=np.uint8)
MASK = RNG.random((60, 40)) > 0.5


@pytest.mark.parametrize("png_filter", ["adaptive", "up", "sub", "none"])
def test_every_filter_is_lossless(png_filter: imaging.PngFilter) -> None:
    assert np.array_equal(imaging.decode_png(imaging.encode_png(IMAGE, png_filter)), IMAGE)
    assert np.array_equal(imaging.decode_png(imaging.encode_png(MASK, png_filter)), MASK)


def test_the_filter_is_applied() -> None:
    """A smooth gradient: "up" filters every row to zeros but the first, "none" keeps the values."""
    gradient = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 64, axis=0).repeat(3, axis=2)
    assert len(imaging.encode_png(gradient, "up")) < len(imaging.encode_png(gradient, "none"))
    assert imaging.encode_png(IMAGE, "up") != imaging.encode_png(IMAGE, "adaptive")


def test_recent_arrays_copy_evict_and_skip_what_png_changes() -> None:
    recent = RecentArrays(max_bytes=2 * IMAGE.nbytes)
    image = IMAGE.copy()
    recent.put("a.png", image)
    image[:] = 0  # the producer changing its array later does not change what was kept
    got = recent.get("a.png")
    assert got is not None and np.array_equal(got, IMAGE)
    got[:] = 0  # nor does a consumer changing what it got
    assert np.array_equal(recent.get("a.png"), IMAGE)  # type: ignore[arg-type]
    recent.put("b.png", IMAGE)
    recent.get("a.png")  # a is now the most recently used
    recent.put("c.png", IMAGE)  # no room for three: b goes
    assert recent.get("b.png") is None and recent.get("a.png") is not None and recent.get("c.png") is not None
    # PNG gives a bool mask for one uint8 channel and drops alpha: such arrays are not kept.
    for changed in (MASK.astype(np.uint8) * 255, np.dstack([IMAGE, IMAGE[:, :, :1]]), IMAGE.astype(np.int16)):
        recent.put("d.png", changed)
        assert recent.get("d.png") is None
    recent.put("m.png", MASK)
    assert np.array_equal(recent.get("m.png"), MASK)  # type: ignore[arg-type]


def test_recent_arrays_hand_an_unchangeable_array_on_as_itself() -> None:
    """An image decoded from a model's answer is read-only and owns its memory: kept and handed
    out without copies, so the HTTP clients of a later step find the bytes it came as (issue 28)."""
    recent = RecentArrays(max_bytes=4 * IMAGE.nbytes)
    answered = IMAGE.copy()
    answered.flags.writeable = False
    recent.put("a.png", answered)
    assert recent.get("a.png") is answered
    # A read-only view of memory another handle can write is copied, as a writeable array is.
    writeable = IMAGE.copy()
    view = writeable.view()
    view.flags.writeable = False
    recent.put("b.png", view)
    writeable[:] = 0
    got = recent.get("b.png")
    assert got is not view and np.array_equal(got, IMAGE)  # type: ignore[arg-type]


PARTITIONS = dg.StaticPartitionsDefinition(["r1"])


@dg.asset(partitions_def=PARTITIONS)
def canvas() -> np.ndarray:
    return IMAGE.copy()


@dg.asset(partitions_def=PARTITIONS)
def darker(canvas: np.ndarray) -> np.ndarray:
    canvas //= 2  # in place: must not reach what a later load of `canvas` returns
    return canvas


@dg.asset(partitions_def=PARTITIONS)
def summary(canvas: np.ndarray, darker: np.ndarray) -> dict[str, Any]:
    return {"canvas": int(canvas.sum()), "darker": int(darker.sum())}


def _run(instance: dg.DagsterInstance, manager: BlobIOManager, selection: list[Any]) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [canvas, darker, summary],
        selection=selection,
        partition_key="r1",
        instance=instance,
        resources={"io_manager": manager, "blob_store": manager.blob_store},
    )


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the PNG decodes of the IO manager."""
    calls: list[int] = []
    real = imaging.decode_png

    def counting(data: bytes) -> np.ndarray:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(io_manager.imaging, "decode_png", counting)
    return calls


def test_a_run_reuses_what_its_process_stored_and_a_rerun_reads_the_blobs(tmp_path: Path, decodes: list[int]) -> None:
    store = LocalBlobStore(root=str(tmp_path))
    with dg.instance_for_test() as instance:
        first = _run(instance, BlobIOManager(blob_store=store), [canvas, darker, summary])
        assert first.output_for_node("summary") == {"canvas": int(IMAGE.sum()), "darker": int((IMAGE // 2).sum())}
        assert decodes == []  # three loads of arrays, none decoded
        for name in ("canvas", "darker"):  # the blobs are written all the same
            path = io_manager.latest_path(instance, name, "r1")
            assert path and first.run_id in path and store.exists_path(path)
        # A re-execution of the last step (another process, so a new IO manager) reads the blobs.
        again = _run(instance, BlobIOManager(blob_store=store), [summary])
        assert again.output_for_node("summary") == first.output_for_node("summary")
        assert len(decodes) == 2
        # The stock path, by configuration: every load decodes; libpng's adaptive filter.
        stock = _run(
            instance,
            BlobIOManager(blob_store=store, reuse_megabytes=0, png_filter="adaptive"),
            [canvas, darker, summary],
        )
        assert stock.output_for_node("summary") == first.output_for_node("summary") and len(decodes) == 5
        path = io_manager.latest_path(instance, "canvas", "r1")
        assert path and stock.run_id in path and store.get_path(path) == imaging.encode_png(IMAGE, "adaptive")


def test_an_output_equal_to_an_array_just_stored_is_not_encoded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The canvas passed through as background_removed_image (the background stays), a mask no
    stroke changed: the PNG encoded a moment ago is stored again, in the asset's own blob. A
    signed generation's bytes are never reused for another array."""
    encodes: list[tuple[int, ...]] = []
    real = imaging.encode_stored_png

    def counting(array: np.ndarray, png_filter: imaging.PngFilter = "up") -> bytes:
        encodes.append(array.shape)
        return real(array, png_filter)

    monkeypatch.setattr(io_manager.imaging, "encode_stored_png", counting)
    store = LocalBlobStore(root=str(tmp_path))
    manager = BlobIOManager(blob_store=store)
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("requests", ["r"])
        partitions = dg.DynamicPartitionsDefinition(name="requests")

        def store_as(name: str, value: Any) -> bytes:
            context = dg.build_output_context(
                asset_key=dg.AssetKey(name),
                partition_key="r",
                run_id="run-1",
                asset_partitions_def=partitions,
                instance=instance,
            )
            manager.handle_output(context, value)
            path = artifact_path("r", name, "png", "run-1")
            return store.get_path(path)

        canvas_png = store_as("resized_image", IMAGE.copy())
        assert store_as("background_removed_image", IMAGE.copy()) == canvas_png
        mask_png = store_as("jewelry_mask", MASK.copy())
        assert store_as("refined_mask", MASK.copy()) == mask_png
        assert encodes == [IMAGE.shape, MASK.shape]  # once each
        changed = IMAGE.copy()
        changed[0, 0, 0] ^= 1
        assert np.array_equal(imaging.decode_png(store_as("flux_generation", changed)), changed)
        assert len(encodes) == 3
        signed = io_manager.EncodedImage(changed, b"signed png of the changed image", b"jpeg")
        assert store_as("gemini_generation", signed) == b"signed png of the changed image"
        store_as("final_mask", MASK.copy())
        other = changed.copy()
        assert imaging.decode_png(store_as("another_image", other)).tobytes() == other.tobytes()
