"""A backlog the limiter says may not be sent before midnight (its organization parked at its
daily cap) is parked together: one ledger transaction for a batch's records instead of a lease
and a park each, so it does not hold up other organizations' imports behind it in the queue.
Against the real engine and handler, moto (IAM enforced) and the Zoho sandbox."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest

from crm_to_books.ledger import Claim, Completion, epoch
from crm_to_books.limiter import next_utc_midnight
from crm_to_books.models import ImportError_, ImportRequest, Status
from crm_to_books.pipeline import Importer
from crm_to_books_cli.sandbox import ZohoSandbox
from functions.importer import handler as importer_fn
from tests.functional.conftest import ORG, OffsetClock
from tests.support.lambda_events import LambdaContext, received_records, sqs_event

CONTEXT = LambdaContext()
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")


@contextmanager
def dynamodb_calls(importer: Importer, table: str | None = None) -> Iterator[Counter[str]]:
    """The container's DynamoDB calls (to `table` only, if named), by operation."""
    seen: Counter[str] = Counter()

    def count(model: Any, params: dict[str, Any], **_: Any) -> None:
        tables = {params.get("TableName")} | {
            next(iter(w.values())).get("TableName") for w in params.get("TransactItems", [])
        }
        if table is None or table in tables:
            seen[model.name] += 1

    events = importer.ledger.client.meta.events
    events.register("before-call.dynamodb", count)
    try:
        yield seen
    finally:
        events.unregister("before-call.dynamodb", count)


def send(queue: str, *crm_ids: str) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs")
    for crm_id in crm_ids:
        sqs.send_message(
            QueueUrl=queue, MessageBody=json.dumps({"organization_id": ORG, "crm_id": crm_id})
        )
    records = received_records(sqs, queue)
    assert len(records) == len(crm_ids)
    return records


def zoho_imports(sandbox: ZohoSandbox) -> int:
    return sum(sum(n.values()) for n in sandbox.counters()["imports"].get(ORG, {}).values())


def at_the_daily_cap(importer: Importer, sandbox: ZohoSandbox, queue: str) -> None:
    """The day's one call spent on 7300; Zoho refuses 7301 (429 code 45): the limiter parks the
    organization until midnight, and this container saw it."""
    sandbox.set_limits(ORG, daily_limit=1)
    answer = importer_fn.handler(
        sqs_event(*send(queue, "7300", "7301")), CONTEXT, importer=importer
    )
    assert answer == {"batchItemFailures": []}
    assert importer.ledger.get(ORG, "account", "7300").status is Status.SUCCEEDED  # type: ignore[union-attr]
    refused = importer.ledger.get(ORG, "account", "7301")
    assert refused and refused.parked and refused.last_error
    assert refused.last_error.zoho_code == 45


def test_a_batch_at_the_daily_cap_is_parked_in_one_write_and_leaves_the_queue(
    importer: Importer, sandbox: ZohoSandbox, queue: str, clock: OffsetClock
) -> None:
    at_the_daily_cap(importer, sandbox, queue)
    importer.limiter.acquire(ORG, importer.settings.organization(ORG))  # the view: parked
    sent_to_zoho = zoho_imports(sandbox)
    backlog = [str(7310 + n) for n in range(10)]
    records = send(queue, *backlog)

    with dynamodb_calls(importer) as calls:
        answer = importer_fn.handler(sqs_event(*records), CONTEXT, importer=importer)

    assert answer == {"batchItemFailures": []}  # every message deleted: the ledger holds them
    assert calls == {"TransactWriteItems": 1}  # nothing else: not the limiter, not a lease
    assert zoho_imports(sandbox) == sent_to_zoho
    midnight = next_utc_midnight(importer.limiter.snapshot(ORG)["parked_until"] - 60)
    by_message = {r["messageId"]: json.loads(r["body"])["crm_id"] for r in records}
    for message_id, crm_id in by_message.items():
        record = importer.ledger.get(ORG, "account", crm_id)
        assert record is not None, crm_id
        assert record.status is Status.RETRYING and record.parked
        assert record.last_error and record.last_error.category == "rate_limited"
        assert "daily" in record.last_error.message
        assert record.next_attempt_at is not None
        assert abs(epoch(record.next_attempt_at) - midnight) < 1
        assert record.correlation_ids == [message_id]
        assert record.sources == ["sqs"]
    # The re-drive job owns them: after midnight it sends each back to the queue.
    clock.advance(midnight + 1 - clock())
    assert importer.redrive_due() == len(backlog) + 1  # and 7301, parked alone before
    sqs = boto3.client("sqs")
    back = received_records(sqs, queue) + received_records(sqs, queue)
    assert sorted(json.loads(r["body"])["crm_id"] for r in back) == sorted([*backlog, "7301"])


