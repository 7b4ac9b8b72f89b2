"""AWS calls per import on the hot path, counted at botocore (every client, every service).

(a) a first-time successful import in a warm container (token in memory, limiter item seen),
(b) an already-imported record. Also what the cost model needs: item sizes, log bytes, time.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict
from itertools import cycle

from bench.core import Options, Report, percentile
from bench.handlers import measure
from bench.world import NAMES, world
from crm_to_books.entities import KINDS
from crm_to_books.limiter import RateLimiter
from crm_to_books.observability import metrics

TARGET_FIRST, TARGET_AGAIN = 4, 1
PATHS = {"sqs": "SQS batch of 10, per import", "http": "sync HTTP, per import"}


def _per_import(counters: list[Counter[str]]) -> dict[str, float]:
    total: Counter[str] = Counter()
    for c in counters:
        total.update(c)
    return {op: round(n / len(counters), 3) for op, n in sorted(total.items())}


def _describe(calls: dict[str, float], failed: dict[str, float]) -> str:
    return ", ".join(
        f"{op} {n:g}" + (f" ({failed[op]:g} failed condition)" if failed.get(op) else "")
        for op, n in calls.items()
    )


def run(options: Options) -> Report:
    n = 10 if options.quick else 40
    report = Report("aws_calls", "AWS calls per import on the hot path")
    with world() as w:
        importer = w.importer()
        w.calls.take()
        importer.run(w.request("item", 1))  # cold container: token, secret, limiter read
        cold, cold_failed, _ = w.calls.take()

        first: list[Counter[str]] = []
        first_failed: list[Counter[str]] = []
        walls: list[float] = []
        log_before = w.sink.bytes
        ids = list(zip(cycle(KINDS), range(1000, 1000 + n), strict=False))
        for kind, crm_id in ids:
            started = time.perf_counter()
            outcome = importer.run(w.request(kind, crm_id))
            walls.append(time.perf_counter() - started)
            assert outcome.result == "imported", outcome
            calls, failed, _ = w.calls.take()
            first.append(calls)
            first_failed.append(failed)
        log_bytes = (w.sink.bytes - log_before) / n

        again: list[Counter[str]] = []
        for kind, crm_id in ids:
            assert importer.run(w.request(kind, crm_id)).result == "already_imported"
            again.append(w.calls.take()[0])

        # One invocation's EMF blob (Powertools flushes one per invocation).
        metrics.clear_metrics()
        importer.run(w.request("contact", 999_999))
        emf_bytes = len(json.dumps(metrics.serialize_metric_set())) + 1
        metrics.clear_metrics()
        ledger_item = w.item(
            NAMES.ledger_table, {"pk": {"S": f"ORG#{w.org}"}, "sk": {"S": "contact#999999"}}
        )
        limiter_item = w.item(NAMES.state_table, RateLimiter.key(w.org))
        # The same, through the function's handler on each path (logs, metrics, batches).
        per_path = n - n % 10 or 10
        paths = {p: measure(w, p, per_path, 100_000 * (k + 2)) for k, p in enumerate(PATHS)}

    first_calls, first_fail = _per_import(first), _per_import(first_failed)
    again_calls = _per_import(again)
    worst_first = max(sum(c.values()) for c in first)
    worst_again = max(sum(c.values()) for c in again)
    report.add(
        "first-time success, warm container",
        sum(first_calls.values()),
        "calls",
        f"<= {TARGET_FIRST}",
        worst_first <= TARGET_FIRST,
    )
    report.add(
        "already imported",
        sum(again_calls.values()),
        "calls",
        f"<= {TARGET_AGAIN}",
        worst_again <= TARGET_AGAIN,
    )
    report.add("first import in a cold container", sum(cold.values()), "calls")
    report.add(
        "warm import wall time p50 (moto, zero-latency Zoho)", percentile(walls, 50) * 1e3, "ms"
    )
    for path, cost in paths.items():
        report.add(f"through the handler, {PATHS[path]}", sum(cost.calls.values()), "calls")
    report.notes.append(f"first-time: {_describe(first_calls, first_fail)}")
    report.notes.append(f"already imported: {_describe(again_calls, {})}")
    report.notes.append(f"cold container: {_describe(dict(cold), dict(cold_failed))}")
    if first_fail.get("dynamodb:UpdateItem"):
        report.notes.append(
            "a failed UpdateItem is the limiter's acquire losing its slot or seat: alone in one "
            "container, its view of the limiter item (RateLimiter._known) is out of step"
        )
    report.details = {
        "imports": n,
        "first_time": first_calls,
        "first_time_failed": first_fail,
        "already_imported": again_calls,
        "cold_container": dict(cold),
        "wall_ms_p50": round(percentile(walls, 50) * 1000, 2),
        "log_bytes_per_import": round(log_bytes, 1),
        "emf_bytes_per_invocation": emf_bytes,
        "ledger_item": ledger_item,
        "limiter_item": limiter_item,
        "paths": {p: asdict(cost) for p, cost in paths.items()},
    }
    return report
