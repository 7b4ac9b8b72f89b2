"""Cost model: AWS cost per million imports, from what the other benchmarks measured.

Inputs measured here or by `aws_calls` (run it again if it did not run in this invocation):
AWS calls per import by operation through the real handler on each path, the DynamoDB items'
sizes, log bytes per import (logs and EMF metrics), the service's own time per import. Assumed,
and named below: Zoho's answer time (Lambda waits for it), batches of 10 on the SQS path, one
trace per invocation (1M imports a month is well under X-Ray's 1 request/s reservoir).

Unit prices: AWS list prices, us-east-1, as published on each service's pricing page (2026),
without free tiers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench import aws_calls
from bench.core import ZOHO_LATENCY_SECONDS, Options, Report
from crm_to_books import topology
from crm_to_books.limiter import rate_slot, seat, stamp

# USD, us-east-1 list prices (aws.amazon.com/<service>/pricing), first pricing tier.
LAMBDA_ARM64_GB_SECOND = 0.0000133334
LAMBDA_REQUEST = 0.20 / 1e6
API_GATEWAY_REST_REQUEST = 3.50 / 1e6  # first 333 million a month
SQS_STANDARD_REQUEST = 0.40 / 1e6  # per 64 KB chunk
EVENTBRIDGE_CUSTOM_EVENT = 1.00 / 1e6  # per 64 KB chunk
DYNAMODB_WRU = 0.625 / 1e6  # on-demand, Standard table class
DYNAMODB_RRU = 0.125 / 1e6
SECRETS_MANAGER_CALL = 0.05 / 10_000
CLOUDWATCH_LOGS_INGESTED_GB = 0.50
XRAY_TRACE_RECORDED = 5.00 / 1e6

MEMORY_GB = topology.FUNCTION_MEMORY_MB / 1024
BATCH = topology.BATCH_SIZE  # best case: full batches, one receive and one delete per batch
IMPORTS_PER_MONTH = 1_000_000
TOKEN_REFRESHES_PER_MONTH = 30 * 24  # one per connection per token lifetime (an hour)
LIMITER_CALLS_AT_LIMIT = 100  # the limiter item holds one timestamp per call in the window


def item_size(item: dict[str, Any]) -> int:
    """DynamoDB's billed size of an item in its wire format (names + values)."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(value: dict[str, Any]) -> int:
    kind, inner = next(iter(value.items()))
    if kind == "S":
        return len(inner.encode())
    if kind == "N":
        digits = inner.lstrip("-").replace(".", "").strip("0") or "0"
        return math.ceil(len(digits) / 2) + 1
    if kind in {"BOOL", "NULL"}:
        return 1
    if kind in {"SS", "NS"}:
        return sum(len(v.encode()) for v in inner)
    if kind == "L":
        return 3 + sum(1 + _value_size(v) for v in inner)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _value_size(v) for k, v in inner.items())
    return len(str(inner))


def limiter_at_limit(item: dict[str, Any], max_concurrency: int = 10) -> dict[str, Any]:
    """The limiter item of an organization at Zoho's 100 calls a minute with `max_concurrency`
    in flight: its heaviest. One stamp per rate slot and seat, as the limiter writes them."""
    now = 1_795_629_841.37
    slots = {
        rate_slot(k): {"N": str(stamp(now + 60 - 0.59 * k))} for k in range(LIMITER_CALLS_AT_LIMIT)
    }
    seats = {seat(j): {"N": str(stamp(now + 40 - 0.37 * j))} for j in range(max_concurrency)}
    return item | slots | seats


@dataclass(frozen=True, slots=True)
class Line:
    what: str
    per_import: dict[str, float]  # path -> units per import
    unit_price: float
    basis: str

    def per_million(self, path: str) -> float:
        return self.per_import.get(path, 0.0) * self.unit_price * 1e6


def _dynamodb(calls: dict[str, float], ledger: int, limiter: int) -> tuple[float, float]:
    """WRUs and RRUs per import. Writes bill the larger of the item before and after, per KB,
    failed conditions included; transactions bill twice."""
    ledger_kb, limiter_kb = math.ceil(ledger / 1024), math.ceil(limiter / 1024)
    wru_of = {
        # ledger begin (or an imported record's failed begin), limiter permit: both under 1 KB
        "dynamodb:UpdateItem": max(ledger_kb, limiter_kb),
        "dynamodb:PutItem": limiter_kb,  # the limiter item written anew (a new organization)
        "dynamodb:TransactWriteItems": 2 * (ledger_kb + limiter_kb),  # record + permit release
    }
    wru = sum(n * wru_of[op] for op, n in calls.items() if op in wru_of)
    rru = sum(n * math.ceil(limiter / 4096) for op, n in calls.items() if op.endswith("GetItem"))
    return wru, rru


