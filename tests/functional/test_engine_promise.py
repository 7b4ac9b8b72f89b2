"""The core promise under the worst Zoho we could reproduce: never a duplicate in Books, never
an import without an owner, never an answer that claims what is not known.

One test per way a review broke it (issue 10); each failed on the engine before the fix.
Zoho keeps real time here; the engine's clock (`clock`) is moved past waits instead of sleeping.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from crm_to_books import batch, dynamo
from crm_to_books.ledger import AlreadySucceeded, Busy, epoch
from crm_to_books.models import ImportRequest, Status
from crm_to_books.pipeline import Importer
from crm_to_books.settings import Settings
from crm_to_books.tokens import ZOHO_TOKEN_WINDOW
from crm_to_books.topology import QUEUE_VISIBILITY_TIMEOUT_SECONDS
from crm_to_books_cli.sandbox import ZohoSandbox
from crm_to_books_cli.sandbox.testing import wait_until
from functions.importer import handler as importer_fn
from tests.functional.conftest import NAMES, ORG, OffsetClock, past_settle, put_connection
from tests.functional.test_engine_outcomes import imports_of, records_of, request
from tests.support.fake_importer import FakeSqs
from tests.support.lambda_events import LambdaContext, api_event, sqs_record

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")


def post(importer: Importer, kind: str, crm_id: str) -> dict[str, Any]:
    event = api_event("POST", f"/v1/crm/{kind}/{crm_id}/import", {"organization_id": ORG}, {})
    return importer_fn.handler(event, LambdaContext(), importer=importer)


def queue_depth(kind: str, aws_world: dict[str, Any]) -> int:
    answer = boto3.client("sqs").get_queue_attributes(
        QueueUrl=aws_world["queue_urls"][kind],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"],
    )["Attributes"]
    return int(answer["ApproximateNumberOfMessages"]) + int(
        answer["ApproximateNumberOfMessagesDelayed"]
    )


def connect_with(sandbox: ZohoSandbox, importer: Importer, scope: str) -> None:
    """The operator connects with a grant code for `scope` (comma-separated scopes)."""
    refresh, _ = importer.zoho.exchange_grant_code(
        sandbox.url, sandbox.client_id, sandbox.client_secret, sandbox.issue_grant_code(scope=scope)
    )
    put_connection(sandbox, refresh)


def committed_then_lost(sandbox: ZohoSandbox, importer: Importer, kind: str, crm_id: str) -> None:
    """An import Zoho made but whose answer was a 5xx: the ledger must owe a look-up."""
    sandbox.set_faults(fail_5xx_next=1, fail_5xx_after_commit=True, scope="imports")
    first = importer.run(request(kind, crm_id))
    assert first.result == "retry_later" and first.record.needs_lookup
    assert records_of(sandbox, kind, crm_id) == 1
    sandbox.clear_faults()


# --- 1. a look-up Zoho refuses for good keeps the look-up duty --------------------------------
@pytest.mark.parametrize("refusal", [400, 404])
def test_a_lookup_zoho_refuses_keeps_the_duty_and_the_import_is_never_sent_twice(
    refusal: int,
    sandbox: ZohoSandbox,
    new_importer: Callable[..., Importer],
    clock: OffsetClock,
    settings: Settings,
) -> None:
    # Given an import Zoho made unseen, and a Books that refuses the look-up's filter
    sandbox.configure(reimport="duplicate")
    crm_id = sandbox.crm_ids["account"][0]
    committed_then_lost(sandbox, new_importer(), "account", crm_id)
    sandbox.configure(lookup_refuses=refusal)

    # When it is tried again, by its own retry and by new requests
    clock.advance(past_settle(settings))
    retried = new_importer().run(request("account", crm_id))
    again = new_importer().run(request("account", crm_id, source="sqs"))

    # Then nothing is imported again, and the record says why and what to check
    for outcome in (retried, again):
        assert outcome.result == "retry_later" and outcome.parked
        assert outcome.record.status is Status.RETRYING and outcome.record.needs_lookup
        assert outcome.record.last_error
        assert outcome.record.last_error.category == "lookup_refused"
        assert f"zcrm_account_id={crm_id}" in (outcome.record.detail or "")
    assert records_of(sandbox, "account", crm_id) == 1

    # And once Books answers a look-up, it is found, not imported
    sandbox.configure(lookup_refuses=None)
    clock.advance(6 * 3600 + 1)
    done = new_importer().run(request("account", crm_id, source="redrive"))
    assert done.result == "imported" and "found in Books" in (done.record.detail or "")
    assert records_of(sandbox, "account", crm_id) == 1 and not done.record.needs_lookup


def test_a_lookup_without_the_read_scope_names_that_scope_and_resumes_after_connect(
    sandbox: ZohoSandbox,
    new_importer: Callable[..., Importer],
    clock: OffsetClock,
    settings: Settings,
) -> None:
    # Given a connection that may import contacts but not read them
    sandbox.configure(reimport="duplicate")
    importer = new_importer()
    connect_with(sandbox, importer, "ZohoBooks.contacts.CREATE")
    crm_id = sandbox.crm_ids["contact"][0]
    committed_then_lost(sandbox, new_importer(), "contact", crm_id)

    # When its look-up is due
    clock.advance(past_settle(settings))
    outcome = new_importer().run(request("contact", crm_id))

    # Then it is parked on the missing READ scope (not the CREATE one), with the fix
    assert outcome.result == "retry_later" and outcome.parked and outcome.record.needs_lookup
    assert outcome.record.last_error and outcome.record.last_error.category == "scope_missing"
    detail = outcome.record.detail or ""
    assert "ZohoBooks.contacts.READ" in detail and "crm-to-books connect" in detail
    assert "ZohoBooks.contacts.CREATE" not in detail
    assert records_of(sandbox, "contact", crm_id) == 1

    # When the operator connects with the scope: the token keeper sees the new refresh token,
    # the re-drive job resumes the import at once, and the look-up finds it
    connect_with(sandbox, importer, "ZohoBooks.fullaccess.all")
    new_importer().keep_tokens_fresh()
    assert new_importer().redrive_due() == 1
    done = new_importer().run(request("contact", crm_id, source="redrive"))
    assert done.result == "imported" and "found in Books" in (done.record.detail or "")
    assert records_of(sandbox, "contact", crm_id) == 1


# --- 2. no look-up while Zoho may still be committing ----------------------------------------
def test_no_lookup_or_import_runs_while_zoho_may_still_be_committing(
    sandbox: ZohoSandbox,
    new_importer: Callable[..., Importer],
    clock: OffsetClock,
    settings: Settings,
) -> None:
    # Given a Zoho that commits an import 2 s after the client gave up waiting (read 1 s)
    sandbox.configure(reimport="duplicate")
    sandbox.set_faults(commit_late_next=1, commit_late_seconds=2.0, scope="imports")
    crm_id = sandbox.crm_ids["vendor"][0]
    first = new_importer(zoho_read_timeout=1.0).run(request("vendor", crm_id))
    assert first.result == "retry_later" and first.record.needs_lookup
    calls_before = sandbox.counters()["books_requests"]

    # When the queue hands it back a few seconds later (the commit has not landed yet)
    clock.advance(5)
    early = new_importer().run(request("vendor", crm_id))

    # Then nothing is asked of Books: the settle time is not over
    assert early.result == "retry_later" and early.record.needs_lookup
    assert early.retry_after and early.retry_after > settings.lookup_settle_seconds - 10
    assert sandbox.counters()["books_requests"] == calls_before
    assert "looked up in Books" in (early.record.detail or "")

    # And after it, the late commit is found instead of imported a second time
    wait_until(lambda: records_of(sandbox, "vendor", crm_id) == 1, timeout=10)
    clock.advance(past_settle(settings))
    done = new_importer().run(request("vendor", crm_id))
    assert done.result == "imported" and "found in Books" in (done.record.detail or "")
    assert records_of(sandbox, "vendor", crm_id) == 1


def test_the_settle_time_is_a_setting_that_cannot_race_the_call_it_checks() -> None:
    from crm_to_books.errors import ConfigurationError
    from crm_to_books.topology import FUNCTION_TIMEOUT_SECONDS

    env = {
        "LEDGER_TABLE": "ledger",
        "STATE_TABLE": "state",
        "ORGANIZATIONS": json.dumps({ORG: {}}),
        "CONNECTIONS": json.dumps({"default": "secret"}),
    }
    default = Settings.from_env(env)
    assert default.lookup_settle_seconds >= 120
    assert default.lookup_settle_seconds > FUNCTION_TIMEOUT_SECONDS + default.zoho_read_timeout
    with pytest.raises(ConfigurationError, match="lookup_settle_seconds"):
        Settings.from_env({**env, "LOOKUP_SETTLE_SECONDS": "10", "ZOHO_READ_TIMEOUT": "12"})


# --- 3. a sync attempt that owes a look-up and meets a 429 keeps an owner ---------------------
def test_a_sync_import_that_owes_a_lookup_and_is_throttled_is_queued_and_says_what_is_known(
    sandbox: ZohoSandbox,
    new_importer: Callable[..., Importer],
    clock: OffsetClock,
    settings: Settings,
    aws_world: dict[str, Any],
) -> None:
    # Given a sync import Zoho made unseen (503 answered, a retry queued)
    sandbox.configure(reimport="duplicate")
    crm_id = sandbox.crm_ids["account"][1]
    importer = new_importer(import_kind="account")
    sandbox.set_faults(fail_5xx_next=1, fail_5xx_after_commit=True, scope="imports")
    assert post(importer, "account", crm_id)["statusCode"] == 503
    sandbox.clear_faults()
    queued_before = queue_depth("account", aws_world)

    # When the caller tries again after the settle time, and Zoho throttles the look-up (the
    # import above spent the organization's one call of Zoho's minute)
    sandbox.configure(rate_window_seconds=60)
    sandbox.set_limits(ORG, requests_per_minute=1)
    clock.advance(past_settle(settings))
    answer = post(new_importer(import_kind="account"), "account", crm_id)

    # Then the answer does not claim nothing was imported, and a message holds the import
    said = json.loads(answer["body"])
    assert answer["statusCode"] == 503, said
    assert "Nothing was imported" not in said["message"]
    assert "outcome is unknown" in said["message"] or "looked up" in said["message"]
    assert said["import"]["status"] == "retrying" and said["import"]["needs_lookup"]
    assert queue_depth("account", aws_world) == queued_before + 1
    assert records_of(sandbox, "account", crm_id) == 1


# --- 4. a missing scope spends one token request and parks only that kind ---------------------
def test_a_missing_scope_parks_its_kinds_spends_one_token_request_and_other_kinds_go_on(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    # Given a connection that may import items but not contacts
    connect_with(sandbox, new_importer(), "ZohoBooks.settings.CREATE,ZohoBooks.settings.READ")
    before = sandbox.counters()["token_requests"]["total"]  # the grant code exchange

    # When many account and vendor imports arrive, each in a fresh container
    wanted = [(kind, crm_id) for kind in ("account", "vendor") for crm_id in sandbox.crm_ids[kind]]
    outcomes = [new_importer().run(request(kind, crm_id)) for kind, crm_id in wanted]

    # Then they park on the scope, and 401s spent one token request beyond the first token
    for outcome in outcomes:
        assert outcome.result == "retry_later" and outcome.parked
        assert outcome.record.last_error
        assert outcome.record.last_error.category == "scope_missing"
        assert "ZohoBooks.contacts.CREATE" in (outcome.record.detail or "")
        assert "Zoho's limit" not in (outcome.record.detail or "")
    assert sandbox.counters()["token_requests"]["total"] - before <= 2

    # And an item import on the same connection goes through
    item = new_importer().run(request("item", sandbox.crm_ids["item"][0]))
    assert item.result == "imported"


# --- 5. a look-up match must be proven by the record's own fields -----------------------------
@pytest.mark.parametrize("kind", ["account", "vendor", "item"])
def test_a_books_record_that_does_not_prove_its_crm_id_is_never_taken_as_the_import(
    kind: str,
    sandbox: ZohoSandbox,
    new_importer: Callable[..., Importer],
    clock: OffsetClock,
    settings: Settings,
) -> None:
    # Given Books holds other records, and a Books that ignores the look-up's filter and
    # lists records without their zcrm_* fields
    for other_kind in ("account", "contact", "vendor", "item"):
        assert new_importer().run(request(other_kind, sandbox.crm_ids[other_kind][2])).result == (
            "imported"
        )
    crm_id = sandbox.crm_ids[kind][0]
    sandbox.set_faults(reset_before_next=1, scope="imports")  # never reached Zoho: unknown
    assert new_importer().run(request(kind, crm_id)).record.needs_lookup
    sandbox.configure(lookup_ignores_filter=True, lookup_rows_without_crm_id=True)

    # When its look-up runs
    clock.advance(past_settle(settings))
    outcome = new_importer().run(request(kind, crm_id))

    # Then no other record is taken for it: it is imported, under its own Books id
    assert outcome.result == "imported", outcome.record.detail
    assert "found in Books" not in (outcome.record.detail or "")
    assert records_of(sandbox, kind, crm_id) == 1 and imports_of(sandbox, kind, crm_id) == 1
    ledger = new_importer().ledger
    others = [ledger.get(ORG, k, sandbox.crm_ids[k][2]) for k in ("account", "contact", "vendor")]
    assert outcome.record.books_id not in {r.books_id for r in others if r}


# --- 6. an unrecognised token-endpoint answer is transient -----------------------------------
@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    handlers = [
        h
        for h in logging.getLogger("crm-to-books").handlers
        if isinstance(h, logging.StreamHandler)
    ]
    streams = [h.setStream(buffer) for h in handlers]
    yield buffer
    for h, stream in zip(handlers, streams, strict=True):
        h.setStream(stream)


@pytest.mark.parametrize("answer", ["unknown_error", "html_403", "html_429", "5xx"])
def test_an_unrecognised_token_endpoint_answer_is_retried_not_a_broken_connection(
    answer: str,
    sandbox: ZohoSandbox,
    new_importer: Callable[..., Importer],
    clock: OffsetClock,
    captured_logs: io.StringIO,
) -> None:
    sandbox.set_faults(token_fail_next=1, token_fail_answer=answer)
    crm_id = sandbox.crm_ids["item"][1]

    first = new_importer().run(request("item", crm_id))

    assert first.result == "retry_later" and first.record.last_error
    assert first.record.last_error.category != "connection_broken"
    assert [r["status"] for r in new_importer().keep_tokens_fresh()] != ["broken"]
    logged = captured_logs.getvalue()
    assert '"http_status"' in logged and "answer_excerpt" in logged
    for secret in (sandbox.client_secret, sandbox.refresh_token):
        assert secret not in logged
    # After its back-off, the connection works without an operator
    clock.advance(ZOHO_TOKEN_WINDOW + 1)
    assert new_importer().run(request("item", crm_id)).result == "imported"


# --- 7. the refresh lease outlives a slow token request, which is always counted --------------
def _slow_refresh(importer: Importer, clock: OffsetClock, seconds: float, meanwhile: Any) -> None:
    """The token request takes `seconds`; `meanwhile` runs while it is in flight."""
    real = importer.zoho.refresh

    def slow(creds: Any) -> Any:
        clock.advance(seconds)
        meanwhile()
        return real(creds)

    importer.zoho.refresh = slow  # type: ignore[method-assign]


def test_a_token_request_slower_than_the_old_lease_is_not_doubled_by_another_container(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer], clock: OffsetClock
) -> None:
    first = new_importer()
    other: list[Any] = []
    impatient = new_importer(token_wait_seconds=0.3)
    crm = sandbox.crm_ids["item"]
    _slow_refresh(first, clock, 16.0, lambda: other.append(impatient.run(request("item", crm[0]))))

    assert first.run(request("item", crm[1])).result == "imported"

    assert other[0].result == "retry_later"  # it waited for the token instead of asking Zoho
    assert sandbox.counters()["token_requests"]["total"] == 1


def test_every_token_request_sent_is_in_the_budget_even_if_its_lease_ran_out(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer], clock: OffsetClock
) -> None:
    first, second = new_importer(), new_importer()
    crm = sandbox.crm_ids["item"]
    _slow_refresh(first, clock, 60.0, lambda: second.run(request("item", crm[0])))

    first.run(request("item", crm[1]))

    sent = sandbox.counters()["token_requests"]["total"]
    item = boto3.client("dynamodb").get_item(
        TableName=NAMES.state_table, Key={"pk": {"S": "token#default"}}
    )["Item"]
    assert sent == 2 and len(dynamo.load(item)["refreshes"]) == sent  # type: ignore[index]


# --- 8. correlation ids stay bounded ---------------------------------------------------------
def test_correlation_ids_keep_the_newest_ten_however_often_a_waiting_record_is_asked_for(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    importer = new_importer()
    crm_id = sandbox.crm_ids["contact"][2]
    for n in range(40):
        importer.accept(request("contact", crm_id, correlation_id=f"caller-{n}"))

    raw = boto3.client("dynamodb").get_item(
        TableName=NAMES.ledger_table,
        Key={"pk": {"S": f"ORG#{ORG}"}, "sk": {"S": f"contact#{crm_id}"}},
    )["Item"]
    ids = dynamo.load(raw)["correlation_ids"]  # type: ignore[index]
    assert ids == [f"caller-{n}" for n in range(30, 40)]


# --- 9. concurrent sync callers get the one attempt's result -----------------------------------
def test_concurrent_sync_callers_of_one_record_all_get_its_result_not_a_503(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    sandbox.configure(reimport="duplicate")
    sandbox.set_faults(latency_seconds=0.5)
    crm_id = sandbox.crm_ids["account"][2]
    callers = [new_importer(import_kind="account") for _ in range(8)]
    start = threading.Barrier(len(callers))

    def call(importer: Importer) -> dict[str, Any]:
        start.wait()
        return post(importer, "account", crm_id)

    with ThreadPoolExecutor(len(callers)) as pool:
        answers = list(pool.map(call, callers))

    assert [a["statusCode"] for a in answers] == [200] * 8, [a["body"] for a in answers]
    ids = {json.loads(a["body"])["data"]["contact_id"] for a in answers}
    assert len(ids) == 1 and records_of(sandbox, "account", crm_id) == 1


# --- suspected, confirmed: a conflicting completion, leading zeros ----------------------------
def test_a_completion_that_conflicts_with_another_writer_is_retried_not_a_500(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    importer = new_importer()
    real = importer.ledger.client.transact_write_items
    conflicts = [2]

    def conflicting(**request: Any) -> Any:
        if conflicts[0]:
            conflicts[0] -= 1
            raise ClientError(
                {
                    "Error": {"Code": "TransactionCanceledException", "Message": "conflict"},
                    "CancellationReasons": [{"Code": "None"}, {"Code": "TransactionConflict"}],
                },
                "TransactWriteItems",
            )
        return real(**request)

    importer.ledger.client.transact_write_items = conflicting  # type: ignore[method-assign]
    crm_id = sandbox.crm_ids["item"][2]

    outcome = importer.run(request("item", crm_id))

    assert outcome.result == "imported" and conflicts == [0]
    assert importer.ledger.get(ORG, "item", crm_id).status is Status.SUCCEEDED  # type: ignore[union-attr]
    assert importer.limiter.snapshot(ORG)["in_flight"] == 0


def test_a_crm_id_with_leading_zeros_is_the_same_ledger_record(
    new_importer: Callable[..., Importer],
) -> None:
    importer = new_importer()
    for organization_id, crm_id in ((ORG, "0042"), ("00" + ORG, "42"), (ORG, "000000000000000042")):
        importer.accept(
            ImportRequest.parse(kind="contact", organization_id=organization_id, crm_id=crm_id)
        )

    records, _ = importer.ledger.list(ORG, kind="contact")
    assert [r.crm_id for r in records] == ["42"]


# --- found by the model-based test (tests/model), shrunk to scenarios -------------------------
class _Died(BaseException):
    """The container stops here: no `except Exception` runs, nothing after it happens."""


def test_a_sync_import_that_fails_unexpectedly_is_parked_for_the_redrive_job(
    sandbox: ZohoSandbox,
    new_importer: Callable[..., Importer],
    clock: OffsetClock,
    aws_world: dict[str, Any],
) -> None:
    # Given DynamoDB refusing the rate limiter past botocore's own retries
    importer = new_importer(import_kind="item")
    crm_id = sandbox.crm_ids["item"][0]

    def throttled(*_: Any, **__: Any) -> Any:
        raise ClientError(
            {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow"}},
            "PutItem",
        )

    importer.limiter.acquire = throttled  # type: ignore[method-assign]

    # When a synchronous caller asks, and is answered 500
    assert post(importer, "item", crm_id)["statusCode"] == 500

    # Then the record has an owner: parked, with its time, for the re-drive job
    record = new_importer().ledger.get(ORG, "item", crm_id)
    assert record and record.status is Status.RETRYING and record.parked
    assert record.next_attempt_at and queue_depth("item", aws_world) == 0
    clock.advance(61)
    assert new_importer().redrive_due() == 1
    assert queue_depth("item", aws_world) == 1


@pytest.mark.parametrize("dies_in", ["enqueue", "unpark"])
def test_a_redrive_job_that_dies_mid_record_leaves_it_owned(
    dies_in: str,
    sandbox: ZohoSandbox,
    new_importer: Callable[..., Importer],
    clock: OffsetClock,
    aws_world: dict[str, Any],
) -> None:
    # Given an import parked on a broken connection, due
    sandbox.revoke_refresh_token()
    crm_id = sandbox.crm_ids["contact"][0]
    assert new_importer().run(request("contact", crm_id)).parked
    clock.advance(301)
    job = new_importer()

    def dies(*_: Any, **__: Any) -> Any:
        raise _Died

    if dies_in == "enqueue":
        job.intake.enqueue = dies  # type: ignore[method-assign]
    else:
        job.ledger.unpark = dies  # type: ignore[method-assign]

    # When the re-drive job dies while sending its message, or right after
    with pytest.raises(_Died):
        job.redrive_due()

    # Then the record is still parked (the next run sends it), or its message holds it
    record = new_importer().ledger.get(ORG, "contact", crm_id)
    assert record and record.status is Status.RETRYING
    assert record.parked or queue_depth("contact", aws_world) == 1
    if dies_in == "unpark":
        assert record.parked and queue_depth("contact", aws_world) == 1  # owned twice: fine


def test_401s_after_the_refresh_token_is_revoked_park_on_the_connection_not_a_scope(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    # Given a connection with a live access token, whose refresh token is then revoked
    assert new_importer().run(request("account", sandbox.crm_ids["account"][0])).result == (
        "imported"
    )
    sandbox.revoke_refresh_token()  # its access tokens die with it

    # When imports meet 401s, one after the other
    outcomes = [
        new_importer().run(request("account", crm_id)) for crm_id in sandbox.crm_ids["account"][1:]
    ]

    # Then they park on the broken connection: no scope is blamed
    for outcome in outcomes:
        assert outcome.parked and outcome.record.last_error
        assert outcome.record.last_error.category == "connection_broken"


def test_a_message_that_cannot_be_told_when_makes_the_record_say_when_it_comes_back(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer], clock: OffsetClock
) -> None:
    # Given Zoho down for an import that came by SQS, and SQS refusing the visibility change
    sandbox.set_faults(reset_before_next=1, scope="imports")
    crm_id = sandbox.crm_ids["vendor"][1]
    importer = new_importer(import_kind="vendor")
    record = sqs_record({"organization_id": ORG, "crm_id": crm_id}, kind="vendor")
    failing = FakeSqs(fail=True)

    answer = batch.process_batch(
        {"Records": [record]},
        None,
        importer=importer,
        kind="vendor",
        sqs=failing,  # type: ignore[arg-type]
    )

    # Then the message comes back when its visibility ends, and the record says that, not 5 s
    assert answer == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    kept = importer.ledger.get(ORG, "vendor", crm_id)
    assert kept and kept.next_attempt_at
    assert epoch(kept.next_attempt_at) - clock() >= QUEUE_VISIBILITY_TIMEOUT_SECONDS - 5


def _crowded(settings: Settings, clock: OffsetClock) -> Importer:
    """An organization of one call a minute, whose minute's call is spent."""
    from crm_to_books.settings import Organization

    one = settings.model_copy(
        update={
            "rate_window_seconds": 60.0,
            "organizations": {ORG: Organization(requests_per_minute=1)},
            "import_kind": "account",
        }
    )
    importer = Importer(one, clock=clock)
    assert importer.run(request("account", "7401")).result == "imported"  # the minute's call
    return importer


