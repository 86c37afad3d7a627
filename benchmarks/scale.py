"""Target of issue 17: does the stack stay fast with 100,000s of request partitions?

    .venv/bin/python -m benchmarks.scale [--sizes 1000,100000,200000] [--expire 10000]

On a fresh PostgreSQL database (created here on 127.0.0.1:5432 and dropped at the end) the
whole stack runs (code server, webserver, daemon, gateway; instant local backends). Requests are
seeded through Dagster's public instance APIs, not SQL: for each one its partition
(`add_dynamic_partitions`), a successful run (`add_run`), and the materialization events of its
11 assets and its `fidelity` check evaluation (`store_event`), copied from one request really
run first (so the metadata, previews included, are the real ones). Step events (start, input,
output) are not seeded: they are per-run rows no query here reads by partition.

At each size it measures the start call and GET of seeded workflows through the gateway
(p50/p99), the GraphQL queries the Dagster UI sends for the asset graph, one asset's page and
its partitions view (median of 3), one regeneration sensor tick (in-process, as the daemon
evaluates it), a retention run removing `min(--expire, size/10)` expired requests (then
re-seeded, so the size holds), and the webserver's resident memory. Then it prints each figure
and its ratio to the first size. The stack runs only while measuring. Not a test: it takes
minutes to an hour (seeding rate printed).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import sqlalchemy as sa
from dagster_shared.record import copy as record_copy
from dagster_shared.record import is_record

from benchmarks.common import BENCH_ENV, BODY, percentile, postgres_database
from devtools.stack import Stack, free_port, prepare_dagster_home
from jewel_dagster.contract import FULL_JOB, OWNER_TAG, PARTITION_TAG, PARTITIONS_NAME, run_config_ops
from jewel_dagster.defs.assets import ALL_ASSETS
from jewel_dagster.defs.regeneration import build_regeneration_automation
from jewel_dagster.defs.retention import run_retention
from jewel_dagster.resources.blob_store import LocalBlobStore
from jewel_dagster.resources.selection import build_resources
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.storage_layout import upload_path

SEED_BATCH = 200
SEED_THREADS = 8

ASSET_GRAPH = """query AssetGraph { assetNodes { id assetKey { path } dependencyKeys { path }
  groupName opName isPartitioned partitionDefinition { type name } } }"""
ASSET_PAGE = """query AssetPage($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) { ... on Asset { key { path }
    assetMaterializations(limit: 1) { runId partition timestamp metadataEntries { label } } } }
  assetNodeOrError(assetKey: $key) { ... on AssetNode { id description opVersion
    partitionStats { numMaterialized numPartitions numFailed numMaterializing } } } }"""
PARTITIONS_VIEW = """query Partitions($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode { id
    partitionKeysByDimension { name partitionKeys }
    assetPartitionStatuses { ... on DefaultPartitionStatuses {
      materializedPartitions failedPartitions materializingPartitions } } } } }"""
FLUX_KEY = {"path": ["flux_generation"]}


def template_events(instance: dg.DagsterInstance, blobs: Path) -> list[dg.EventLogEntry]:
    """The materialization and check events of one request really run (instant backends)."""
    resources = build_resources(PipelineSettings(local_blob_root=str(blobs), local_backends="instant"))
    rid = f"jewelry-gen-{uuid.uuid4()}"
    upload = resources["blob_store"].put(
        upload_path(rid), (Path(__file__).parent.parent / "samples" / "ring.jpg").read_bytes()
    )
    instance.add_dynamic_partitions(PARTITIONS_NAME, [rid])
    config = run_config_ops({"original_image": {"image_uri": upload}, "jewelry_mask": {"points": BODY["maskPoints"]}})
    result = dg.materialize(
        ALL_ASSETS, partition_key=rid, instance=instance, resources=resources, run_config={"ops": config}
    )
    wanted = {"ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION"}
    events = [
        e for e in instance.all_logs(result.run_id) if e.dagster_event and e.dagster_event.event_type_value in wanted
    ]
    return [_passed(e) for e in events]


def _passed(entry: dg.EventLogEntry) -> dg.EventLogEntry:
    """The check result as a settled request has it: passed. (The sample photo with the instant
    backends fails the fidelity check, and a history where every request failed would have the
    sensor ask to re-generate every one of them, which is not the steady state measured here.)"""
    event = entry.dagster_event
    if event is None or event.event_type_value != "ASSET_CHECK_EVALUATION":
        return entry
    return _with(entry, dagster_event=_with(event, event_specific_data=_with(event.event_specific_data, passed=True)))


def _for_partition(entry: dg.EventLogEntry, run_id: str, partition: str) -> dg.EventLogEntry:
    """The template event, re-addressed to another run and partition (public NamedTuple fields)."""
    event = entry.dagster_event
    assert event is not None
    data: Any = event.event_specific_data
    if hasattr(data, "materialization"):
        data = _with(data, materialization=_with(data.materialization, partition=partition))
    else:
        data = _with(data, partition=partition)
    return _with(entry, run_id=run_id, timestamp=time.time(), dagster_event=_with(event, event_specific_data=data))


def _with(value: Any, **changes: Any) -> Any:
    """A copy with some fields changed: Dagster's events are NamedTuples or @records."""
    return record_copy(value, **changes) if is_record(value) else value._replace(**changes)


