"""What a model-service call costs on the wire: base64 JSON against binary (PNG and BMP images).

    .venv/bin/python -m benchmarks.wire [--calls 15] [--requests 0]

One reference model server (`--instant`: the models cost next to nothing, so what is left is the
wire) in a subprocess on loopback, and the project's HTTP clients in this process. Each round
makes one call of each endpoint below in every mode, modes alternating call by call so machine
load hits them alike:
- `a100/generate`: canvas + mask in, canvas out (the heaviest call);
- `sam3/segment`: canvas + points in, mask out;
- `birefnet/remove-background`: canvas in, canvas out.
Modes: `json` (base64 PNG in JSON: the baseline), `binary-png`, `binary-bmp` (the default).
Two canvases (2000x2667, 5.3 MP): the studio sample (samples/ring.jpg on the canvas: flat
backdrop, PNG makes it ~0.6 MB) and the same with +-3 grey-level noise, as a camera photo's
sensor noise (PNG ~8.6 MB: lossless compression barely helps).

Prints, per endpoint, canvas and mode: median and p95 of a call's wall time, the client's CPU
and the server's CPU per call (/proc), the bytes sent + received, and the ratio of each median
to the JSON baseline's (baseline / mode: above 1 is faster).

`--requests N` also materializes every asset of a request N times per mode in this process
(`dg.materialize`, the sample photo, every model service on the reference server): a request's
wall and CPU time with the wire as its only difference. `--noisy-photo` sends a 12 MP JPEG of the
sample with sensor-like noise instead (as a phone photo: its canvas keeps the noise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import dagster as dg
import httpx
import numpy as np

from benchmarks.common import REPO_ROOT, percentile
from devtools.reference_server import service_env
from jewel_dagster.defs.assets import ALL_ASSETS
from jewel_dagster.resources.http_services import HttpBackend, HttpBackgroundRemover, HttpFluxGenerator, HttpSegmenter
from jewel_dagster.resources.selection import build_resources
from jewel_dagster.settings import PipelineSettings
from jewel_dagster.storage_layout import strokes_path, upload_path
from jewel_dagster.vision import imaging
from jewel_dagster.vision.classical import PixelPoint

STROKE = {"points": [{"x": 0.2, "y": 0.45}, {"x": 0.3, "y": 0.45}], "mode": "add", "size": 40}
MODES = {"json": ("json", "png"), "binary-png": ("binary", "png"), "binary-bmp": ("binary", "bmp")}


def canvases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    photo = imaging.decode_image((REPO_ROOT / "samples" / "ring.jpg").read_bytes())
    studio, _ = imaging.fit_to_canvas(photo)
    noise = np.random.default_rng(0).integers(-3, 4, studio.shape)
    noisy = np.clip(studio.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    mask = np.zeros(studio.shape[:2], dtype=bool)
    mask[900:1700, 600:1400] = True
    return {"studio": (studio, mask), "noisy": (noisy, mask)}


def server_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # clock ticks, USER_HZ = 100 on Linux


def calls(url: str, mode: str, canvas: np.ndarray, mask: np.ndarray) -> dict[str, tuple[Callable[[], int], Callable]]:
    """Endpoint -> (bytes on the wire so far, one call) in `mode`."""
    wire_mode, encoding = MODES[mode]
    config: dict[str, Any] = {"wire_mode": wire_mode, "image_encoding": encoding, "timeout_seconds": 120.0}
    flux = HttpFluxGenerator(base_url=f"{url}/a100", **config)
    sam3 = HttpSegmenter(base_url=f"{url}/sam3", **config)
    birefnet = HttpBackgroundRemover(base_url=f"{url}/birefnet", **config)
    point = [PixelPoint(1000.0, 1300.0, 1)]
    return {
        "a100/generate": (traffic(flux), lambda: flux.generate(canvas, mask, 0, "studio")),
        "sam3/segment": (traffic(sam3), lambda: sam3.segment(canvas, point)),
        "birefnet/remove-background": (traffic(birefnet), lambda: birefnet.remove_background(canvas)),
    }


def traffic(client: HttpBackend) -> Callable[[], int]:
    """Count the bytes a client sends and receives (httpx event hooks on its pooled client)."""
    total = [0]

    def request(req: httpx.Request) -> None:
        total[0] += len(req.read())

    def response(resp: httpx.Response) -> None:
        total[0] += len(resp.read())

    http = client._client()  # benchmarks only: the pooled client the resource made
    http.event_hooks = {"request": [request], "response": [response]}
    return lambda: total[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--port", type=int, default=9377)
    parser.add_argument("--requests", type=int, default=0, help="whole requests per mode (dg.materialize)")
    parser.add_argument("--noisy-photo", action="store_true", help="a noisy 12 MP photo for --requests")
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.reference_server", "--port", str(args.port), "--instant"], cwd=REPO_ROOT
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/sam3/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
        if args.calls:
            run(url, process.pid, args.calls)
        if args.requests:
            requests(url, process.pid, args.requests, noisy_photo() if args.noisy_photo else SAMPLE.read_bytes())
    finally:
        process.terminate()
        process.wait(timeout=10)


def run(url: str, pid: int, rounds: int) -> None:
    samples: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for canvas_name, (canvas, mask) in canvases().items():
        per_mode = {mode: calls(url, mode, canvas, mask) for mode in MODES}
        for _, fn in (c for mode in per_mode.values() for c in mode.values()):
            fn()  # warm: connection, first allocation
        for _ in range(rounds):
            for endpoint in per_mode["json"]:
                for mode in MODES:
                    sent, fn = per_mode[mode][endpoint]
                    wall, cpu, server, before = time.perf_counter(), time.process_time(), server_cpu(pid), sent()
                    fn()
                    key = (canvas_name, endpoint, mode)
                    s = samples.setdefault(key, {"wall": [], "cpu": [], "server": [], "bytes": []})
                    s["wall"].append(time.perf_counter() - wall)
                    s["cpu"].append(time.process_time() - cpu)
                    s["server"].append(server_cpu(pid) - server)
                    s["bytes"].append(sent() - before)
        print(f"\n{canvas_name} canvas, {rounds} calls per endpoint and mode")
        print(f"{'endpoint':28s} {'mode':11s} {'median':>8s} {'p95':>8s} {'client CPU':>10s} "
              f"{'server CPU':>10s} {'MB':>6s} {'x JSON':>7s}")  # fmt: skip
        for endpoint in per_mode["json"]:
            base = statistics.median(samples[(canvas_name, endpoint, "json")]["wall"])
            for mode in MODES:
                s = samples[(canvas_name, endpoint, mode)]
                median = statistics.median(s["wall"])
                print(
                    f"{endpoint:28s} {mode:11s} {median * 1000:6.0f}ms {percentile(s['wall'], 95) * 1000:6.0f}ms "
                    f"{statistics.median(s['cpu']) * 1000:8.0f}ms {statistics.median(s['server']) * 1000:8.0f}ms "
                    f"{statistics.median(s['bytes']) / 1e6:6.1f} {base / median:6.2f}x"
                )


SAMPLE = REPO_ROOT / "samples" / "ring.jpg"


def noisy_photo() -> bytes:
    """The sample at 3000x4000 with +-4 grey levels of noise, as a JPEG (quality 92)."""
    photo = cv2.resize(imaging.decode_image(SAMPLE.read_bytes()), (3000, 4000), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(1).integers(-4, 5, photo.shape)
    return imaging.encode_jpeg(np.clip(photo.astype(np.int16) + noise, 0, 255).astype(np.uint8))


def requests(url: str, pid: int, rounds: int, photo: bytes) -> None:
    """Whole requests, every asset materialized in this process, modes alternating request by request."""
    times: dict[str, dict[str, list[float]]] = {mode: {"wall": [], "cpu": [], "server": []} for mode in MODES}
    with tempfile.TemporaryDirectory() as root, dg.instance_for_test() as instance:
        for i in range(rounds + 1):  # the first round warms up and is not counted
            for mode, (wire_mode, encoding) in MODES.items():
                settings = PipelineSettings(
                    local_blob_root=root, service_wire=wire_mode, service_image_encoding=encoding,
                    local_backends="instant", **{k.lower(): v for k, v in service_env(url).items()},
                )  # fmt: skip
                resources = build_resources(settings)
                rid = f"{mode}-{i}"
                store = resources["blob_store"]
                upload = store.put(upload_path(rid), photo)
                strokes = store.put(strokes_path(rid, "bench"), json.dumps([STROKE]).encode())
                instance.add_dynamic_partitions("requests", [rid])
                wall, cpu, server = time.perf_counter(), time.process_time(), server_cpu(pid)
                result = dg.materialize(
                    ALL_ASSETS, partition_key=rid, instance=instance, resources=resources,
                    run_config={"ops": {
                        "original_image": {"config": {"image_uri": upload}},
                        "jewelry_mask": {"config": {"points": [{"x": 0.245, "y": 0.467, "label": 1}]}},
                        "refined_mask": {"config": {"strokes_uri": strokes}},
                    }},
                )  # fmt: skip
                if not result.success:
                    raise RuntimeError(f"the {mode} request failed")
                if i:
                    times[mode]["wall"].append(time.perf_counter() - wall)
                    times[mode]["cpu"].append(time.process_time() - cpu)
                    times[mode]["server"].append(server_cpu(pid) - server)
    print(f"\nwhole requests ({len(photo)} B photo, every service on the reference server), {rounds} per mode")
    base = statistics.median(times["json"]["wall"])
    for mode, t in times.items():
        median = statistics.median(t["wall"])
        print(
            f"{mode:11s} median {median:6.2f} s  p95 {percentile(t['wall'], 95):6.2f} s  "
            f"pipeline CPU {statistics.median(t['cpu']):5.2f} s  server CPU {statistics.median(t['server']):5.2f} s  "
            f"{base / median:5.2f}x JSON"
        )


if __name__ == "__main__":
    main()
