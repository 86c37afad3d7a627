"""Bytes one request adds to Dagster's storage and to the blob store (issue 17).

Runs whole requests in-process (`dg.materialize`, the local classical backends, the sample
photo) against a fresh instance, on SQLite (the embedded default) or PostgreSQL (`--postgres`),
and prints the growth per request after a first warm-up request. `--stack` (PostgreSQL) sends the
requests through a whole stack instead (gateway, queue, run launcher, warm code server:
devtools.stack), as production does: the run's lifecycle and engine events, the run tags and the
gateway's own writes then count too. SQLite: the bytes of the
instance folder (per-run event files, index, runs, compute logs). PostgreSQL: the growth of
`pg_database_size` (tables and indexes), on a database created and dropped here.

    .venv/bin/python -m benchmarks.storage_size [--requests 3] [--postgres [--breakdown] [--stack] [--vacuum]]

`--breakdown` (PostgreSQL) also prints where the bytes go: per table, and per event type of the
event log (benchmarks/storage_breakdown.py). `--vacuum` runs a plain VACUUM before each
measurement, as autovacuum does on a server that takes requests all day: Dagster updates a row of
asset_keys at each materialization and the run's row at each status, and without it the dead
versions of those rows count as a request's bytes although their space is reused.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import dagster as dg
import httpx
import sqlalchemy as sa

from benchmarks import storage_breakdown
from benchmarks.common import BENCH_ENV, BODY, REPO_ROOT, final_state, percentile, postgres_database
from devtools.stack import temporary_stack
from jewel_dagster.contract import run_config_ops
from jewel_dagster.defs.assets import ALL_ASSETS
from jewel_dagster.resources.selection import build_resources
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.storage_layout import upload_path


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def pg_size(url: str, vacuum: bool = False) -> Callable[[], int]:
    """`pg_database_size` now; with `vacuum`, after a plain VACUUM (what autovacuum does on a busy
    server): the dead versions of updated rows (asset_keys, runs) become reusable space, so the
    growth counts the rows a request keeps, not the updates' garbage."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")

    def measure() -> int:
        with engine.connect() as conn:
            if vacuum:
                conn.execute(sa.text("VACUUM"))
            conn.execute(sa.text("CHECKPOINT"))
            return int(conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar_one())

    return measure


def _median_p95(sizes: list[int]) -> tuple[float, int]:
    """Median and p95 of the growth request by request (PostgreSQL grows by whole 8 KB pages, so
    single requests show as 0, 8, 16... KB: the mean over all of them is the figure that counts)."""
    steps = [b - a for a, b in itertools.pairwise(sizes)]
    return statistics.median(steps), int(percentile([float(s) for s in steps], 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--breakdown", action="store_true", help="per table and event type (PostgreSQL)")
    parser.add_argument("--stack", action="store_true", help="requests through the gateway and run launcher")
    parser.add_argument("--vacuum", action="store_true", help="VACUUM after each request, as autovacuum would")
    args = parser.parse_args()
    if (args.breakdown or args.stack or args.vacuum) and not args.postgres:
        parser.error("--breakdown, --stack and --vacuum measure PostgreSQL: add --postgres")
    if args.stack:
        stack_main(args.requests, args.breakdown, args.vacuum)
        return
    breakdown = ""
    tmp = Path(tempfile.mkdtemp(prefix="storage-size-"))
    (tmp / "home").mkdir()
    resources = build_resources(PipelineSettings(local_blob_root=str(tmp / "blobs")))
    store = resources["blob_store"]
    photo = (REPO_ROOT / "samples" / "ring.jpg").read_bytes()

    def one(instance: dg.DagsterInstance) -> None:
        rid = f"jewelry-gen-{uuid.uuid4()}"
        upload = store.put(upload_path(rid), photo)
        instance.add_dynamic_partitions("requests", [rid])
        config = run_config_ops(
            {
                "original_image": {"image_uri": upload},
                "jewelry_mask": {"points": [{"x": 0.245, "y": 0.467, "label": 1}]},
            }
        )
        result = dg.materialize(
            ALL_ASSETS, partition_key=rid, instance=instance, resources=resources, run_config={"ops": config}
        )
        assert result.success

    database = postgres_database("jewel_storage_size") if args.postgres else nullcontext(None)
    with database as url:
        overrides = {"storage": {"postgres": {"postgres_url": url}}} if url else None
        with dg.instance_for_test(temp_dir=str(tmp / "home"), overrides=overrides) as instance:
            dagster_bytes = pg_size(url, args.vacuum) if url else (lambda: folder_bytes(tmp / "home"))
            one(instance)  # warm-up: schema, snapshots, first pages
            before, blobs_before = dagster_bytes(), folder_bytes(tmp / "blobs")  # (vacuumed first)
            engine = sa.create_engine(url) if url and args.breakdown else None
            start = storage_breakdown.snapshot(engine) if engine else None
            sizes = [before]
            for _ in range(args.requests):
                one(instance)
                sizes.append(dagster_bytes())
            per_request = (sizes[-1] - before) / args.requests
            median, p95 = _median_p95(sizes)
            if engine and start:
                breakdown = storage_breakdown.report(start, storage_breakdown.snapshot(engine), args.requests)
                engine.dispose()
            blobs = (folder_bytes(tmp / "blobs") - blobs_before) / args.requests
    storage = "PostgreSQL" if args.postgres else "SQLite"
    print(
        f"{storage}: Dagster storage {per_request / 1024:.1f} KB per request (median {median / 1024:.1f} KB, "
        f"p95 {p95 / 1024:.1f} KB); blobs {blobs / 1024:.1f} KB per request"
    )
    if breakdown:
        print(breakdown)


def stack_main(requests: int, breakdown: bool, vacuum: bool) -> None:
    """Requests through a whole stack on PostgreSQL: what a production request writes."""
    with tempfile.TemporaryDirectory() as root, postgres_database("jewel_storage_size") as url:
        env = {"DAGSTER_PG_URL": url, **BENCH_ENV}
        with temporary_stack(Path(root), env) as stack, httpx.Client(base_url=stack.gateway_url, timeout=60) as client:

            def one() -> None:
                state = final_state(client, client.post("/workflow/start", json=BODY).json()["workflowId"])
                assert state["status"] == "COMPLETED", state

            one()  # warm-up: schema, snapshots, first pages
            time.sleep(2)  # the run's last writes (run end, monitoring) land before the snapshot
            engine = sa.create_engine(url)
            measure = pg_size(url, vacuum)
            sizes = [measure()]  # (vacuumed first)
            start = storage_breakdown.snapshot(engine)
            for _ in range(requests):
                one()
                time.sleep(2)
                sizes.append(measure())
            per_request = (sizes[-1] - sizes[0]) / requests
            median, p95 = _median_p95(sizes)
            end = storage_breakdown.snapshot(engine)
            engine.dispose()
    print(
        f"PostgreSQL, through the stack: Dagster storage {per_request / 1024:.1f} KB per request "
        f"(median {median / 1024:.1f} KB, p95 {p95 / 1024:.1f} KB; each: "
        f"{', '.join(f'{(b - a) / 1024:.0f}' for a, b in itertools.pairwise(sizes))} KB)"
    )
    if breakdown:
        print(storage_breakdown.report(start, end, requests))


if __name__ == "__main__":
    main()
