"""The import engine against moto and the Zoho sandbox: one outcome per classification path."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from crm_to_books.errors import UnknownOrganization
from crm_to_books.models import ImportRequest, Status
from crm_to_books.pipeline import Importer
from crm_to_books_cli.sandbox import ZohoSandbox
from crm_to_books_cli.sandbox.testing import token_request
from tests.functional.conftest import ACCOUNTS_ONLY_ORG, NAMES, ORG, OffsetClock


def request(kind: str, crm_id: str, org: str = ORG, **extra: Any) -> ImportRequest:
    return ImportRequest(kind=kind, organization_id=org, crm_id=crm_id, **extra)


def imports_of(sb: ZohoSandbox, kind: str, crm_id: str, org: str = ORG) -> int:
    return int(sb.counters()["imports"].get(org, {}).get(kind, {}).get(crm_id, 0))


def records_of(sb: ZohoSandbox, kind: str, crm_id: str, org: str = ORG) -> int:
    return int(sb.counters()["books_records"].get(org, {}).get(kind, {}).get(crm_id, 0))


@pytest.fixture
def outcome_events(settings: Any) -> Callable[[], list[dict[str, Any]]]:
    """Outcome events as a downstream subscriber sees them (a rule to a queue)."""
    sqs, events = boto3.client("sqs"), boto3.client("events")
    url = sqs.create_queue(QueueName="subscriber")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.put_rule(
        Name="all",
        EventBusName=NAMES.event_bus,
        EventPattern=json.dumps({"source": ["crm-to-books"]}),
    )
    events.put_targets(
        Rule="all", EventBusName=NAMES.event_bus, Targets=[{"Id": "subscriber", "Arn": arn}]
    )

    def read() -> list[dict[str, Any]]:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"]) for m in got]

    return read


def paced_importer(
    settings: Any, *, requests_per_minute: int, window_seconds: float
) -> tuple[Importer, list[float], list[float]]:
    """An importer for `ORG` at this limit whose clock (`now[0]`) moves only when it sleeps (each
    sleep kept in `waits`) or the test moves it."""
    import time

    from crm_to_books.settings import Organization

    now = [time.time()]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    limited = settings.model_copy(
        update={
            "rate_window_seconds": window_seconds,
            "organizations": {ORG: Organization(requests_per_minute=requests_per_minute)},
        }
    )
    return Importer(limited, clock=lambda: now[0], sleep=sleep), now, waits


def aws_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The AWS operations called from now on, in order (the list is cleared to start again)."""
    import botocore.client

    calls: list[str] = []
    original = botocore.client.BaseClient._make_api_call

    def counted(self: Any, operation: str, params: Any) -> Any:
        calls.append(operation)
        return original(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", counted)
    return calls


@pytest.mark.parametrize("kind", ["account", "contact", "vendor", "item"])
def test_each_kind_imports_once_and_records_the_books_id(
    kind: str,
    sandbox: ZohoSandbox,
    new_importer: Callable[..., Importer],
    outcome_events: Callable[[], list[dict[str, Any]]],
) -> None:
    crm_id = sandbox.crm_ids[kind][0]
    outcome = new_importer().run(request(kind, crm_id, correlation_id="corr-1"))

    assert outcome.result == "imported"
    key = "item_id" if kind == "item" else "contact_id"
    books_id = outcome.zoho_data[key] if outcome.zoho_data else None
    assert isinstance(books_id, str) and books_id.isdigit()
    record = outcome.record
    assert record.status is Status.SUCCEEDED and record.books_id == books_id
    assert (
        record.attempts == 1 and record.sources == ["http"] and record.correlation_ids == ["corr-1"]
    )
    assert imports_of(sandbox, kind, crm_id) == 1
    [event] = outcome_events()
    assert event["detail-type"] == "Import Succeeded"
    assert event["detail"]["books_id"] == books_id and event["detail"]["crm_id"] == crm_id


def test_an_imported_record_answers_from_the_ledger_without_calling_zoho(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    crm_id = sandbox.crm_ids["account"][1]
    first = new_importer().run(request("account", crm_id))
    calls_before = sandbox.counters()["books_requests"][ORG]

    again = new_importer().run(request("account", crm_id, source="sqs"))

    assert again.result == "already_imported"
    assert again.zoho_data == {"contact_id": first.record.books_id}
    assert sandbox.counters()["books_requests"][ORG] == calls_before


def test_customer_id_in_zohos_answer_is_accepted(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    sandbox.configure(contact_result_key="customer_id")
    outcome = new_importer().run(request("contact", sandbox.crm_ids["contact"][0]))
    assert outcome.result == "imported" and outcome.record.books_id


def test_a_missing_crm_record_fails_permanently_with_zohos_code_and_message(
    sandbox: ZohoSandbox,
    new_importer: Callable[..., Importer],
    outcome_events: Callable[[], list[dict[str, Any]]],
) -> None:
    outcome = new_importer().run(request("account", sandbox.crm_ids["missing"]))

    assert outcome.result == "failed"
    error = outcome.record.last_error
    assert error is not None and error.category == "permanent"
    assert error.http_status and 400 <= error.http_status < 500 and error.zoho_code
    assert error.message and "Not retried" in (outcome.record.detail or "")
    assert [e["detail-type"] for e in outcome_events()] == ["Import Failed"]


def test_the_wrong_sync_mode_fails_permanently(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    outcome = new_importer().run(
        request("contact", sandbox.crm_ids["contact"][0], org=ACCOUNTS_ONLY_ORG)
    )
    assert outcome.result == "failed"
    assert outcome.record.last_error and outcome.record.last_error.category == "permanent"
    assert imports_of(sandbox, "contact", sandbox.crm_ids["contact"][0], ACCOUNTS_ONLY_ORG) == 0


def test_an_unknown_organization_is_refused_before_anything_is_written(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    importer = new_importer()
    with pytest.raises(UnknownOrganization, match="organization_id: 999 is not configured"):
        importer.run(request("account", sandbox.crm_ids["account"][0], org="999"))
    assert importer.ledger.list("999") == ([], None)
    assert sandbox.counters()["token_requests"]["total"] == 0


def test_a_token_zoho_killed_is_dropped_refreshed_once_and_the_call_retried_once(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    importer = new_importer()
    importer.run(request("account", sandbox.crm_ids["account"][0]))
    # Zoho keeps a bounded number of tokens alive: someone else's token request kills ours.
    sandbox.configure(max_active_tokens=1)
    token_request(sandbox).raise_for_status()

    outcome = importer.run(request("account", sandbox.crm_ids["account"][1]))

    assert outcome.result == "imported"
    assert sandbox.counters()["token_requests"]["granted"] == 3  # ours, theirs, one refresh


def test_a_container_with_a_dead_token_picks_up_the_one_another_container_refreshed(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    first = new_importer()
    first.run(request("account", sandbox.crm_ids["account"][0]))
    sandbox.configure(max_active_tokens=1)
    second = new_importer()
    second.tokens.invalidate("default", second.tokens.get("default"))
    second.tokens.get("default")  # refreshed and shared: the first container's is dead

    outcome = first.run(request("account", sandbox.crm_ids["account"][1]))

    assert outcome.result == "imported"
    assert sandbox.counters()["token_requests"]["granted"] == 2  # no refresh of its own


def test_zoho_per_minute_throttling_backs_off_and_blocks_the_organization(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    # A 30 s "minute" on both sides: the block outlasts any pause of a loaded machine between
    # the 429 and the next attempt, so what is checked is the block, not the timing.
    sandbox.configure(rate_window_seconds=30.0)
    sandbox.set_limits(ORG, requests_per_minute=1)
    importer = new_importer(rate_window_seconds=30.0)
    importer.run(request("item", sandbox.crm_ids["item"][0]))

    outcome = importer.run(request("item", sandbox.crm_ids["item"][1]))

    assert outcome.result == "retry_later" and outcome.rate_limited and not outcome.parked
    assert outcome.record.status is Status.RETRYING
    assert outcome.record.last_error and outcome.record.last_error.zoho_code == 44
    # Told to come back when Zoho's window frees a slot (its X-Rate-Limit-Reset), not sooner.
    assert outcome.retry_after and 20 < outcome.retry_after <= 30.5
    # The organization is blocked for everyone: the next attempt is not even sent.
    sent = sandbox.counters()["books_requests"][ORG]
    assert (
        new_importer(rate_window_seconds=30.0)
        .run(request("item", sandbox.crm_ids["item"][2]))
        .rate_limited
    )
    assert sandbox.counters()["books_requests"][ORG] == sent


def test_zoho_daily_cap_parks_imports_until_the_reset(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer], clock: OffsetClock
) -> None:
    # The engine's clock at noon UTC: the reset (next UTC midnight) is hours away whenever the
    # test runs (within 15 minutes of it, a delayed message would rightly hold it, not a park).
    now = clock()
    clock.advance(now - now % 86400 + 43200 - now)
    sandbox.set_limits(ORG, daily_limit=1)
    importer = new_importer()
    importer.run(request("vendor", sandbox.crm_ids["vendor"][0]))

    outcome = importer.run(request("vendor", sandbox.crm_ids["vendor"][1]))

    assert outcome.result == "retry_later" and outcome.parked
    assert outcome.record.parked and outcome.record.next_attempt_at
    assert outcome.record.last_error and outcome.record.last_error.zoho_code == 45
    assert outcome.retry_after and 43000 < outcome.retry_after <= 43200


def test_zoho_concurrency_refusal_retries_soon(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    sandbox.set_limits(ORG, max_concurrency=1)
    sandbox.set_faults(latency_seconds=0.5)
    importer = new_importer()
    # Another client of the same organization holds Zoho's only concurrent slot.
    import threading

    busy = threading.Thread(
        target=new_importer().run, args=(request("account", sandbox.crm_ids["account"][0]),)
    )
    busy.start()
    try:
        deadline_ok = False
        for _ in range(50):
            if sandbox.counters()["in_flight"][ORG] >= 1:
                deadline_ok = True
                break
            threading.Event().wait(0.02)
        assert deadline_ok
        outcome = importer.run(request("account", sandbox.crm_ids["account"][1]))
    finally:
        busy.join()
    assert outcome.result == "retry_later" and outcome.rate_limited
    assert outcome.record.last_error and outcome.record.last_error.zoho_code == 1070
    assert outcome.retry_after and outcome.retry_after <= 3.5


def test_a_synchronous_caller_told_to_retry_leaves_no_trace_in_the_ledger(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    from crm_to_books.settings import Organization

    # A window of 30 s for the service (Zoho's is shorter, so the service is the stricter):
    # the window's two calls stay spent however slowly this machine runs the four imports.
    importer = new_importer(
        organizations={ORG: Organization(requests_per_minute=2)}, rate_window_seconds=30.0
    )
    importer.run(request("account", sandbox.crm_ids["account"][0]))
    failed_before = importer.run(request("account", sandbox.crm_ids["missing"], source="sqs"))
    assert failed_before.result == "failed"  # and the window's two calls are spent

    new = importer.run(request("account", sandbox.crm_ids["account"][1]), sync=True)
    again = importer.run(request("account", sandbox.crm_ids["missing"]), sync=True)

    assert new.rate_limited and not new.recorded
    assert importer.ledger.get(ORG, "account", sandbox.crm_ids["account"][1]) is None
    assert again.rate_limited and not again.recorded
    kept = importer.ledger.get(ORG, "account", sandbox.crm_ids["missing"])
    assert kept is not None and kept.status is Status.FAILED  # as it was before the attempt


def test_a_connection_without_the_scope_parks_that_kind_with_what_to_fix(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    from tests.functional.conftest import put_connection

    importer = new_importer()
    refresh, _ = importer.zoho.exchange_grant_code(
        sandbox.url,
        sandbox.client_id,
        sandbox.client_secret,
        sandbox.issue_grant_code(scope="ZohoBooks.settings.CREATE"),
    )
    put_connection(sandbox, refresh)

    outcome = importer.run(request("account", sandbox.crm_ids["account"][0]))

    # Not `failed`: the cause is the connection's, and it is fixed by connecting again
    assert outcome.result == "retry_later" and outcome.parked
    assert outcome.record.last_error and outcome.record.last_error.category == "scope_missing"
    assert "ZohoBooks.contacts.CREATE" in (outcome.record.detail or "")
    assert "crm-to-books connect --connection default" in (outcome.record.detail or "")
    assert sandbox.counters()["token_requests"]["granted"] == 3  # grant, first, one refresh


def test_each_outcome_is_counted_by_kind_for_dashboards(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer], capsys: pytest.CaptureFixture[str]
) -> None:
    importer = new_importer()
    importer.run(request("vendor", sandbox.crm_ids["vendor"][0]))
    importer.run(request("vendor", sandbox.crm_ids["missing"]))

    lines = [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("{") and '"Imports"' in line
    ]
    seen = {(m["kind"], m["outcome"], str(m["Imports"])) for m in lines}
    assert seen == {("vendor", "succeeded", "[1.0]"), ("vendor", "failed", "[1.0]")}
    assert all(m["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "CrmToBooks" for m in lines)


def test_the_hot_path_makes_four_aws_calls_and_an_already_imported_record_one(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer], monkeypatch: pytest.MonkeyPatch
) -> None:
    importer = new_importer()
    importer.run(request("account", sandbox.crm_ids["account"][0]))  # a warm container
    calls = aws_calls(monkeypatch)

    importer.run(request("account", sandbox.crm_ids["account"][1]))
    first_time = list(calls)
    calls.clear()
    importer.run(request("account", sandbox.crm_ids["account"][1]))

    # ledger begin, limiter permit (an UpdateItem on its slot and seat), record + release, event
    assert sorted(first_time) == ["PutEvents", "TransactWriteItems", "UpdateItem", "UpdateItem"]
    assert calls == ["UpdateItem"]


def test_a_slot_that_frees_within_a_second_is_waited_for_once_instead_of_requeued(
    sandbox: ZohoSandbox, settings: Any
) -> None:
    importer, _, waits = paced_importer(settings, requests_per_minute=1, window_seconds=0.5)
    importer.run(request("item", sandbox.crm_ids["item"][0]))

    outcome = importer.run(request("item", sandbox.crm_ids["item"][1]))

    assert outcome.result == "imported"
    assert len(waits) == 1 and 0 < waits[0] <= 1.0


def test_a_queued_import_at_the_limit_waits_its_turn_on_a_held_slot_without_a_ledger_write(
    sandbox: ZohoSandbox, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    importer, now, waits = paced_importer(settings, requests_per_minute=2, window_seconds=60.0)
    ids = sandbox.crm_ids["account"]
    for crm_id in ids[:2]:  # the window's two calls
        assert importer.run(request("account", crm_id)).result == "imported"
        now[0] += 1.0
    calls = aws_calls(monkeypatch)

    # A queued import now: one write holds a slot for it; the ledger is neither read nor written
    waiting = importer.run(request("account", ids[2], source="sqs"))
    assert waiting.result == "retry_later" and waiting.rate_limited and not waiting.recorded
    held = waiting.reservation
    assert held is not None and calls == ["UpdateItem"]
    assert importer.ledger.get(ORG, "account", ids[2]) is None
    # It comes back in whole seconds (queue delays are), at most one before its turn
    assert waiting.retry_after == int(waiting.retry_after or 0)
    assert 0 <= held.start_at - (now[0] + (waiting.retry_after or 0)) < 1.0
    # A synchronous caller cannot carry a held slot: it is told 429, as before
    sync = importer.run(request("contact", sandbox.crm_ids["contact"][0]), sync=True)
    assert sync.rate_limited and not sync.recorded and sync.reservation is None

    # Back at its turn, it imports on the slot held for it: no race, no failed write
    now[0] += waiting.retry_after or 0
    calls.clear()
    waits.clear()
    done = importer.run(request("account", ids[2], source="sqs"), reservation=held)
    assert done.result == "imported"
    assert sorted(calls) == ["PutEvents", "TransactWriteItems", "UpdateItem", "UpdateItem"]
    assert len(waits) == 1 and 0 <= waits[0] < 1.0  # waited in process for the turn itself


def test_a_cold_container_looks_at_its_organization_before_the_ledger(
    sandbox: ZohoSandbox, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    importer, now, waits = paced_importer(settings, requests_per_minute=2, window_seconds=60.0)
    ids = sandbox.crm_ids["account"]
    for crm_id in ids[:2]:  # another container spends the window's two calls
        assert importer.run(request("account", crm_id)).result == "imported"
        now[0] += 1.0
    calls = aws_calls(monkeypatch)

    def container() -> Importer:  # a new Lambda container: it never saw the limiter item
        new = Importer(importer.settings, clock=lambda: now[0], sleep=waits.append)
        new.tokens.get("default")
        calls.clear()
        return new

    # At a crowded organization, a queued import reads the item once and holds a turn: it
    # waits without leasing the record (no ledger write, nothing to undo)
    cold = container()
    waiting = cold.run(request("account", ids[2], source="sqs"))
    assert waiting.result == "retry_later" and not waiting.recorded
    assert waiting.reservation is not None
    assert calls == ["GetItem", "UpdateItem"]
    assert importer.ledger.get(ORG, "account", ids[2]) is None

    # At an organization with room, the look is the read its permit needed anyway: one read,
    # and the import costs what a cold container's did before (lease, permit, record, event)
    now[0] += 200.0  # the window, and the turn held above, have passed
    contact = sandbox.crm_ids["contact"][0]
    cold = container()
    done = cold.run(request("contact", contact, source="sqs"))
    assert done.result == "imported"
    assert calls == ["GetItem", "UpdateItem", "UpdateItem", "TransactWriteItems", "PutEvents"]

    # A record already imported: the look costs a read, and no permit is taken for it
    cold = container()
    again = cold.run(request("contact", contact, source="sqs"))
    assert again.result == "already_imported"
    assert calls == ["GetItem", "UpdateItem"]


def _two_containers(
    settings: Any, limits: Any, now: list[float], sleep: Callable[[float], None]
) -> tuple[Any, Importer, Importer]:
    """Settings with `limits` for ORG, and two containers on them with the clock `now`: another
    one, and this one (with its token)."""
    limited = settings.model_copy(update={"organizations": {ORG: limits}})
    other = Importer(limited, clock=lambda: now[0], sleep=sleep)
    here = Importer(limited, clock=lambda: now[0], sleep=sleep)
    here.tokens.get("default")
    return limited, other, here


def test_a_queued_import_waits_for_a_seat_without_writing_the_ledger(
    sandbox: ZohoSandbox, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every seat taken (as many calls in flight as may run at once): a queued import asks the
    limiter before the ledger, waits once in process for a seat due within a second, and if
    none frees goes back to its queue with nothing written; if one frees, it imports."""
    from crm_to_books.limiter import Permit
    from crm_to_books.settings import Organization

    now = [1_795_000_000.0]
    slept: list[float] = []
    freed: list[Permit] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds
        if freed:  # the other container's call ends while this one waits
            holder.limiter.release(freed.pop())

    one_seat, holder, waiting = _two_containers(
        settings, Organization(requests_per_minute=100, max_concurrency=1), now, sleep
    )
    org = one_seat.organizations[ORG]
    ids = sandbox.crm_ids["account"]

    seat = holder.limiter.acquire(ORG, org)  # its call has been in flight for half a second
    assert isinstance(seat, Permit)
    # With no call seen yet, a call is guessed to hold its seat HOLD_GUESS_SECONDS (1 s): the
    # seat is due in 0.5 s (x 1 to 1.5, the limiter's spread), within the one short wait
    now[0] += 0.5
    calls = aws_calls(monkeypatch)
    outcome = waiting.run(request("account", ids[0], source="sqs"))
    assert outcome.result == "retry_later" and not outcome.recorded and not outcome.parked
    assert outcome.error and "concurrent" in outcome.error.message
    assert len(slept) == 1 and slept[0] <= 1.0  # one short wait, no spin
    assert set(calls) == {"GetItem"}  # the limiter only: no lease, no record to undo
    assert waiting.ledger.get(ORG, "account", ids[0]) is None
    assert imports_of(sandbox, "account", ids[0]) == 0

    # The same, when the seat frees during the short wait: the import goes on at once
    freed.append(seat)
    slept.clear()
    calls.clear()
    done = waiting.run(request("account", ids[0], source="sqs"))
    assert done.result == "imported" and len(slept) == 1
    # A look, the other container's release (during the wait), a look, the permit (taken
    # first), the lease, the record with the permit's release, the outcome event
    assert calls == [
        "GetItem",
        "UpdateItem",
        "GetItem",
        "UpdateItem",
        "UpdateItem",
        "TransactWriteItems",
        "PutEvents",
    ]
    assert imports_of(sandbox, "account", ids[0]) == 1
    assert waiting.limiter.snapshot(ORG)["in_flight"] == 0  # the seat is free again

    # A permit taken before the lease and never used (the attempt stops before its call to
    # Zoho: here a scope marked missing) is released with the record, not left to its lease
    from crm_to_books.entities import get_entity

    contact = sandbox.crm_ids["contact"][0]
    cold = Importer(one_seat, clock=lambda: now[0], sleep=sleep)  # it looks at the item first
    cold.tokens.mark_missing(org.connection, get_entity("contact").scope)
    seat = holder.limiter.acquire(ORG, org)
    assert isinstance(seat, Permit)
    now[0] += 0.5
    freed.append(seat)
    slept.clear()
    stopped = cold.run(request("contact", contact, source="sqs"))
    assert len(slept) == 1 and not freed  # it waited for the seat, which freed meanwhile
    assert stopped.result == "retry_later" and stopped.parked
    assert stopped.error and "scope" in stopped.error.message
    assert imports_of(sandbox, "contact", contact) == 0
    assert cold.limiter.snapshot(ORG)["in_flight"] == 0


def test_at_its_limit_a_release_keeps_the_slot_for_the_next_queued_import_at_no_call(
    sandbox: ZohoSandbox, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With queued imports waiting at an organization at its per-minute limit, a container's
    release holds the slot for the next one it sees (its turn), in the write the release makes
    anyway: that import gets its turn without an AWS call, and nobody races for the slot."""
    from crm_to_books.limiter import Permit, Reservation
    from crm_to_books.settings import Organization

    now = [1_795_000_000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    two, other, here = _two_containers(
        settings, Organization(requests_per_minute=2, max_concurrency=2), now, sleep
    )
    org = two.organizations[ORG]
    first, second, third = (
        request("account", i, source="sqs") for i in sandbox.crm_ids["account"][:3]
    )
    fourth = request("contact", sandbox.crm_ids["contact"][0], source="sqs")

    flying = other.limiter.acquire(ORG, org)  # one call in flight elsewhere
    assert isinstance(flying, Permit)
    assert here.run(first).result == "imported"  # the window's other slot
    now[0] += 0.1
    waits = here.run(second)  # nothing to spare: a queued import waits, with a turn
    assert waits.result == "retry_later" and isinstance(waits.reservation, Reservation)
    told = here.run(fourth)  # and one more, with no slot left to hold: told when, no turn
    assert told.result == "retry_later" and told.reservation is None
    now[0] += 1.4
    other.limiter.release(flying)

    # Back at its turn, the import is made: the same 4 calls as any import
    now[0] = waits.reservation.start_at - 0.5
    calls = aws_calls(monkeypatch)
    assert here.run(second, reservation=waits.reservation).result == "imported"
    assert calls == ["UpdateItem", "UpdateItem", "TransactWriteItems", "PutEvents"]

    # and its release kept the slot for the next queued import here: no call at all
    calls.clear()
    kept = here.run(third)
    assert kept.result == "retry_later" and not kept.recorded
    assert kept.reservation is not None and calls == []
    assert kept.reservation.start_at > now[0] + 1.0  # when the slot frees, a window later

    # which, at that turn, imports in any container
    later = Importer(two, clock=lambda: now[0], sleep=sleep)
    later.tokens.get("default")
    now[0] = kept.reservation.start_at - 0.5
    assert later.run(third, reservation=kept.reservation).result == "imported"
    assert imports_of(sandbox, "account", third.crm_id) == 1
