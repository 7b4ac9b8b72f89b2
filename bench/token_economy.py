"""Token economy: Zoho token requests with many containers on one connection.

Zoho allows 10 token requests per refresh token per 10 minutes: the target is one request per
connection per token lifetime, whatever the number of containers.

1. A burst: N containers (threads, each its own Importer) share a few hundred imports.
2. Over time: a short token lifetime (60 s instead of 3600 s) over a longer run, showing one
   refresh per lifetime. The engine's own token margins are scaled by the same factor
   (renew 300 s before expiry -> 5 s, never use a token with under 60 s left -> 1 s), so the
   run is production's hour, compressed. 60 s is the shortest lifetime the engine believes
   (`zoho._expires_in` floors `expires_in` at 60 s), so shorter sandbox tokens would expire
   under a client that thinks they are still good.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from typing import Any
from unittest import mock

from bench.core import Options, Report
from bench.world import NAMES, run_workers, world
from crm_to_books import tokens
from crm_to_books.entities import KINDS
from crm_to_books.settings import Settings
from crm_to_books.zoho import ZohoClient
from crm_to_books_cli.sandbox import SandboxConfig

PRODUCTION_LIFETIME = 3600.0
SHORT_LIFETIME = 60


def _burst(options: Options, report: Report) -> None:
    containers, imports = (8, 120) if options.quick else (16, 300)
    with world() as w:
        importers = [w.importer() for _ in range(containers)]
        requests = [w.request(KINDS[n % 4], 10_000 + n) for n in range(imports)]
        w.calls.take()
        started = time.monotonic()
        drained = run_workers(importers, requests, started + 120)
        elapsed = time.monotonic() - started
        calls, failed, _ = w.calls.take()
        granted = w.counters()["token_requests"]["granted"]
    done = drained.count("imported")
    report.add(
        f"token requests, {containers} containers, {done} imports",
        granted,
        "",
        "1 per connection per lifetime",
        granted == 1 and done == imports,
    )
    report.add("imports per token request", done / max(granted, 1))
    report.add(f"AWS calls per import, {containers} containers", calls.total() / imports, "calls")
    report.add("burst throughput (moto-bound)", done / elapsed, "imports/s")
    report.notes.append(
        f"with {containers} containers on one organization: "
        + ", ".join(f"{op} {n / imports:.2f}" for op, n in sorted(calls.items()))
        + " per import; failed conditions "
        + ", ".join(f"{op} {n / imports:.2f}" for op, n in sorted(failed.items()))
    )
    report.details["burst"] = {
        "containers": containers,
        "imports": done,
        "token_requests": granted,
        "seconds": round(elapsed, 2),
        "calls_per_import": {op: round(n / imports, 3) for op, n in sorted(calls.items())},
        "failed_per_import": {op: round(n / imports, 3) for op, n in sorted(failed.items())},
    }


def _over_time(options: Options, report: Report) -> None:
    containers, duration = (8, 25.0) if options.quick else (16, 75.0)
    scale = SHORT_LIFETIME / PRODUCTION_LIFETIME
    margin = Settings.model_fields["token_refresh_margin_seconds"].default * scale
    config = SandboxConfig(token_lifetime_seconds=SHORT_LIFETIME)
    stamps: list[float] = []  # when each token request was sent, as Zoho sees it
    refresh, started = ZohoClient.refresh, time.time()

    def stamped(client: ZohoClient, *args: Any, **kwargs: Any) -> Any:
        stamps.append(time.time() - started)
        return refresh(client, *args, **kwargs)

    with (
        mock.patch.object(tokens, "MIN_USABLE_SECONDS", tokens.MIN_USABLE_SECONDS * scale),
        mock.patch.object(ZohoClient, "refresh", stamped),
        world(config, token_refresh_margin_seconds=margin) as w,
    ):
        importers = [w.importer() for _ in range(containers)]
        requests = [w.request(KINDS[n % 4], 50_000 + n) for n in range(int(duration) * 20)]
        started = time.time()
        # ~5 imports a second in all: the point is time passing, not throughput.
        deadline = time.monotonic() + duration
        outcomes = run_workers(importers, requests, deadline, pace=containers / 5).outcomes
        counters = w.counters()
        logged = w.item(NAMES.state_table, {"pk": {"S": "token#default"}})["refreshes"]["L"]
    gaps = [b - a for a, b in itertools.pairwise(sorted(stamps))]
    renew_every = SHORT_LIFETIME - margin  # the engine never renews earlier than this
    expected = 1 + int(duration // renew_every)
    results = Counter(o.result for o in outcomes)
    granted = counters["token_requests"]["granted"]
    # Books requests beyond the successful imports were refused: 401s from expired tokens.
    refused = counters["books_requests"].get(w.org, 0) - sum(
        n for kind in counters["imports"].get(w.org, {}).values() for n in kind.values()
    )
    report.add(
        f"token requests in {duration:.0f} s, {SHORT_LIFETIME} s tokens, {containers} containers",
        granted,
        "",
        f"<= {expected} (one per {renew_every:.0f} s)",
        granted <= expected and results["imported"] == len(outcomes),
    )
    report.add("Books requests refused (expired token)", refused, "", "0", refused == 0)
    if gaps:
        shortest = min(gaps)
        report.add(
            "shortest time between token requests",
            shortest,
            "s",
            f">= {renew_every:.0f}",
            shortest >= renew_every - 0.5,
        )
    report.notes.append(
        f"{results['imported']} imports over {duration:.0f} s; token requests sent at "
        + ", ".join(f"{s:.1f}" for s in sorted(stamps))
        + f" s; the state item's refresh log holds {len(logged)}. Tokens are shared once under "
        f"{margin:.0f} s is left (300 s of 3600 s, scaled), but containers keep their own copy "
        f"until under {tokens.MIN_USABLE_SECONDS * scale:.0f} s is left (60 s of 3600 s), so "
        "that is when the renewal happens"
    )
    if len(logged) < granted:
        report.notes.append(
            "more token requests than the refresh log holds: a container took the refresh lease "
            "just after another's refresh released it, from a read made before that refresh, "
            "refreshed again and wrote its stale refresh log over the other's"
        )
    report.details["over_time"] = {
        "containers": containers,
        "seconds": duration,
        "token_lifetime": SHORT_LIFETIME,
        "refresh_margin": round(margin, 3),
        "token_requests": granted,
        "request_times": [round(s, 2) for s in sorted(stamps)],
        "refresh_log_entries": len(logged),
        "results": dict(results),
    }


def run(options: Options) -> Report:
    report = Report("tokens", "Token economy: Zoho token requests per connection")
    _burst(options, report)
    _over_time(options, report)
    return report
