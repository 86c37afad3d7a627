"""`jewel`: the gateway from a terminal, with a progress bar.

    jewel run photo.jpg --point 0.52,0.31 [--negative 0.1,0.8] [--stroke add:40:0.5,0.5:0.52,0.51] --out results/
    jewel status jewelry-gen-...
    jewel cancel jewelry-gen-...
    jewel verify flux.png

`verify` reads a file's C2PA manifest (the provenance every generated image carries) on this
machine, without the gateway: the summary first ("Made with AI", generator, workflow, signer),
then the manifest; exit 0 when it holds, 1 when the file was changed after signing, 2 when the
file has no manifest or is not an image.

`run` prints the files it wrote on stdout, and on stderr which backend made each part (a model
service, or a local stand-in: `result.backends`). Talks HTTP only (httpx), so it runs anywhere
the gateway is reachable. Exit codes: 0 done, 1 the workflow failed or was cancelled, 2 the
gateway refused the request (the message says why), 3 the gateway could not be reached or did
not finish in time.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 2, 3
FINAL = ("COMPLETED", "FAILED", "CANCELLED")


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ arguments


def _pair(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected X,Y such as 0.52,0.31") from None
    if not (0 <= x <= 1 and 0 <= y <= 1):
        raise argparse.ArgumentTypeError(f"{text!r}: X and Y are fractions of the photo, 0 to 1")
    return x, y


def _stroke(text: str) -> dict[str, Any]:
    """MODE:SIZE:X,Y[:X,Y...], e.g. add:40:0.50,0.50:0.52,0.51 (size in canvas pixels)."""
    parts = text.split(":")
    if len(parts) < 3 or parts[0] not in ("add", "remove"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected add|remove:SIZE:X,Y[:X,Y...]")
    try:
        size = float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: SIZE must be a number of pixels") from None
    points = [dict(zip(("x", "y"), _pair(p), strict=True)) for p in parts[2:]]
    return {"mode": parts[0], "size": size, "points": points}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jewel", description="Jewelry try-on images from the command line.")
    p.add_argument("--gateway", default=os.environ.get("JEWEL_GATEWAY", "http://127.0.0.1:8001"))
    p.add_argument("--api-key", default=os.environ.get("JEWEL_API_KEY"), help="or JEWEL_API_KEY")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the workflow")
    commands = p.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="photo and clicks to generated images")
    run.add_argument("photo", type=Path)
    run.add_argument("--point", type=_pair, action="append", required=True, help="X,Y on the jewelry (repeatable)")
    run.add_argument("--negative", type=_pair, action="append", default=[], help="X,Y not on the jewelry")
    run.add_argument("--stroke", type=_stroke, action="append", default=[], help="add|remove:SIZE:X,Y[:X,Y...]")
    run.add_argument("--out", type=Path, default=Path("results"), help="folder for the images and metrics.json")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
    status = commands.add_parser("status", help="a workflow's state, as JSON without the images")
    status.add_argument("workflow_id")
    cancel = commands.add_parser("cancel", help="stop a running workflow")
    cancel.add_argument("workflow_id")
    verify = commands.add_parser("verify", help="print an image's C2PA manifest and whether it holds")
    verify.add_argument("file", type=Path)
    return p


# ------------------------------------------------------------------ talking to the gateway


class Gateway:
    def __init__(self, url: str, api_key: str | None) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=httpx.Timeout(60.0, connect=5.0))
        self._url = url

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(3):  # connection hiccups only; the server's answers are final
            try:
                response = self._http.request(method, path, **kwargs)
                break
            except httpx.TransportError as exc:
                if attempt == 2:
                    raise CliError(f"cannot reach the gateway at {self._url}: {exc}", EXIT_UNREACHABLE) from None
                time.sleep(0.5 * 2**attempt)
        if response.status_code >= 500:
            raise CliError(f"the gateway answered {response.status_code}: {_detail(response)}", EXIT_UNREACHABLE)
        if response.status_code >= 400:
            raise CliError(_detail(response), EXIT_REFUSED)
        return response

    def events(self, workflow_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, data) pairs from /workflow/{id}/events until the stream ends."""
        with self._http.stream("GET", f"/workflow/{workflow_id}/events", timeout=httpx.Timeout(60.0)) as response:
            if response.status_code != 200:
                response.read()
                raise CliError(_detail(response), EXIT_REFUSED if response.status_code < 500 else EXIT_UNREACHABLE)
            event, data = "message", ""
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif not line and data:
                    yield event, json.loads(data)
                    event, data = "message", ""

    def close(self) -> None:
        self._http.close()


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return detail if isinstance(detail, str) else (json.dumps(detail) if detail else response.text[:300])


