"""The soak's table and JSON: requests by final state, faults by kind, the worst recovery per fault
kind, GET latency, and every invariant violation with the ids it names.

A fault's recovery: from the fault until every request in flight at that moment, and the first
one accepted after it, ended (as the clients or the final settle saw it; 2 s polls).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from benchmarks.soak.chaos import Fault
from benchmarks.soak.traffic import Record


def recoveries(faults: list[Fault], record: Record) -> dict[str, float | None]:
    """Worst recovery per fault kind (seconds; None when a request it waited on never ended)."""
    worst: dict[str, float | None] = {}
    requests = sorted(record.requests, key=lambda r: r.accepted_at)
    for fault in faults:
        waited = [r for r in requests if r.accepted_at <= fault.at and (r.ended_at is None or r.ended_at > fault.at)]
        following = next((r for r in requests if r.accepted_at > fault.at), None)
        if following is not None:
            waited.append(following)
        ends = [r.ended_at for r in waited]
        took = None if any(e is None for e in ends) else max([e - fault.at for e in ends if e is not None], default=0.0)
        previous = worst.get(fault.kind, 0.0)
        worst[fault.kind] = (
            None if took is None or (fault.kind in worst and previous is None) else max(previous or 0.0, took)
        )
    return worst


def build(
    config: dict[str, Any],
    last: dict[str, dict[str, Any] | None],
    record: Record,
    faults: list[Fault],
    extra: dict[str, Any],
) -> dict[str, Any]:
    violations: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for violation in record.violations:
        violations[violation["rule"]].append(violation)
    return {
        "config": config,
        "requests": {
            "accepted": len(record.requests),
            "workflows": len(last),
            "by job": dict(Counter(r.job for r in record.requests)),
            "by final state": dict(Counter((s or {}).get("status", "no answer") for s in last.values())),
            "cancels answered": dict(Counter(r.cancel_answer for r in record.requests if r.cancel_answer)),
            "webhooks asked": sum(r.webhook for r in record.requests),
            "POST answers": dict(Counter(f"{path.split('/')[-1]} {code}" for _, path, code in record.posts)),
        },
        "faults": {
            "by kind": dict(Counter(f.kind for f in faults)),
            "worst recovery seconds": recoveries(faults, record),
            "list": [f.as_dict() for f in faults],
        },
        "event streams": dict(record.streams),
        **extra,
        "violations": {rule: {"count": len(items), "items": items[:20]} for rule, items in violations.items()},
        "violation count": len(record.violations),
        "requests list": [r.as_dict() for r in record.requests],
    }


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def table(report: dict[str, Any]) -> str:
    lines = ["", "== soak: requests by final state =="]
    requests = report["requests"]
    lines.append(f"accepted {requests['accepted']} ({requests['by job']}), workflows {requests['workflows']}")
    lines += [f"  {state:<10} {n}" for state, n in sorted(requests["by final state"].items())]
    lines.append(f"  cancels answered: {requests['cancels answered']}")
    lines.append(f"  POST answers: {requests['POST answers']}")
    lines.append("== faults by kind (worst recovery) ==")
    worst = report["faults"]["worst recovery seconds"]
    for kind, n in sorted(report["faults"]["by kind"].items()):
        backs = [f["back"] - f["at"] if f["back"] else None for f in report["faults"]["list"] if f["kind"] == kind]
        down = None if None in backs else max(b for b in backs if b is not None)
        lines.append(
            f"  {kind:<15} {n:>3}   back after <= {_seconds(down)}   worst recovery {_seconds(worst.get(kind))}"
        )
    errors = [f for f in report["faults"]["list"] if f["error"]]
    lines += [f"  restart error: {f['kind']} {f['target']}: {f['error']}" for f in errors]
    get = report["get latency"]
    if get["n"] and not math.isnan(get["p99"]):
        lines.append(
            f"== GET latency outside gateway downtime: n={get['n']:.0f} median={get['median'] * 1000:.0f} ms "
            f"p95={get['p95'] * 1000:.0f} ms p99={get['p99'] * 1000:.0f} ms (bound {get['bound']:.1f} s; "
            f"p99 {get['p99 outside PostgreSQL pauses too'] * 1000:.0f} ms outside PostgreSQL pauses too) =="
        )
    gpu = report["gpu pool"]
    lines.append(
        f"== gpu pool: {gpu['samples']} samples ({gpu['failed']} unanswered), most claimed {gpu['most']} "
        f"of {gpu['limit']} =="
    )
    lines.append(f"== event streams: {report['event streams']} ==")
    lines.append(f"== machine: load average {report['load']} (soak process CPU {report['soak cpu seconds']:.0f} s) ==")
    lines.append(f"== invariant violations: {report['violation count']} ==")
    for rule, group in sorted(report["violations"].items()):
        lines.append(f"  {rule}: {group['count']}")
        for item in group["items"][:5]:
            lines.append(f"    {item['detail'][:160]} {' '.join(item['ids'][:3])}")
    return "\n".join(lines)


def write(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