def test_the_lane_parks_the_rest_together_once_its_first_record_finds_the_park(
    importer: Importer, new_importer: Callable[..., Importer], sandbox: ZohoSandbox, queue: str
) -> None:
    at_the_daily_cap(importer, sandbox, queue)
    cold = new_importer(import_kind="account")  # never saw the organization's limiter item
    records = send(queue, *(str(7320 + n) for n in range(6)))

    with dynamodb_calls(cold) as counted:
        answer = importer_fn.handler(sqs_event(*records), CONTEXT, importer=cold)

    assert answer == {"batchItemFailures": []}
    # The first: a look at the limiter and at the shared token (a cold container), a lease, a
    # park; the five after it: one transaction.
    assert counted == {"GetItem": 2, "UpdateItem": 2, "TransactWriteItems": 1}
    for n in range(6):
        record = cold.ledger.get(ORG, "account", str(7320 + n))
        assert record and record.status is Status.RETRYING and record.parked, n


def test_a_record_imported_already_is_never_overwritten_and_the_others_park_together(
    importer: Importer, sandbox: ZohoSandbox, queue: str
) -> None:
    at_the_daily_cap(importer, sandbox, queue)
    importer.limiter.acquire(ORG, importer.settings.organization(ORG))
    before = importer.ledger.get(ORG, "account", "7300")
    records = send(queue, "7330", "7300", "7331")

    with dynamodb_calls(importer) as calls:
        answer = importer_fn.handler(sqs_event(*records), CONTEXT, importer=importer)

    assert answer == {"batchItemFailures": []}
    after = importer.ledger.get(ORG, "account", "7300")
    assert after == before  # succeeded, its Books id, untouched
    for crm_id in ("7330", "7331"):
        record = importer.ledger.get(ORG, "account", crm_id)
        assert record and record.status is Status.RETRYING and record.parked, crm_id
    # Refused with 7300 (DynamoDB names it), written without it; 7300's own attempt finds it
    # imported (its lease refused).
    assert calls == {"TransactWriteItems": 2, "UpdateItem": 1}


# --- the ledger's write -------------------------------------------------------------------------
def park(importer: Importer, *crm_ids: str, correlation_id: str = "m") -> list[str]:
    until = importer.ledger._clock() + 6 * 3600
    done = Completion(
        Status.RETRYING,
        parked=True,
        next_attempt_at=until,
        error=ImportError_(message="the organization's daily limit is spent", category="x"),
        detail="Not sent to Zoho now.",
    )
    requests = [
        ImportRequest(
            kind="account", organization_id=ORG, crm_id=c, correlation_id=f"{correlation_id}-{c}"
        )
        for c in crm_ids
    ]
    parked = importer.ledger.park(requests, done, unless=("connection_broken", "scope_missing"))
    return [r.crm_id for r in parked]


def attempted(importer: Importer, crm_id: str, done: Completion, owner: str = "o") -> None:
    """An attempt of the record's own, ended as `done`."""
    request = ImportRequest(
        kind="account", organization_id=ORG, crm_id=crm_id, correlation_id=f"a-{owner}"
    )
    claim = importer.ledger.begin(request, owner, 60, 30)
    assert isinstance(claim, Claim)
    importer.ledger.complete(claim, done)


def test_park_keeps_what_the_record_counts_and_adds_the_request(importer: Importer) -> None:
    ledger = importer.ledger
    waited = Completion(
        Status.RETRYING, next_attempt_at=ledger._clock() + 5, zoho_calls=1, retries=1
    )
    attempted(importer, "7340", waited)

    assert park(importer, "7340", "7341") == ["7340", "7341"]

    before = ledger.get(ORG, "account", "7340")
    assert before and before.parked and before.status is Status.RETRYING
    assert before.attempts == 1 and before.last_error and before.last_error.category == "x"
    assert before.correlation_ids == ["a-o", "m-7340"]
    new = ledger.get(ORG, "account", "7341")
    assert new and new.parked and not new.needs_lookup and new.attempts == 0
    assert new.correlation_ids == ["m-7341"] and new.created_at