def wait_for_end(gateway: Gateway, workflow_id: str, timeout: float, show: bool) -> dict[str, Any]:
    """Follows the event stream (polling when the stream breaks) until the final state."""
    bar = tqdm(total=100, unit="%", desc="Starting", disable=not show, file=sys.stderr, leave=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                for event, data in gateway.events(workflow_id):
                    if event == "progress":
                        _advance(bar, data)
                    elif event == "final":
                        _advance(bar, data)
                        return data
            except (httpx.TransportError, json.JSONDecodeError):
                pass  # stream broke: fall back to one poll, then listen again
            state = gateway.call("GET", f"/workflow/{workflow_id}").json()
            _advance(bar, state)
            if state["status"] in FINAL:
                return state
            time.sleep(1.0)
    finally:
        bar.close()
    raise CliError(f"{workflow_id} did not finish within {timeout:.0f} s (still running)", EXIT_UNREACHABLE)


def _advance(bar: tqdm, state: dict[str, Any]) -> None:
    bar.set_description_str(state.get("currentStep", ""))
    bar.n = int(state.get("progress", bar.n))
    bar.refresh()


# ------------------------------------------------------------------ commands


def run(gateway: Gateway, args: argparse.Namespace) -> int:
    try:
        photo = args.photo.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.photo}: {exc.strerror}", EXIT_REFUSED) from None
    points = [{"x": x, "y": y, "label": 1} for x, y in args.point] + [
        {"x": x, "y": y, "label": 0} for x, y in args.negative
    ]
    body = {
        "originalImageBase64": base64.b64encode(photo).decode("ascii"),
        "maskPoints": points,
        "brushStrokes": args.stroke,
    }
    workflow_id = gateway.call("POST", "/workflow/start", json=body).json()["workflowId"]
    print(f"workflow {workflow_id}", file=sys.stderr)
    final = wait_for_end(gateway, workflow_id, args.timeout, show=not args.no_progress)
    if final["status"] != "COMPLETED":
        step = f" at {final['failedStep']}" if final.get("failedStep") else ""
        cancelled = "the workflow was cancelled" if final["status"] == "CANCELLED" else "no reason given"
        print(f"{final['status']}{step}: {final.get('error') or cancelled}", file=sys.stderr)
        return EXIT_FAILED
    for path in save_results(gateway, workflow_id, final["result"], args.out):
        print(path)
    print(describe_backends(final["result"]), file=sys.stderr)
    return EXIT_OK


def describe_backends(result: dict[str, Any]) -> str:
    """One line naming what made each part, so a local stand-in is never taken for the service."""
    backends = result.get("backends") or {}
    named = ", ".join(f"{service}={backend}" for service, backend in backends.items())
    return f"backends: {named or 'not recorded'}"


def save_results(gateway: Gateway, workflow_id: str, result: dict[str, Any], out: Path) -> list[Path]:
    """The generations as lossless PNGs (JPEG from the state if the PNG cannot be had) and metrics."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, artifact in (("flux", "flux_generation"), ("gemini", "gemini_generation")):
        if result.get(f"{name}_result_base64") is None:
            continue  # e.g. Gemini declined: the metrics say so
        try:
            data, suffix = gateway.call("GET", f"/workflow/{workflow_id}/artifacts/{artifact}.png").content, "png"
        except CliError:
            data, suffix = base64.b64decode(result[f"{name}_result_base64"]), "jpg"
        path = out / f"{name}.{suffix}"
        path.write_bytes(data)
        written.append(path)
    metrics = {k: v for k, v in result.items() if not k.endswith("_base64")}
    path = out / "metrics.json"
    path.write_text(json.dumps({"workflowId": workflow_id, **metrics}, indent=2))
    written.append(path)
    return written


def status(gateway: Gateway, args: argparse.Namespace) -> int:
    state = gateway.call("GET", f"/workflow/{args.workflow_id}").json()
    result = state.get("result")
    if result:
        state["result"] = {k: ("<omitted>" if k.endswith("_base64") and v else v) for k, v in result.items()}
    print(json.dumps(state, indent=2))
    return EXIT_OK if state["status"] in ("RUNNING", "COMPLETED") else EXIT_FAILED


def cancel(gateway: Gateway, args: argparse.Namespace) -> int:
    answer = gateway.call("POST", f"/workflow/{args.workflow_id}/cancel").json()
    print(json.dumps(answer))
    return EXIT_OK


def verify(gateway: Gateway, args: argparse.Namespace) -> int:
    """The file's manifest, read here with the C2PA library (the gateway is not asked)."""
    import c2pa  # only this command needs the native library: the others start without it

    from jewel_dagster.provenance.reader import read_manifest

    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}", EXIT_REFUSED) from None
    try:
        report = read_manifest(data)
    except c2pa.C2paError as exc:
        raise CliError(f"{args.file} is not an image the C2PA library reads: {exc}", EXIT_REFUSED) from None
    if report is None:
        raise CliError(f"{args.file} carries no C2PA manifest", EXIT_REFUSED)
    print(json.dumps({"file": str(args.file), **report.summary(), "manifest": report.manifest}, indent=2))
    if not report.valid:
        why = ", ".join(report.failures) or report.state
        print(f"jewel: {args.file} does not match its manifest: {why}", file=sys.stderr)
    return EXIT_OK if report.valid else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    gateway = Gateway(args.gateway, args.api_key)
    try:
        commands = {"run": run, "status": status, "cancel": cancel, "verify": verify}
        return commands[args.command](gateway, args)
    except CliError as exc:
        print(f"jewel: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    finally:
        gateway.close()


if __name__ == "__main__":
    sys.exit(main())