def _seed_batch(instance: dg.DagsterInstance, template: list[dg.EventLogEntry], size: int) -> list[str]:
    batch = [f"jewelry-gen-{uuid.uuid4()}" for _ in range(size)]
    instance.add_dynamic_partitions(PARTITIONS_NAME, batch)
    materializations: list[dg.EventLogEntry] = []
    for key in batch:
        run = dg.DagsterRun(
            job_name=FULL_JOB, status=dg.DagsterRunStatus.SUCCESS, tags={PARTITION_TAG: key, OWNER_TAG: "anonymous"}
        )
        instance.add_run(run)
        for entry in template:
            moved = _for_partition(entry, run.run_id, key)
            if moved.dagster_event and moved.dagster_event.event_type_value == "ASSET_MATERIALIZATION":
                materializations.append(moved)
            else:
                instance.store_event(moved)
    instance.event_log_storage.store_event_batch(materializations)
    return batch


def seed(instance: dg.DagsterInstance, template: list[dg.EventLogEntry], count: int) -> list[str]:
    """`count` requests with a successful run, materializations and a check result each.

    Batches are seeded by `SEED_THREADS` threads at once, each with an instance of its own whose
    storages keep one connection open (Dagster's public `optimize_for_webserver`; unpooled, they
    connect once a call): 36 requests/s unpooled, 61/s with one shared pool, here. The order of
    partitions does not matter to the figures.
    """
    sizes = [min(SEED_BATCH, count - start) for start in range(0, count, SEED_BATCH)]
    ref = instance.get_ref()
    local = threading.local()
    made: list[dg.DagsterInstance] = []

    def seed_batch(size: int) -> list[str]:
        if not hasattr(local, "instance"):
            local.instance = dg.DagsterInstance.from_ref(ref)
            local.instance.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=2)
            made.append(local.instance)
        return _seed_batch(local.instance, template, size)

    try:
        with ThreadPoolExecutor(SEED_THREADS) as pool:
            return [key for batch in pool.map(seed_batch, sizes) for key in batch]
    finally:
        for seeder in made:
            seeder.dispose()
        made.clear()
        gc.collect()  # the instances' pools close with them


def analyze(url: str) -> None:
    """Refresh the planner's statistics after seeding, as autovacuum does in a deployment.

    This machine's PostgreSQL runs with `autovacuum = off`: after 100,000 seeded requests the
    planner still had the statistics of an empty database and ANDed two index bitmaps for
    `delete_run`'s "materializations of this run" (1.1 million rows of `idx_event_type`, ~100 ms
    a query: retention removed 4 requests a second). With statistics the run-id index alone
    answers. A deployment's PostgreSQL must keep autovacuum on (its default).
    """
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("ANALYZE"))
    finally:
        engine.dispose()


def timed(call: Callable[[], Any], repeat: int) -> list[float]:
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def graphql(client: httpx.Client, url: str, query: str, variables: dict[str, Any] | None = None) -> None:
    response = client.post(f"{url}/graphql", json={"query": query, "variables": variables or {}})
    response.raise_for_status()
    if "errors" in response.json():
        raise RuntimeError(response.text[:500])


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the webserver's group), in MB."""
    total = 0
    for proc in Path("/proc").iterdir():
        try:
            status = (proc / "status").read_text()
            pgid = int((proc / "stat").read_text().split(") ", 1)[1].split()[2])
        except (OSError, ValueError, IndexError):
            continue
        if pgid == pid:
            total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024


