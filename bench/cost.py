"""Cost model: AWS cost per million imports under load, from what the other benchmarks measured.

Inputs measured here or by other benchmarks (each run again if it did not run in this
invocation, except the three-minute contention run): AWS calls per import by operation through
the real handler on each path (`aws_calls`), and under load (`rate_limit_60s`, 16 containers on
one organization at Zoho's 60 s window: failed conditions and denials included, DynamoDB bills
failed conditional writes too); the DynamoDB items' sizes; log bytes per import; a function
container's peak memory and CPU time per import (`sqs_throughput`, the real handler in the local
stack). Assumed, and named below: Zoho's answer time (Lambda waits for it), one AWS call's round
trip, batches of 10 on the SQS path, Lambda's CPU share in proportion to memory, X-Ray's default
sampling under active tracing.

The functions' memory is chosen here: of 128, 256 and 512 MB, the cheapest whose memory holds
the measured peak with headroom; `topology.FUNCTION_MEMORY_MB` (what the stack deploys) must
say the same.

Unit prices: AWS list prices, us-east-1, as published on each service's pricing page (2026),
without free tiers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench import aws_calls, throughput
from bench.core import AWS_ROUND_TRIP_SECONDS, ZOHO_LATENCY_SECONDS, Options, Report
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

BATCH = topology.BATCH_SIZE  # best case: full batches, one receive and one delete per batch
IMPORTS_PER_MONTH = 1_000_000
TOKEN_REFRESHES_PER_MONTH = 30 * 24  # one per connection per token lifetime (an hour)
LIMITER_CALLS_AT_LIMIT = 100  # the limiter item holds one timestamp per call in the window
# Lambda gives a function CPU in proportion to its memory, one vCPU at 1,769 MB
# (docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html).
FULL_VCPU_MB = 1769
MEMORY_CHOICES = (128, 256, 512)
# The measured peak may fill at most this share of the function's memory: it is an SQS
# container's, measured on x86; a first HTTP request and a sampled trace import more.
MEMORY_HEADROOM = 0.6
# Active tracing samples with X-Ray's default rule: the first request each second, then 5%.
XRAY_RESERVOIR_PER_SECOND = 1.0
XRAY_FIXED_RATE = 0.05
UNDER_LOAD = "16 containers"  # the contention run the model takes its calls from


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
    in flight: its heaviest. One stamp per rate slot and seat, as the limiter writes them, in
    place of those of the measured item (measured without Zoho's limit, so with more slots)."""
    item = {k: v for k, v in item.items() if not (k[:1] in ("r", "c") and k[1:].isdigit())}
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


@dataclass(frozen=True, slots=True)
class Load:
    """What an import costs in calls under contention, and how fast imports come."""

    calls: dict[str, float]  # per import, by operation
    denials: float  # per import: each one a message back in the queue
    imports_per_second: float
    measured: bool  # False: the single-container figures stand in
    # Lambda's seconds per import on the SQS path as the contention run measured them (a
    # batch's invocation lasts until its last record), on this machine's CPU; None: modelled.
    function_seconds: float | None = None
    # The handler's SQS sends of denied messages' copies, per import (a lane's turns go up to
    # 10 a SendMessageBatch); None: one per denial.
    copy_sends: float | None = None


def load_of(earlier: dict[str, Report], single: dict[str, float]) -> Load:
    contention = earlier.get("rate_limit_60s")
    got = contention.details.get(UNDER_LOAD) if contention is not None else None
    if not got or not got.get("imports"):
        return Load(single, 0.0, 100 / 60, measured=False)
    n = got["imports"]
    calls = {op: count / n for op, count in got["aws_calls_by_operation"].items()}
    per_second = got["use"] * 100 / 60 if got.get("use") else 100 / 60
    busy = got.get("function_seconds_per_import_at_aws_round_trips")
    return Load(
        calls,
        got["denials_per_import"],
        per_second,
        measured=True,
        function_seconds=busy,
        copy_sends=got.get("sqs_sends_per_import"),
    )