def _retrying(importer: Importer, crm_id: str, due: float, in_dlq: bool = False) -> None:
    from crm_to_books.ledger import Completion

    claim = importer.ledger.begin(request("account", crm_id), "earlier", 60, 30)
    assert not isinstance(claim, (AlreadySucceeded, Busy))
    done = Completion(Status.RETRYING, next_attempt_at=due)
    done.in_dlq = in_dlq  # its message was dead-lettered (then sent back)
    importer.ledger.complete(claim, done)


def _kept_by_a_retry_copy(record: dict[str, Any]) -> None:
    record["messageAttributes"][batch.TIME_KEPT_ATTRIBUTE] = {
        "stringValue": "1",
        "dataType": "String",
    }


def _redelivered(record: dict[str, Any]) -> None:
    record["attributes"]["ApproximateReceiveCount"] = "2"


def _redriven(record: dict[str, Any]) -> None:
    record["messageAttributes"]["source"] = {"stringValue": "redrive", "dataType": "String"}


@pytest.mark.parametrize(
    "comes_back",
    [_kept_by_a_retry_copy, _redelivered, _redriven],
    ids=["a retry's copy", "a redelivery", "a re-drive"],
)
def test_a_retry_that_comes_back_to_a_crowded_organization_says_when_it_will_run(
    settings: Settings,
    clock: OffsetClock,
    aws_world: dict[str, Any],
    comes_back: Callable[[dict[str, Any]], None],
) -> None:
    # Found by the engine model (a random run, batches of 3): a `retrying` record whose message
    # comes back on time to an organization at its limit is sent again for its turn, a window
    # later; its record said the earlier time, then past, until that turn.
    importer = _crowded(settings, clock)
    due = clock() - 1  # an earlier attempt said "next attempt in 5 s", 6 s ago
    _retrying(importer, "7400", due, in_dlq=comes_back is _redelivered)
    message = sqs_record({"organization_id": ORG, "crm_id": "7400"})
    comes_back(message)
    sqs = FakeSqs()

    batch.process_batch(
        {"Records": [message]},
        LambdaContext(),  # type: ignore[arg-type]
        importer=importer,
        kind="account",
        sqs=sqs,  # type: ignore[arg-type]
    )

    (copy,) = sqs.sent  # its turn, about a window on
    back_at = clock() + int(copy["DelaySeconds"])
    assert back_at > due + 30
    record = importer.ledger.get(ORG, "account", "7400")
    assert record and record.status is Status.RETRYING and record.next_attempt_at
    assert back_at - 2 <= epoch(record.next_attempt_at) <= back_at + 2
    assert not record.parked and not record.in_dlq  # the copy in the queue owns it
    assert record.detail and "waits for its turn" in record.detail
    assert batch.TIME_KEPT_ATTRIBUTE in copy["MessageAttributes"] or comes_back is not (
        _kept_by_a_retry_copy
    )


