"""What the IO manager costs a run: a chain of steps handing the 2000x2667 canvas on, in-process.

    .venv/bin/python -m benchmarks.artifact_io [--runs 6] [--steps 9]

Each run materializes `--steps` assets, each loading the previous canvas (and a mask) and
returning them unchanged, with the project's `BlobIOManager` on a local blob store. The two
settings alternate run by run in this process, so machine load hits both alike:
- stock artifacts: libpng's adaptive PNG filter, every load decoding its blob
  (ARTIFACT_PNG_FILTER=adaptive, ARTIFACT_REUSE_MEGABYTES=0);
- ours: the "up" filter and the arrays this process stored reused (the defaults).
Prints median and p95 of each run's wall time and of the process's CPU time, and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import dagster as dg
import numpy as np

from benchmarks.common import REPO_ROOT, percentile
from jewel_dagster.resources.blob_store import LocalBlobStore
from jewel_dagster.resources.io_manager import BlobIOManager
from jewel_dagster.vision import imaging

SETTINGS = {
    "stock artifacts": {"png_filter": "adaptive", "reuse_megabytes": 0},
    "ours": {},
}
PARTITIONS = dg.StaticPartitionsDefinition(["bench"])


def chain(steps: int) -> list[dg.AssetsDefinition]:
    """`steps` assets: the first makes the canvas and mask, each next one passes them on."""
    photo = imaging.decode_image((REPO_ROOT / "samples" / "ring.jpg").read_bytes())
    canvas, _ = imaging.fit_to_canvas(photo)
    mask = np.zeros(canvas.shape[:2], dtype=bool)
    mask[900:1700, 600:1400] = True

    @dg.multi_asset(outs={"canvas_0": dg.AssetOut(), "mask_0": dg.AssetOut()}, partitions_def=PARTITIONS, name="step_0")
    def first() -> tuple[np.ndarray, np.ndarray]:
        return canvas, mask

    assets: list[dg.AssetsDefinition] = [first]
    for i in range(1, steps):

        def passes_on(previous_canvas: np.ndarray, previous_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return previous_canvas, previous_mask

        assets.append(
            dg.multi_asset(
                outs={f"canvas_{i}": dg.AssetOut(), f"mask_{i}": dg.AssetOut()},
                ins={
                    "previous_canvas": dg.AssetIn(f"canvas_{i - 1}"),
                    "previous_mask": dg.AssetIn(f"mask_{i - 1}"),
                },
                partitions_def=PARTITIONS,
                name=f"step_{i}",
            )(passes_on)
        )
    return assets


def one_run(
    assets: list[Any], instance: dg.DagsterInstance, store: LocalBlobStore, settings: dict
) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = dg.materialize(
        assets,
        partition_key="bench",
        instance=instance,
        resources={"io_manager": BlobIOManager(blob_store=store, **settings), "blob_store": store},
    )
    if not result.success:
        raise RuntimeError("the benchmark run failed")
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=9)
    args = parser.parse_args()
    assets = chain(args.steps)
    walls: dict[str, list[float]] = {name: [] for name in SETTINGS}
    cpus: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as root, dg.instance_for_test() as instance:
        store = LocalBlobStore(root=root)
        one_run(assets, instance, store, {})  # warm-up
        for _ in range(args.runs):
            for name, settings in SETTINGS.items():
                wall, cpu = one_run(assets, instance, store, settings)
                walls[name].append(wall)
                cpus[name].append(cpu)
    for name in SETTINGS:
        print(
            f"{name}: n={len(walls[name])} wall median={statistics.median(walls[name]):.2f} s "
            f"p95={percentile(walls[name], 95):.2f} s; CPU median={statistics.median(cpus[name]):.2f} s "
            f"p95={percentile(cpus[name], 95):.2f} s ({args.steps} steps)"
        )
    for kind, values in (("wall", walls), ("CPU", cpus)):
        ratio = statistics.median(values["stock artifacts"]) / statistics.median(values["ours"])
        print(f"ratio stock artifacts / ours ({kind}, median): {ratio:.2f}x")


if __name__ == "__main__":
    main()