def memory_options(
    footprint: dict[str, float],
    calls_per_import: float,
    fallback_cpu_ms: float,
    *,
    waits_shared_by: float = 1.0,
    measured_seconds: float | None = None,
) -> dict[int, dict[str, float | bool]]:
    """Per memory size: seconds per import, GB-seconds, and whether the peak fits. Seconds:
    `measured_seconds` (measured on this machine's full CPU) plus the measured CPU time
    stretched by what that memory's smaller CPU share adds; or else modelled, Zoho's wait and
    the AWS round trips, shared by `waits_shared_by` imports that wait at once (a batch's
    records run at once), plus the CPU time stretched by the CPU share that memory buys."""
    cpu = footprint.get("cpu_ms_per_import", fallback_cpu_ms) / 1000
    peak = footprint.get("peak_rss_mb", 0.0)
    options: dict[int, dict[str, float | bool]] = {}
    for mb in MEMORY_CHOICES:
        stretch = max(1.0, FULL_VCPU_MB / mb)
        if measured_seconds is not None:
            seconds = measured_seconds + cpu * (stretch - 1.0)
        else:
            waits = ZOHO_LATENCY_SECONDS + calls_per_import * AWS_ROUND_TRIP_SECONDS
            seconds = waits / max(waits_shared_by, 1.0) + cpu * stretch
        options[mb] = {
            "seconds": seconds,
            "gb_seconds": seconds * mb / 1024,
            "fits": peak <= MEMORY_HEADROOM * mb,
        }
    return options


def choose_memory(options: dict[int, dict[str, float | bool]]) -> int:
    fitting = [mb for mb, o in options.items() if o["fits"]] or [max(options)]
    return min(fitting, key=lambda mb: float(options[mb]["gb_seconds"]))


def traced_share(invocations_per_second: float) -> float:
    """The share of invocations X-Ray's default rule samples at a steady rate."""
    if invocations_per_second <= XRAY_RESERVOIR_PER_SECOND:
        return 1.0
    extra = invocations_per_second - XRAY_RESERVOIR_PER_SECOND
    return (XRAY_RESERVOIR_PER_SECOND + XRAY_FIXED_RATE * extra) / invocations_per_second


def model(
    measured: dict[str, Any], load: Load, footprint: dict[str, float]
) -> tuple[list[Line], dict[str, Any]]:
    paths = measured["paths"]
    ledger = item_size(measured["ledger_item"])
    limiter = item_size(limiter_at_limit(measured["limiter_item"]))
    # Under load every path pays what contention costs; the handlers add no AWS call.
    calls = {p: load.calls if load.measured else paths[p]["calls"] for p in paths}
    ddb = {p: _dynamodb(calls[p], ledger, limiter) for p in paths}
    deliveries = 1 + load.denials  # a denied message comes back through the queue
    copies = load.denials if load.copy_sends is None else load.copy_sends
    invocations = {"http": 1.0, "sqs": deliveries / BATCH}
    total_calls = sum(load.calls.values())
    # SQS: a batch's records run at once, so a batch's deliveries share one import's wait.
    memory = memory_options(
        footprint,
        total_calls,
        paths["sqs"]["service_ms"],
        waits_shared_by=BATCH / deliveries,
        measured_seconds=load.function_seconds,
    )
    http = memory_options(footprint, total_calls, paths["http"]["service_ms"])
    chosen = choose_memory(memory)
    gb_seconds = {
        "sqs": float(memory[chosen]["gb_seconds"]),
        "http": float(http[chosen]["gb_seconds"]),
    }
    how = "measured under load" if load.function_seconds is not None else "modelled"
    traced = {p: traced_share(load.imports_per_second * n) for p, n in invocations.items()}
    logs = ", ".join(f"{p} {paths[p]['log_bytes']:.0f} B" for p in paths)
    lines = [
        Line("API Gateway REST requests", {"http": 1}, API_GATEWAY_REST_REQUEST, "1 per import"),
        Line(
            "Lambda requests",
            invocations,
            LAMBDA_REQUEST,
            f"1 per import (HTTP); SQS: {deliveries:.2f} deliveries per import, {BATCH} a batch",
        ),
        Line(
            "Lambda arm64 GB-seconds",
            gb_seconds,
            LAMBDA_ARM64_GB_SECOND,
            f"{chosen} MB x {memory[chosen]['seconds']:.3f} s via SQS ({how}; a batch's "
            f"records at once), {http[chosen]['seconds']:.3f} s via HTTP (Zoho's "
            f"{ZOHO_LATENCY_SECONDS:g} s, {total_calls:.2f} AWS calls x "
            f"{AWS_ROUND_TRIP_SECONDS * 1000:g} ms, CPU)",
        ),
        Line(
            "SQS requests",
            {"sqs": 1 + copies + 2 / BATCH * deliveries},
            SQS_STANDARD_REQUEST,
            f"the request's send, {copies:.2f} sends of denied messages' copies (a lane's "
            "together), and a receive and a delete per batch of deliveries",
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
            "the limiter's fresh reads under contention",
        ),
        Line(
            "EventBridge PutEvents",
            {p: calls[p].get("events:PutEvents", 0.0) for p in paths},
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
            {p: invocations[p] * traced[p] for p in paths},
            XRAY_TRACE_RECORDED,
            f"sampled: 1 a second then {XRAY_FIXED_RATE:.0%}, at "
            f"{load.imports_per_second:.2f} imports a second (one organization at its limit): "
            + ", ".join(f"{p} {traced[p]:.0%} of invocations" for p in paths),
        ),
    ]
    inputs = {
        "ledger_item_bytes": ledger,
        "limiter_item_bytes_at_limit": limiter,
        "calls_per_import": calls,
        "under_load": load.measured,
        "denials_per_import": load.denials,
        "memory_options": memory,
        "memory_options_http": http,
        "function_seconds_measured": load.function_seconds,
        "memory_chosen_mb": chosen,
        "footprint": footprint,
        "dynamodb_wru_rru_per_import": ddb,
    }
    return lines, inputs