def test_a_first_import_deferred_for_its_turn_writes_no_record(
    settings: Settings, clock: OffsetClock, aws_world: dict[str, Any]
) -> None:
    # The turn-first path exists to spare the ledger under contention: a first delivery with no
    # retry's mark reads and writes nothing, and leaves no record to say a time.
    importer = _crowded(settings, clock)
    sqs = FakeSqs()
    seen: list[str] = []

    def count(model: Any, params: dict[str, Any], **_: Any) -> None:
        if params.get("TableName") == importer.ledger._table or "TransactItems" in params:
            seen.append(model.name)  # the ledger's (the limiter's own item is another table)

    events = importer.ledger.client.meta.events
    events.register("before-call.dynamodb", count)
    try:
        batch.process_batch(
            {"Records": [sqs_record({"organization_id": ORG, "crm_id": "7402"})]},
            LambdaContext(),  # type: ignore[arg-type]
            importer=importer,
            kind="account",
            sqs=sqs,  # type: ignore[arg-type]
        )
    finally:
        events.unregister("before-call.dynamodb", count)

    (copy,) = sqs.sent
    assert int(copy["DelaySeconds"]) > 30
    assert batch.TIME_KEPT_ATTRIBUTE not in copy["MessageAttributes"]
    assert seen == []
    assert importer.ledger.get(ORG, "account", "7402") is None


def test_a_retry_whose_record_moved_on_is_left_as_it_is(
    settings: Settings, clock: OffsetClock, aws_world: dict[str, Any]
) -> None:
    # The mark says the record may keep a time; the record decides: one imported meanwhile (by
    # another message) or already saying a later time keeps what it says.
    importer = _crowded(settings, clock)
    later = clock() + 3600
    _retrying(importer, "7403", later)
    for crm_id in ("7401", "7403"):
        message = sqs_record({"organization_id": ORG, "crm_id": crm_id})
        _kept_by_a_retry_copy(message)
        batch.process_batch(
            {"Records": [message]},
            LambdaContext(),  # type: ignore[arg-type]
            importer=importer,
            kind="account",
            sqs=FakeSqs(),  # type: ignore[arg-type]
        )

    imported = importer.ledger.get(ORG, "account", "7401")
    assert imported and imported.status is Status.SUCCEEDED and imported.next_attempt_at is None
    waiting = importer.ledger.get(ORG, "account", "7403")
    assert (
        waiting
        and waiting.next_attempt_at
        and epoch(waiting.next_attempt_at) == pytest.approx(later, abs=1)
    )
