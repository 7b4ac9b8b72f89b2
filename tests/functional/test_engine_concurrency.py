"""Many containers at once: one import per record, one token, Zoho's limits never crossed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from crm_to_books.models import ImportRequest
from crm_to_books.pipeline import Importer, ImportOutcome
from crm_to_books.settings import Organization
from crm_to_books_cli.sandbox import ZohoSandbox
from tests.functional.conftest import ORG, WINDOW
from tests.functional.test_engine_outcomes import imports_of, records_of, request

THREADS = 8


def run_until_settled(importer: Importer, req: ImportRequest, deadline: float) -> ImportOutcome:
    """What SQS does for a retryable message: hand it back after `retry_after` (here sooner,
    at most 0.5 s), with the rate slot held for it if one was."""
    held = None
    while True:
        outcome = importer.run(req, reservation=held)
        if outcome.result != "retry_later" or time.monotonic() > deadline:
            return outcome
        held = outcome.reservation
        time.sleep(min(outcome.retry_after or 0.1, 0.5))


def test_eight_containers_importing_the_same_record_call_zoho_once(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    sandbox.configure(reimport="duplicate")
    sandbox.set_faults(latency_seconds=0.3)  # keep the first import in flight while others try
    crm_id = sandbox.crm_ids["account"][2]
    importers = [new_importer() for _ in range(THREADS)]
    start = threading.Barrier(THREADS)

    def go(importer: Importer) -> ImportOutcome:
        start.wait()
        return run_until_settled(importer, request("account", crm_id), time.monotonic() + 20)

    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = list(pool.map(go, importers))

    assert {o.result for o in outcomes} <= {"imported", "already_imported"}
    assert [o.result for o in outcomes].count("imported") == 1
    assert len({o.record.books_id for o in outcomes}) == 1
    assert imports_of(sandbox, "account", crm_id) == 1
    assert records_of(sandbox, "account", crm_id) == 1


def test_two_hundred_imports_across_eight_containers_make_one_token_request(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    importers = [
        new_importer(
            organizations={
                ORG: Organization(
                    requests_per_minute=10_000, max_concurrency=50, daily_limit=100_000
                )
            }
        )
        for _ in range(THREADS)
    ]
    sandbox.set_limits(ORG, requests_per_minute=10_000, max_concurrency=50, daily_limit=100_000)
    ids = [str(5_000_000_000 + n) for n in range(200)]
    deadline = time.monotonic() + 60

    def go(n: int) -> ImportOutcome:
        return run_until_settled(importers[n % THREADS], request("item", ids[n]), deadline)

    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = list(pool.map(go, range(len(ids))))

    assert [o.result for o in outcomes] == ["imported"] * len(ids)
    assert sandbox.counters()["token_requests"]["total"] == 1
    assert sum(i.tokens.refreshes for i in importers) == 1


def test_the_limiter_keeps_every_window_and_the_concurrency_cap_under_zohos_limits(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    rpm, concurrency = 12, 3
    limits = Organization(requests_per_minute=rpm, max_concurrency=concurrency)
    importers = [new_importer(organizations={ORG: limits}) for _ in range(THREADS)]
    sandbox.set_limits(ORG, requests_per_minute=rpm, max_concurrency=concurrency)
    sandbox.set_faults(latency_seconds=0.15)
    ids = [str(6_000_000_000 + n) for n in range(36)]  # three windows' worth
    deadline = time.monotonic() + 45

    def go(n: int) -> ImportOutcome:
        return run_until_settled(importers[n % THREADS], request("contact", ids[n]), deadline)

    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = list(pool.map(go, range(len(ids))))
    elapsed = time.monotonic() - started

    counters = sandbox.counters(window_seconds=WINDOW)
    assert [o.result for o in outcomes] == ["imported"] * len(ids)
    assert counters["max_requests_in_window"][ORG] <= rpm
    assert counters["max_concurrency_seen"][ORG] <= concurrency
    assert counters["responses_429"] == {"44": 0, "45": 0, "1070": 0}
    assert elapsed >= 2 * WINDOW  # 36 calls at 12 per window cannot finish sooner


def test_a_container_taking_the_lease_just_after_a_refresh_uses_that_token(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    """Both saw "no token"; the first refreshed and let go of the lease; the second gets the
    lease next. It must read again and use the new token, not ask Zoho a second time."""
    first, second = new_importer().tokens, new_importer().tokens
    token = first.get("default")

    assert second._take_lease("default", time.time())
    assert second._refresh_holding_lease("default") == token

    assert sandbox.counters()["token_requests"]["total"] == 1


def test_a_container_taking_the_lease_just_after_a_refusal_does_not_ask_zoho_again(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    """Both saw "no token"; the first was refused (revoked refresh token), marked the connection
    broken and let go; the second gets the lease next. It must see "broken", give the lease
    back and not spend another token request."""
    from crm_to_books.errors import ConnectionBroken

    sandbox.revoke_refresh_token()
    first, second = new_importer().tokens, new_importer().tokens
    with pytest.raises(ConnectionBroken):
        first.get("default")

    assert second._take_lease("default", time.time())
    with pytest.raises(ConnectionBroken):
        second._refresh_holding_lease("default")

    assert sandbox.counters()["token_requests"]["total"] == 1
    assert "lease_until" not in second._read("default")  # the lease was given back
