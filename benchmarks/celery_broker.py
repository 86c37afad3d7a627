"""Which Celery broker for scale-out: Redis or RabbitMQ, measured on what the launcher does.

    .venv/bin/python -m benchmarks.celery_broker [--tasks 200]

For each broker, one worker (concurrency 1) on this machine; then, with Redis as the result
backend in both cases (the daemon's health checks read task states written by another process,
which RabbitMQ's `rpc://` backend cannot serve):

- dispatch: apply_async -> the task starts in the worker (the launch -> RUN_START share);
- a burst: N tasks sent at once, until the last one ran;
- health check: the task-state read and the worker ping `JewelCeleryRunLauncher` makes per run.

Prints medians and p95, and RabbitMQ's ratio to Redis measured in the same process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid

from celery import Celery

from benchmarks.common import percentile

BACKEND = os.environ.get("BENCH_CELERY_BACKEND", "redis://127.0.0.1:6379/4")
BROKERS = {
    "redis": os.environ.get("BENCH_REDIS_BROKER", "redis://127.0.0.1:6379/3"),
    "rabbitmq": os.environ.get("BENCH_RABBITMQ_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
}

app = Celery("bench", broker=os.environ.get("BENCH_BROKER", BROKERS["redis"]), backend=BACKEND)
app.conf.update(task_track_started=True, worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)


@app.task(name="bench.started_at")
def started_at() -> float:
    """When the worker began the task (same machine: one clock)."""
    return time.time()


def _measure(name: str, broker: str, tasks: int, queue: str) -> dict[str, list[float]]:
    env = {**os.environ, "BENCH_BROKER": broker}
    worker_name = f"bench-{uuid.uuid4().hex[:6]}@localhost"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "benchmarks.celery_broker", "worker", "-Q", queue, "-n", worker_name,
         "--concurrency", "1", "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle",
         "--loglevel", "ERROR"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    client = Celery("bench", broker=broker, backend=BACKEND)
    try:
        deadline = time.monotonic() + 60
        while not client.control.ping(destination=[worker_name], timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: the worker did not answer")
        dispatch: list[float] = []
        for _ in range(tasks):
            sent = time.time()
            result = client.send_task("bench.started_at", queue=queue)
            dispatch.append(float(result.get(timeout=30)) - sent)
        began = time.monotonic()
        burst = [client.send_task("bench.started_at", queue=queue) for _ in range(tasks)]
        for result in burst:
            result.get(timeout=120)
        burst_seconds = time.monotonic() - began
        states, pings = [], []
        for result in burst[:50]:
            t0 = time.perf_counter()
            assert client.AsyncResult(result.id).state == "SUCCESS"  # a fresh read, as the daemon's
            states.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert client.control.ping(destination=[worker_name], timeout=1.0)
            pings.append(time.perf_counter() - t0)
        return {"dispatch": dispatch, "burst": [burst_seconds], "state": states, "ping": pings}
    finally:
        client.close()
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    results = {name: _measure(name, url, args.tasks, queue) for name, url in BROKERS.items()}
    for metric in ("dispatch", "burst", "state", "ping"):
        medians = {n: statistics.median(r[metric]) * 1000 for n, r in results.items()}
        line = ", ".join(
            f"{n} median {medians[n]:.1f} ms p95 {percentile(results[n][metric], 95) * 1000:.1f} ms" for n in results
        )
        print(f"{metric}: {line}; rabbitmq/redis {medians['rabbitmq'] / medians['redis']:.2f}x")


if __name__ == "__main__":
    main()