def run(options: Options) -> Report:
    report = Report("cost", "AWS cost per million imports under load (us-east-1 list prices)")
    measured = options.earlier.get("aws_calls")
    if measured is None or measured.skipped or "paths" not in measured.details:
        measured = aws_calls.run(options)
    local = options.earlier.get("sqs_throughput")
    if local is None or local.skipped:
        local = throughput.run(options)
    footprint = {
        k: float(local.details[k])
        for k in ("peak_rss_mb", "cpu_ms_per_import")
        if local.details.get(k)
    }
    single = measured.details["paths"]["sqs"]["calls"]
    load = load_of(options.earlier, single)
    lines, inputs = model(measured.details, load, footprint)
    for line in lines:
        sqs, http = line.per_million("sqs"), line.per_million("http")
        report.add(line.what, f"${sqs:.3f} / ${http:.3f}", "SQS / HTTP")
        report.notes.append(f"{line.what}: {line.basis}")
    totals = {p: sum(line.per_million(p) for line in lines) for p in ("sqs", "http")}
    report.add(
        "total per million imports, SQS path",
        round(totals["sqs"], 2),
        "USD",
        "< 5",
        totals["sqs"] < 5,
    )
    report.add("total per million imports, HTTP path", round(totals["http"], 2), "USD")
    # Config `tracing: pass_through`: a queue import is traced only if its sender was, so the
    # SQS path records no traces of its own (the HTTP path follows the API stage's sampling).
    xray = next(line for line in lines if line.what == "X-Ray traces")
    report.add(
        "total per million imports, SQS path, with tracing pass_through",
        round(totals["sqs"] - xray.per_million("sqs"), 2),
        "USD",
    )
    chosen = inputs["memory_chosen_mb"]
    for mb, o in inputs["memory_options"].items():
        report.add(
            f"at {mb} MB: seconds per import / GB-s / peak fits",
            f"{o['seconds']:.3f} / {o['gb_seconds']:.4f} / {'yes' if o['fits'] else 'no'}",
        )
    report.add(
        "memory chosen / the stack deploys",
        f"{chosen} / {topology.FUNCTION_MEMORY_MB} MB",
        target="equal",
        ok=chosen == topology.FUNCTION_MEMORY_MB,
    )
    if not load.measured:
        report.notes.append(
            "not under load: rate_limit_60s did not run in this invocation, so the calls are a "
            "single container's (make bench BENCH='rate_limit_60s cost' for the model under load)"
        )
    if not footprint:
        report.notes.append("no measured footprint (sqs_throughput skipped): CPU from aws_calls")
    report.details = {
        "per_million": {ln.what: {p: ln.per_million(p) for p in ("sqs", "http")} for ln in lines},
        "totals": totals,
        "inputs": inputs,
        "assumptions": {
            "zoho_latency_seconds": ZOHO_LATENCY_SECONDS,
            "aws_round_trip_seconds": AWS_ROUND_TRIP_SECONDS,
            "batch_size": BATCH,
            "full_vcpu_mb": FULL_VCPU_MB,
        },
    }
    return report