def measure(
    stack: Stack,
    instance: dg.DagsterInstance,
    keys: Sequence[str],
    template: list[dg.EventLogEntry],
    expire: int,
    store: LocalBlobStore,
) -> dict[str, float]:
    figures: dict[str, float] = {}
    with httpx.Client(base_url=stack.gateway_url, timeout=120) as gateway, httpx.Client(timeout=300) as dagster:
        starts = []
        for _ in range(20):
            start = time.perf_counter()
            response = gateway.post("/workflow/start", json=BODY)
            starts.append(time.perf_counter() - start)
            response.raise_for_status()
        figures["start p50 ms"] = statistics.median(starts) * 1000
        figures["start p99 ms"] = percentile(starts, 99) * 1000
        gets = []
        for key in keys[-200:]:
            start = time.perf_counter()
            response = gateway.get(f"/workflow/{key}")
            gets.append(time.perf_counter() - start)
            assert response.status_code == 200, response.text
        figures["GET p50 ms"] = statistics.median(gets) * 1000
        figures["GET p99 ms"] = percentile(gets, 99) * 1000
        for label, query, variables in (
            ("UI asset graph s", ASSET_GRAPH, None),
            ("UI asset page s", ASSET_PAGE, {"key": FLUX_KEY}),
            ("UI partitions view s", PARTITIONS_VIEW, {"key": FLUX_KEY}),
        ):
            figures[label] = statistics.median(
                timed(lambda q=query, v=variables: graphql(dagster, stack.dagster_url, q, v), 3)
            )
        figures["webserver RSS MB"] = rss_mb(stack.processes["webserver"].pid)
    sensor, _ = build_regeneration_automation(PipelineSettings())
    cursor: list[str | None] = [None]

    def tick() -> None:
        context = dg.build_sensor_context(instance=instance, cursor=cursor[0])
        list(sensor(context))
        cursor[0] = context.cursor

    figures["sensor tick s"] = statistics.median(timed(tick, 3))
    removing = min(expire, len(keys) // 10)
    start = time.perf_counter()
    report = run_retention(instance, store, 1, removing, 365, now=datetime.now(UTC) + timedelta(days=1))
    figures["retention s"] = time.perf_counter() - start
    figures["retention removed"] = report.requests_removed
    figures["retention s per 10,000"] = figures["retention s"] / max(1, report.requests_removed) * 10_000
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description="Dagster and the gateway at 100,000s of request partitions.")
    parser.add_argument("--sizes", default="1000,100000,200000", help="partition counts, ascending")
    parser.add_argument("--expire", type=int, default=10_000, help="expired requests one retention run removes")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="scale-"))
    results: list[tuple[int, dict[str, float]]] = []
    with postgres_database("jewel_scale") as url:
        env = {
            **os.environ, **BENCH_ENV,
            "DAGSTER_HOME": str(root / "dagster_home"), "LOCAL_BLOB_ROOT": str(root / "blobs"),
            "DAGSTER_PG_URL": url, "LOCAL_BACKENDS": "instant", "ALLOW_ANONYMOUS": "true", "RETENTION_DAYS": "0",
            "STATUS_SOURCE": "storage",  # as docker-compose and make run set it
        }  # fmt: skip
        prepare_dagster_home(env)
        os.environ["DAGSTER_PG_URL"] = env["DAGSTER_PG_URL"]  # the instance here reads the same dagster.yaml
        stack = Stack(env, dagster_port=free_port(), gateway_port=free_port(), log_dir=root)
        instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
        store = LocalBlobStore(root=str(root / "blobs"))
        try:
            template = template_events(instance, root / "blobs")
            keys: list[str] = []
            for size in sizes:
                start, adding = time.perf_counter(), size - len(keys)
                keys += seed(instance, template, adding)
                took = time.perf_counter() - start
                analyze(url)
                print(
                    f"seeded {adding:,} requests to reach {size:,} in {took:.0f} s ({adding / took:.1f}/s)", flush=True
                )
                stack.start()  # only while measuring: its daemon and sensors would slow seeding down
                try:
                    figures = measure(stack, instance, keys, template, args.expire, store)
                finally:
                    stack.stop()
                removed = int(figures["retention removed"])
                keys = keys[removed:] + seed(instance, template, removed)  # the size holds
                analyze(url)
                figures["seed s"] = took
                results.append((size, figures))
                print(f"{size:,}:", {k: round(v, 3) for k, v in figures.items()}, flush=True)
        finally:
            stack.stop()
            instance.dispose()
    base = results[0][1]
    print(f"{'figure':<26}" + "".join(f"{size:>12,}" for size, _ in results) + "   ratio to first")
    for label in base:
        row = "".join(f"{figures[label]:>12.3f}" for _, figures in results)
        ratios = " ".join(f"{figures[label] / base[label]:.2f}x" if base[label] else "-" for _, figures in results[1:])
        print(f"{label:<26}{row}   {ratios}")


if __name__ == "__main__":
    main()
