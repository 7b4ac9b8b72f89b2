"""Many organizations at once, and one organization's backlog beside another's single import.

Zoho's limits are per organization, so the service's throughput should grow with the number of
organizations: nothing written on the hot path may be shared between them (each has its own
limiter item and its own ledger partition; the token item is per connection and only written on
a refresh). Two parts, with compressed windows and Zoho's latency compressed like `rate_limit`:

- **Scaling**: 1, 10 and 50 organizations (--quick: 1 and 50), each with a backlog and a limit of
  `RPM` calls per 10 s window, served by the same 16 containers from one queue. Figures: imports
  per second against N times one organization's, the most calls Zoho saw in any window of any
  organization, 429s, and the DynamoDB items written while importing for more than one
  organization.
- **Deployed concurrency**: 50 organizations at their limits, served by the queue's deployed
  concurrency (2 containers) in batches of 10 at Zoho's own latency: a batch's organizations
  at once, a lane each, as the SQS handler does, against one record after the other. Figures:
  imports per second and the function seconds Lambda bills per import, for both.
- **Head of line**: one organization's backlog in a kind's queue, parked at its daily cap (2,000
  messages) or at its per-minute limit (1,000; --quick: 300 each), then a second
  organization's single import sent to the same queue, behind it, served by the queue's
  deployed concurrency (`QUEUE_MAXIMUM_CONCURRENCY` containers) in its deployed batches, as the
  SQS handler imports them (a parked organization's records parked together, one write a
  batch, once a container has seen the park). Figure: how long the single
  import waits, and extrapolated to 10,000 (the time per message is what the backlog costs;
  moto is too slow to run 10,000 here). Not SQS: a queue simulated in process that hands out
  the oldest visible message first (a standard queue is only roughly ordered; an SQS fair
  queue would serve the quiet organization first, see docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import botocore.client

from bench import world as bench_world
from bench.core import AWS_ROUND_TRIP_SECONDS, ZOHO_LATENCY_SECONDS, Options, Report
from bench.rate_limit import COMPRESSED, CONCURRENCY
from bench.world import Queue, World, current, serve, world
from crm_to_books import topology
from crm_to_books.limiter import next_utc_midnight
from crm_to_books.models import ImportRequest
from crm_to_books.pipeline import Importer
from crm_to_books.settings import Organization
from crm_to_books_cli.sandbox import SandboxConfig
from crm_to_books_cli.sandbox.config import Organization as SandboxOrganization

# Each organization's limit in the scaling runs: 2 calls per 10 s window, so that 50 at their
# limits (10 imports a second) stay within what moto and the sandbox serve on 2 shared cores
# (about 14 imports a second): the figure is about the service, not the bench machine.
RPM = 2
SCALING_WINDOW = 10.0
CONTAINERS = 16
FIRST_ORG = 800_000_000
SCALING_TARGET = 0.9  # of N times one organization's imports per second
HEAD_OF_LINE_TARGET_SECONDS = 5.0  # "a few seconds"
BACKLOG = 10_000  # issue 13's backlog: measured smaller (moto's pace), extrapolated


@contextmanager
def writes_by_organization() -> Iterator[dict[str, set[str]]]:
    """DynamoDB items written (key -> organizations whose imports wrote them)."""
    written: dict[str, set[str]] = defaultdict(set)
    lock = threading.Lock()
    original = getattr(botocore.client.BaseClient, "_make_api_call")  # noqa: B009 (untyped)

    def noted(client: Any, operation: str, params: Any) -> Any:
        keys = [
            _key(p.get("Key") or p.get("Item") or {}, p.get("TableName", ""))
            for p in _written_items(operation, params)
        ]
        if current.org:
            with lock:
                for key in keys:
                    written[key].add(current.org)
        return original(client, operation, params)

    with mock.patch.object(botocore.client.BaseClient, "_make_api_call", noted):
        yield written


def _written_items(operation: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    if operation in ("PutItem", "UpdateItem", "DeleteItem"):
        return [params]
    if operation == "TransactWriteItems":
        return [next(iter(i.values())) for i in params.get("TransactItems", [])]
    return []


def _key(item: dict[str, Any], table: str) -> str:
    return "/".join([table, item.get("pk", {}).get("S", "?"), item.get("sk", {}).get("S", "")])


def _organizations(n: int, limits: Organization) -> tuple[list[str], SandboxConfig]:
    ids = [str(FIRST_ORG + i) for i in range(n)]
    orgs = tuple(
        SandboxOrganization(
            organization_id=org,
            name=f"Bench organization {i}",
            sync_modes=("accounts_and_contacts", "vendors", "products"),
            requests_per_minute=limits.requests_per_minute,
            daily_limit=limits.daily_limit,
            max_concurrency=limits.max_concurrency,
        )
        for i, org in enumerate(ids)
    )
    return ids, SandboxConfig(organizations=orgs)


def _containers(w: World, orgs: list[str], limits: Organization, n: int) -> list[Importer]:
    importers = [w.importer(organizations=dict.fromkeys(orgs, limits)) for _ in range(n)]
    for importer in importers:  # warm containers: the token is not what is measured here
        importer.tokens.get("default")
    return importers


def _scaling(n: int, windows: int) -> dict[str, Any]:
    window = SCALING_WINDOW
    limits = Organization(
        requests_per_minute=RPM, daily_limit=1_000_000, max_concurrency=CONCURRENCY
    )
    orgs, config = _organizations(n, limits)
    with world(config, limits=limits, window=window) as w:
        w.sandbox.set_faults(latency_seconds=COMPRESSED.latency)
        importers = _containers(w, orgs, limits, CONTAINERS)
        queue = Queue()
        for i in range(RPM * (windows + 2)):  # interleaved, as many senders would
            for org in orgs:
                queue.send(ImportRequest(kind="account", organization_id=org, crm_id=str(i + 1)))
        w.calls.take()
        started = time.monotonic()
        with writes_by_organization() as written:
            served = serve(importers, queue, started + windows * window)
        elapsed = time.monotonic() - started
        calls, failed, _ = w.calls.take()
        counters = w.counters(window_seconds=window)
    imported = sum(served.done.values())
    most = max(counters["max_requests_in_window"].get(org, 0) for org in orgs)
    shared = sorted(key for key, by in written.items() if len(by) > 1)
    return {
        "organizations": n,
        "imports": imported,
        "seconds": round(elapsed, 1),
        "imports_per_second": round(imported / elapsed, 2),
        "limit_per_second": n * RPM / window,
        "most_in_any_window_of_any_org": most,
        "responses_429": sum(counters["responses_429"].values()),
        "aws_calls_per_import": round(calls.total() / max(imported, 1), 2),
        "failed_conditions_per_import": round(failed.total() / max(imported, 1), 2),
        "retries_per_import": round(served.retries / max(imported, 1), 2),
        "items_written": len(written),
        "calls_per_import_by_operation": {
            op: round(n / max(imported, 1), 2) for op, n in sorted(calls.items())
        },
        "items_written_for_two_or_more_orgs": shared[:10],
        "shared_count": len(shared),
    }


def _head_of_line(backlog: int, parked: bool) -> dict[str, Any]:
    window = COMPRESSED.window
    noisy_limits = Organization(
        requests_per_minute=COMPRESSED.rpm, daily_limit=1_000_000, max_concurrency=CONCURRENCY
    )
    orgs, config = _organizations(2, noisy_limits)
    noisy, quiet = orgs
    with world(config, limits=noisy_limits, window=window) as w:
        w.sandbox.set_faults(latency_seconds=COMPRESSED.latency)
        importers = _containers(w, orgs, noisy_limits, topology.QUEUE_MAXIMUM_CONCURRENCY)
        if parked:  # Zoho said 429 code 45 before: the limiter holds the organization's park
            importers[0].limiter.block(noisy, next_utc_midnight(time.time()), "daily")
        queue = Queue()
        for i in range(backlog):
            queue.send(ImportRequest(kind="account", organization_id=noisy, crm_id=str(i + 1)))
        queue.send(ImportRequest(kind="account", organization_id=quiet, crm_id="1"))
        sent = time.monotonic()
        w.calls.take()
        served = serve(
            importers, queue, sent + 600.0, stop_when=(quiet, "1"), batch=topology.BATCH_SIZE
        )
        calls, _, aws_seconds = w.calls.take()
    done = served.finished_at.get((quiet, "1"))
    handled = served.parked + served.retries + served.other + sum(served.done.values())
    containers = len(importers)
    # The containers work at once: with moto's time per AWS call (one lock for every container,
    # and about 13 ms an item written) replaced by an AWS round trip, as `rate_limit` bills it,
    # and a round trip more for each SQS send of the handler's delayed copies (which the bench's
    # in-memory queue does not spend).
    at_aws = (
        (done - sent)
        - (aws_seconds - (calls.total() + served.sends) * AWS_ROUND_TRIP_SECONDS) / containers
        if done
        else None
    )
    return {
        "backlog": backlog,
        "noisy_parked_at_daily_cap": parked,
        "containers": containers,
        "quiet_import_waited_seconds": round(done - sent, 2) if done else None,
        "quiet_import_waited_seconds_at_aws_round_trips": round(at_aws, 2) if at_aws else None,
        "noisy_messages_handled_before": handled - 1,
        "ms_per_noisy_message_per_container": round(
            (done - sent) * containers * 1000 / max(handled - 1, 1), 2
        )
        if done
        else None,
        "aws_calls_per_noisy_message": round(calls.total() / max(handled, 1), 2),
        "sqs_sends_per_noisy_message": round(served.sends / max(handled, 1), 2),
    }


def _deployed(lanes: bool, windows: int) -> dict[str, Any]:
    """50 organizations at their limits served by the queue's deployed concurrency (2
    containers) in batches of 10, at Zoho's own latency: a batch's organizations imported at
    once, a lane each (`lanes`, as the SQS handler does), or one record after the other."""
    window, n = SCALING_WINDOW, 50
    limits = Organization(
        requests_per_minute=RPM, daily_limit=1_000_000, max_concurrency=CONCURRENCY
    )
    orgs, config = _organizations(n, limits)
    one_lane = (
        contextlib.nullcontext() if lanes else mock.patch.object(bench_world, "PARALLEL_RECORDS", 1)
    )
    with world(config, limits=limits, window=window) as w, one_lane:
        w.sandbox.set_faults(latency_seconds=ZOHO_LATENCY_SECONDS)
        importers = _containers(w, orgs, limits, topology.QUEUE_MAXIMUM_CONCURRENCY)
        queue = Queue()
        for i in range(RPM * (windows + 2)):
            for org in orgs:
                queue.send(ImportRequest(kind="account", organization_id=org, crm_id=str(i + 1)))
        w.calls.take()
        started = time.monotonic()
        served = serve(importers, queue, started + windows * window, batch=topology.BATCH_SIZE)
        elapsed = time.monotonic() - started
        calls, _, _ = w.calls.take()
        counters = w.counters(window_seconds=window)
    imported = sum(served.done.values())
    return {
        "lanes": lanes,
        "containers": len(importers),
        "imports": imported,
        "imports_per_second": round(imported / elapsed, 2),
        "limit_per_second": n * RPM / window,
        "function_seconds_per_import": round(served.busy_seconds / max(imported, 1), 3),
        "aws_calls_per_import": round(calls.total() / max(imported, 1), 2),
        "most_in_any_window_of_any_org": max(
            counters["max_requests_in_window"].get(org, 0) for org in orgs
        ),
        "responses_429": sum(counters["responses_429"].values()),
    }


def run(options: Options) -> Report:
    report = Report("many_orgs", "Many organizations: scaling, and one organization's backlog")
    counts, windows = ((1, 50), 2) if options.quick else ((1, 10, 50), 3)
    alone = 0.0
    for n in counts:
        got = _scaling(n, windows)
        report.details[f"{n} organizations"] = got
        alone = alone or got["imports_per_second"]  # the first run: one organization
        scaling = got["imports_per_second"] / (n * alone)
        got["scaling"] = scaling
        report.add(
            f"{n} organizations: imports per second / {n} x one organization's",
            f"{got['imports_per_second']:g} / {n * alone:.2f} ({scaling:.0%})",
            target=f">= {SCALING_TARGET:.0%}",
            ok=scaling >= SCALING_TARGET,
        )
        report.add(
            f"{n} organizations: most calls Zoho saw in any window of one organization",
            got["most_in_any_window_of_any_org"],
            target=f"<= {RPM}",
            ok=got["most_in_any_window_of_any_org"] <= RPM,
        )
        report.add(
            f"{n} organizations: 429s",
            got["responses_429"],
            target="0",
            ok=not got["responses_429"],
        )
        report.add(
            f"{n} organizations: items written for two or more organizations",
            got["shared_count"],
            target="0",
            ok=got["shared_count"] == 0,
        )
        report.notes.append(
            f"{n} organizations: {got['imports']} imports in {got['seconds']} s, AWS calls per "
            f"import {got['aws_calls_per_import']} (failed conditions "
            f"{got['failed_conditions_per_import']}), retries per import "
            f"{got['retries_per_import']}, {got['items_written']} items written"
        )
    deployed = {lanes: _deployed(lanes, windows) for lanes in (True, False)}
    for lanes, got in deployed.items():
        how = "a lane per organization" if lanes else "one record after the other"
        report.details[f"50 organizations, deployed concurrency, {how}"] = got
        report.add(
            f"50 organizations, {got['containers']} containers, batches of "
            f"{topology.BATCH_SIZE}, {how}: imports per second / the limits' / function "
            "seconds per import",
            f"{got['imports_per_second']:g} / {got['limit_per_second']:g} / "
            f"{got['function_seconds_per_import']:g}",
        )
        report.add(
            f"  {how}: most calls Zoho saw in any window of one organization; 429s",
            f"{got['most_in_any_window_of_any_org']}; {got['responses_429']}",
            target=f"<= {RPM}; 0",
            ok=got["most_in_any_window_of_any_org"] <= RPM and not got["responses_429"],
        )
    sizes = (300, 300) if options.quick else (2_000, 1_000)
    for parked, size in zip((True, False), sizes, strict=True):
        got = _head_of_line(size, parked)
        how = "parked at its daily cap" if parked else "at its per-minute limit"
        report.details[f"head of line, {how}"] = got
        waited = got["quiet_import_waited_seconds"]
        report.add(
            f"a single import behind {size:,} messages of another organization {how}",
            waited if waited is not None else "not done in 600 s",
            "s",
            f"<= {HEAD_OF_LINE_TARGET_SECONDS:g}",
            waited is not None and waited <= HEAD_OF_LINE_TARGET_SECONDS,
        )
        at_aws = got["quiet_import_waited_seconds_at_aws_round_trips"]
        if waited is not None and at_aws is not None:
            report.add(
                f"  the same behind {BACKLOG:,}, extrapolated (time per message x messages)",
                round(waited * BACKLOG / size),
                "s",
            )
            report.add(
                f"  behind {size:,}, at AWS round trips ({AWS_ROUND_TRIP_SECONDS * 1000:g} ms a "
                f"call for moto's time); behind {BACKLOG:,}, extrapolated",
                f"{at_aws:g}; {round(at_aws * BACKLOG / size, 1):g}",
                "s",
                f"<= {HEAD_OF_LINE_TARGET_SECONDS:g} behind {BACKLOG:,}",
                at_aws * BACKLOG / size <= HEAD_OF_LINE_TARGET_SECONDS,
            )
        report.notes.append(
            f"head of line, {how}: {got['containers']} containers (the queue's deployed "
            f"concurrency), {got['noisy_messages_handled_before']} of the other organization's "
            f"messages handled first, {got['ms_per_noisy_message_per_container']} ms each per "
            f"container, {got['aws_calls_per_noisy_message']} AWS calls each and "
            f"{got['sqs_sends_per_noisy_message']} SQS sends (delayed copies, a lane's together)"
        )
    report.notes.append(
        f"scaling: {RPM} calls per {SCALING_WINDOW:g} s window per organization, "
        f"{COMPRESSED.latency * 1000:g} ms latency, {CONTAINERS} containers; head of line: "
        f"{COMPRESSED.rpm} calls per {COMPRESSED.window:g} s window"
    )
    return report
