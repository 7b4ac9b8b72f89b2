"""Service overhead: what the service adds to Zoho's own answer time, p50 and p99.

In process (always): `Importer.run` wall time minus the Zoho call's own time, one warm
container, moto in process, split into time inside AWS calls (moto here, DynamoDB and
EventBridge in AWS) and the library's own work.
Local stack (when it runs): sync HTTP imports end to end (API Gateway, the function's
container, the AWS emulator) minus the sandbox's own answer time.
"""

from __future__ import annotations

import time
from itertools import cycle
from statistics import median

from bench.core import Options, Report, percentile
from bench.local import Unavailable, local_stack, post_import, sandbox_latency
from bench.world import world
from crm_to_books.entities import KINDS


def _in_process(options: Options, report: Report) -> None:
    n = 50 if options.quick else 200
    overhead, aws, zoho_ms = [], [], []
    with world() as w:
        importer = w.importer()
        importer.run(w.request("item", 1))  # warm: token, limiter item, clients
        w.calls.take()
        for kind, crm_id in zip(cycle(KINDS), range(20_000, 20_000 + n), strict=False):
            zoho_before, started = w.zoho_seconds, time.perf_counter()
            assert importer.run(w.request(kind, crm_id)).result == "imported"
            wall = time.perf_counter() - started
            zoho = w.zoho_seconds - zoho_before
            overhead.append(wall - zoho)
            aws.append(w.calls.take()[2])
            zoho_ms.append(zoho * 1000)
    ms = [x * 1000 for x in overhead]
    report.add("in process: overhead p50", percentile(ms, 50), "ms")
    report.add("in process: overhead p99", percentile(ms, 99), "ms")
    library = [(o - a) * 1000 for o, a in zip(overhead, aws, strict=True)]
    aws_ms = [a * 1000 for a in aws]
    report.add("in process: of which AWS calls (moto) p50", percentile(aws_ms, 50), "ms")
    report.add("in process: of which the library's own work p50", percentile(library, 50), "ms")
    report.add("in process: of which the library's own work p99", percentile(library, 99), "ms")
    report.notes.append(
        f"in process: {n} sequential first-time imports in one warm container; the sandbox "
        f"answered in {median(zoho_ms):.1f} ms (p50), subtracted per import; the p99 is moto's "
        "(in-process DynamoDB pauses), the library's own p99 is the figure that carries over"
    )
    report.details["in_process"] = {
        "imports": n,
        "overhead_ms": {"p50": percentile(ms, 50), "p99": percentile(ms, 99)},
        "aws_ms_p50": percentile(aws_ms, 50),
        "library_ms": {"p50": percentile(library, 50), "p99": percentile(library, 99)},
        "zoho_ms_p50": median(zoho_ms),
    }


def _http(options: Options, report: Report) -> None:
    n = 30 if options.quick else 150
    try:
        with local_stack() as local:
            stack, org = local.stack, local.org
            started = time.perf_counter()
            first = post_import(stack.api_url, org, "account", 2)  # usually a cold container
            cold = time.perf_counter() - started
            first.raise_for_status()
            seconds = []
            for crm_id in range(30_000, 30_000 + n):  # one function: its container stays warm
                started = time.perf_counter()
                post_import(stack.api_url, org, "item", crm_id).raise_for_status()
                seconds.append(time.perf_counter() - started)
            zoho = median(sandbox_latency(stack.sandbox, org, 30))
    except Unavailable as exc:
        report.notes.append(f"sync HTTP through the local stack: skipped: {exc}")
        report.details["http"] = {"skipped": str(exc)}
        return
    ms = [(s - zoho) * 1000 for s in seconds]
    report.add("sync HTTP, local stack: overhead p50", percentile(ms, 50), "ms")
    report.add("sync HTTP, local stack: overhead p99", percentile(ms, 99), "ms")
    report.add("sync HTTP, local stack: first request of a new function", cold * 1000, "ms")
    report.notes.append(
        f"sync HTTP: {n} sequential imports, minus the sandbox's own {zoho * 1000:.1f} ms (p50 "
        "of direct calls); includes the local API Gateway, the container hop and moto's server"
    )
    report.details["http"] = {
        "imports": n,
        "overhead_ms": {"p50": percentile(ms, 50), "p99": percentile(ms, 99)},
        "sandbox_ms_p50": zoho * 1000,
        "cold_request_ms": cold * 1000,
    }


def run(options: Options) -> Report:
    report = Report("overhead", "Service overhead over Zoho's own latency")
    _in_process(options, report)
    _http(options, report)
    return report