def model(measured: dict[str, Any]) -> tuple[list[Line], dict[str, Any]]:
    paths = measured["paths"]
    ledger = item_size(measured["ledger_item"])
    limiter = item_size(limiter_at_limit(measured["limiter_item"]))
    ddb = {p: _dynamodb(paths[p]["calls"], ledger, limiter) for p in paths}
    seconds = {p: paths[p]["service_ms"] / 1000 + ZOHO_LATENCY_SECONDS for p in paths}
    each = dict.fromkeys(paths, 1.0)
    logs = ", ".join(f"{p} {paths[p]['log_bytes']:.0f} B" for p in paths)
    lines = [
        Line("API Gateway REST requests", {"http": 1}, API_GATEWAY_REST_REQUEST, "1 per import"),
        Line(
            "Lambda requests",
            {"http": 1, "sqs": 1 / BATCH},
            LAMBDA_REQUEST,
            f"1 per import (HTTP), 1 per batch of {BATCH} (SQS)",
        ),
        Line(
            "Lambda arm64 GB-seconds",
            {p: s * MEMORY_GB for p, s in seconds.items()},
            LAMBDA_ARM64_GB_SECOND,
            f"{MEMORY_GB * 1024:.0f} MB x (service time + Zoho's {ZOHO_LATENCY_SECONDS:g} s)",
        ),
        Line(
            "SQS requests",
            {"sqs": 1 + 2 / BATCH},
            SQS_STANDARD_REQUEST,
            "send 1, receive and delete 1 per batch",
        ),
        Line(
            "DynamoDB write request units",
            {p: wru for p, (wru, _) in ddb.items()},
            DYNAMODB_WRU,
            f"ledger item {ledger} B, limiter item at the limit {limiter} B",
        ),
        Line(
            "DynamoDB read request units",
            {p: rru for p, (_, rru) in ddb.items()},
            DYNAMODB_RRU,
            "none on the warm path",
        ),
        Line(
            "EventBridge PutEvents",
            {p: paths[p]["calls"].get("events:PutEvents", 0.0) for p in paths},
            EVENTBRIDGE_CUSTOM_EVENT,
            "the outcome event",
        ),
        Line(
            "Secrets Manager calls",
            {p: TOKEN_REFRESHES_PER_MONTH / IMPORTS_PER_MONTH for p in paths},
            SECRETS_MANAGER_CALL,
            "1 per token refresh (hourly), at 1M imports a month",
        ),
        Line(
            "CloudWatch Logs ingestion",
            {p: paths[p]["log_bytes"] / 1e9 for p in paths},
            CLOUDWATCH_LOGS_INGESTED_GB,
            f"measured per import: {logs}",
        ),
        Line(
            "X-Ray traces",
            {p: n / (BATCH if p == "sqs" else 1) for p, n in each.items()},
            XRAY_TRACE_RECORDED,
            "1 per invocation (below the 1 request/s sampling reservoir)",
        ),
    ]
    inputs = {
        "ledger_item_bytes": ledger,
        "limiter_item_bytes_at_limit": limiter,
        "lambda_seconds_per_import": seconds,
        "dynamodb_wru_rru_per_import": ddb,
    }
    return lines, inputs


def run(options: Options) -> Report:
    report = Report("cost", "AWS cost per million imports (us-east-1 list prices)")
    measured = options.earlier.get("aws_calls")
    if measured is None or measured.skipped or "paths" not in measured.details:
        measured = aws_calls.run(options)
    lines, inputs = model(measured.details)
    for line in lines:
        sqs, http = line.per_million("sqs"), line.per_million("http")
        report.add(line.what, f"${sqs:.3f} / ${http:.3f}", "SQS / HTTP")
        report.notes.append(f"{line.what}: {line.basis}")
    totals = {p: sum(line.per_million(p) for line in lines) for p in ("sqs", "http")}
    report.add("total per million imports, SQS path", round(totals["sqs"], 2), "USD")
    report.add("total per million imports, HTTP path", round(totals["http"], 2), "USD")
    report.details = {
        "per_million": {ln.what: {p: ln.per_million(p) for p in ("sqs", "http")} for ln in lines},
        "totals": totals,
        "inputs": inputs,
        "assumptions": {
            "zoho_latency_seconds": ZOHO_LATENCY_SECONDS,
            "batch_size": BATCH,
            "memory_mb": topology.FUNCTION_MEMORY_MB,
        },
    }
    return report