BLOCKERS = ["succeeded", "in_progress", "needs_lookup", "scope_missing", "full_history"]


@pytest.mark.parametrize("blocker", BLOCKERS)
def test_park_writes_the_others_and_leaves_a_record_it_may_not_park_to_its_own_attempt(
    importer: Importer, blocker: str
) -> None:
    ledger = importer.ledger
    later = ledger._clock() + 60
    if blocker == "succeeded":
        attempted(importer, "7350", Completion(Status.SUCCEEDED, books_id="46", zoho_calls=1))
    elif blocker == "in_progress":  # a live lease
        request = ImportRequest(kind="account", organization_id=ORG, crm_id="7350")
        assert isinstance(ledger.begin(request, "live", 600, 30), Claim)
    elif blocker == "needs_lookup":  # an earlier outcome unknown
        owed = Completion(Status.RETRYING, needs_lookup=True, lookup_after=later, zoho_calls=1)
        attempted(importer, "7350", owed)
    elif blocker == "scope_missing":  # its own record says what fixes it
        error = ImportError_(message="the token lacks a scope", category="scope_missing")
        attempted(
            importer,
            "7350",
            Completion(Status.RETRYING, parked=True, next_attempt_at=later, error=error),
        )
    else:  # each park appends a correlation id: 20 at most
        attempted(importer, "7350", Completion(Status.RETRYING, next_attempt_at=later))
        for n in range(19):
            assert park(importer, "7350", correlation_id=str(n)) == ["7350"]
    before = ledger.get(ORG, "account", "7350")

    assert park(importer, "7351", "7350", "7352") == ["7351", "7352"]

    assert ledger.get(ORG, "account", "7350") == before
    for crm_id in ("7351", "7352"):
        record = ledger.get(ORG, "account", crm_id)
        assert record and record.parked, crm_id


def test_park_refuses_twins_rather_than_write_one_record_twice(importer: Importer) -> None:
    with pytest.raises(ValueError, match="distinct"):
        park(importer, "7360", "7360")


class _Refused:
    status_code = 400


@pytest.mark.parametrize("conflicts", [2, 99])
def test_a_conflict_is_tried_again_and_a_lasting_one_leaves_each_import_to_its_own_attempt(
    importer: Importer, sandbox: ZohoSandbox, queue: str, conflicts: int
) -> None:
    at_the_daily_cap(importer, sandbox, queue)
    importer.limiter.acquire(ORG, importer.settings.organization(ORG))
    records = send(queue, "7370", "7371", "7372")
    refused = [0]

    def conflict(model: Any, **_: Any) -> Any:
        if model.name != "TransactWriteItems" or refused[0] >= conflicts:
            return None
        refused[0] += 1
        reasons = [{"Code": "None"}, {"Code": "TransactionConflict"}, {"Code": "None"}]
        error = {"Code": "TransactionCanceledException", "Message": "conflict"}
        return _Refused(), {"Error": error, "CancellationReasons": reasons}

    events = importer.ledger.client.meta.events
    events.register_first("before-call.dynamodb", conflict)
    try:
        with dynamodb_calls(importer) as calls:
            answer = importer_fn.handler(sqs_event(*records), CONTEXT, importer=importer)
    finally:
        events.unregister("before-call.dynamodb", conflict)

    assert answer == {"batchItemFailures": []}
    if conflicts == 2:  # the third try writes them together
        assert refused[0] == 2 and calls == {"TransactWriteItems": 1}
    else:  # three tries, then a lease and a park each; three more after the first parked
        assert refused[0] == 6 and calls == {"UpdateItem": 6}
    for crm_id in ("7370", "7371", "7372"):
        record = importer.ledger.get(ORG, "account", crm_id)
        assert record and record.status is Status.RETRYING and record.parked, crm_id
        assert record.correlation_ids and len(record.correlation_ids) == 1
