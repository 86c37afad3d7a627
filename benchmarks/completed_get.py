"""Issue 28: GET /workflow/{id} of COMPLETED requests (~650 KB bodies), one gateway process.

    .venv/bin/python -m benchmarks.completed_get [--connections 50] [--seconds 15] [--runs 5]

Starts the embedded default (`make run`'s stack: SQLite storage, the instant local backends,
status read from the run storage), runs `--runs` requests to COMPLETED, then has wrk (Debian's
`wrk`) GET them back to back with `--connections` connections for `--seconds`. A finished run's
result cannot change, so the gateway should read it once per run id; the figure is bounded by
moving the body (JSON encoding and the socket), not by Dagster's storage.

The baseline, in the same run and the same wrk: Dagster's GraphQL asked for the same runs' status
(the stock way to read a run; a far smaller answer). The ratio printed is gateway/baseline in
answers a second. Target: >= 200 GETs a second.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import httpx

from benchmarks.common import BENCH_ENV, BODY, final_state, run_wrk
from benchmarks.status import _QUERY
from devtools.stack import temporary_stack

_GET_SCRIPT = """
ids = {%s}
n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/workflow/" .. ids[n %% #ids + 1])
end
"""

_POST_SCRIPT = """
bodies = {%s}
n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/graphql", {["Content-Type"] = "application/json"}, bodies[n %% #bodies + 1])
end
"""


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    with tempfile.TemporaryDirectory() as root, temporary_stack(Path(root), dict(BENCH_ENV)) as stack:
        with httpx.Client(base_url=stack.gateway_url, timeout=60) as client:
            ids = [client.post("/workflow/start", json=BODY).json()["workflowId"] for _ in range(args.runs)]
            states = [final_state(client, w, interval=0.2) for w in ids]
            if any(s["status"] != "COMPLETED" for s in states):
                raise SystemExit(f"not every request completed: {[s['status'] for s in states]}")
            size = len(client.get(f"/workflow/{ids[0]}").content)
        webserver_pid = stack.processes["webserver"].pid
        gateway_script = _GET_SCRIPT % ", ".join(f'"{w}"' for w in ids)
        gateway_pid = stack.processes["gateway"].pid
        ours = run_wrk(stack.gateway_url, gateway_script, args.connections, args.seconds, gateway_pid)
        bodies = [
            httpx.Request("POST", "/", json={"query": _QUERY, "variables": {"tag": w}}).content.decode() for w in ids
        ]
        baseline_script = _POST_SCRIPT % ", ".join(_lua_string(b) for b in bodies)
        stock = run_wrk(stack.dagster_url, baseline_script, args.connections, args.seconds, webserver_pid)
    what = f"{args.runs} COMPLETED requests, body {size / 1000:.0f} KB"
    print(f"{what}, wrk {args.connections} connections back to back:")
    print(f"  gateway GET: {ours.line()}")
    print(f"  baseline: GraphQL run query (webserver CPU): {stock.line()}")
    ratio = ours.rate / stock.rate if stock.rate else float("inf")
    verdict = "meets" if ours.rate >= 200 else "MISSES"
    print(f"  ratio gateway/baseline (answers a second): {ratio:.2f}x; target >= 200/s: {verdict}")


if __name__ == "__main__":
    main()
