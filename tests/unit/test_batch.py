"""SQS batches against a fake importer and a fake SQS client: exact partial failures."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from crm_to_books import batch
from crm_to_books.limiter import Reservation
from crm_to_books.models import ImportError_, ImportRequest, Status
from crm_to_books.observability import logger
from crm_to_books.settings import Organization
from tests.support.fake_importer import ENDPOINT, ORG, FakeImporter, FakeSqs, make_settings
from tests.support.lambda_events import LambdaContext, eventbridge_body, sqs_event, sqs_record

ACCOUNT_QUEUE = f"{ENDPOINT}/123456789012/crm-to-books-account-imports"


@pytest.fixture
def importer() -> FakeImporter:
    return FakeImporter()


def run(importer: FakeImporter, *records: dict[str, Any], sqs: FakeSqs | None = None) -> Any:
    return batch.process_batch(
        sqs_event(*records),
        LambdaContext(),  # type: ignore[arg-type]
        importer=importer,
        kind="account",
        sqs=sqs or FakeSqs(),  # type: ignore[arg-type]
    )


def failures(response: Any) -> list[str]:
    return [f["itemIdentifier"] for f in response["batchItemFailures"]]


def test_a_mixed_batch_reports_only_the_retryable_record(importer: FakeImporter) -> None:
    importer.script("2002", result="retry_later", retry_after=42.3)
    good = sqs_record({"organization_id": ORG, "crm_id": "1001"}, message_id="good")
    bridged = sqs_record(eventbridge_body("account", ORG, "1002"), message_id="bridged")
    retry = sqs_record({"organization_id": ORG, "crm_id": "2002"}, message_id="retry")
    poison = [
        sqs_record("{not json", message_id="invalid-json"),
        sqs_record({"organization_id": ORG}, message_id="missing-field"),
        sqs_record({"organization_id": ORG, "crm_id": "1" * 20}, message_id="20-digits"),
        sqs_record(eventbridge_body("item", ORG, "3003"), message_id="wrong-kind"),
        sqs_record({"organization_id": "999", "crm_id": "4004"}, message_id="unknown-org"),
    ]
    sqs = FakeSqs()

    response = run(importer, good, poison[0], retry, *poison[1:], bridged, sqs=sqs)

    assert failures(response) == ["retry"]
    assert sqs.visibility == [
        {"QueueUrl": ACCOUNT_QUEUE, "ReceiptHandle": "handle-retry", "VisibilityTimeout": 43}
    ]
    ledger = importer.ledger.records
    assert ledger[(ORG, "account", "1001")].status == Status.SUCCEEDED
    assert ledger[(ORG, "account", "1002")].sources == ["eventbridge"]
    assert ledger[(ORG, "account", "2002")].status == Status.RETRYING
    # Poison: recorded where it names a key (under the kind it asked for), never imported.
    [(_, rejected)] = [c for c in importer.calls if c[0] == "reject"]
    assert rejected == (
        "item",
        ORG,
        "3003",
        "eventbridge",
        "detail.kind: this queue takes account imports, got 'item'",
    )
    failed = ledger[(ORG, "item", "3003")]
    assert failed.status == Status.FAILED and failed.last_error
    assert failed.last_error.category == "invalid"
    ran = [c[1][0].crm_id for c in importer.calls if c[0] == "run"]
    assert ran == ["1001", "2002", "1002"]


def test_a_permanent_zoho_failure_is_done_and_deleted(importer: FakeImporter) -> None:
    error = ImportError_(
        http_status=400, zoho_code=1002, message="no such record", category="permanent"
    )
    importer.script("1001", result="failed", error=error)
    response = run(importer, sqs_record({"organization_id": ORG, "crm_id": "1001"}))
    assert failures(response) == []
    assert importer.ledger.records[(ORG, "account", "1001")].status == Status.FAILED


def test_a_parked_import_is_deleted_for_the_redrive_job(importer: FakeImporter) -> None:
    importer.script("1001", result="retry_later", retry_after=50_000, parked=True)
    sqs = FakeSqs()
    response = run(importer, sqs_record({"organization_id": ORG, "crm_id": "1001"}), sqs=sqs)
    assert failures(response) == [] and sqs.visibility == []


def test_records_parked_together_are_deleted_without_an_attempt_of_their_own(
    importer: FakeImporter,
) -> None:
    for crm_id in ("2", "3"):
        importer.script(crm_id, parked_together=True)
    sqs = FakeSqs()
    records = [sqs_record({"organization_id": ORG, "crm_id": c}) for c in ("1", "2", "3", "4")]

    response = run(importer, *records, sqs=sqs)

    assert failures(response) == [] and sqs.visibility == [] and sqs.sent == []
    assert importer.park_asks == [["1", "2", "3", "4"]]  # the lane's records, before the first
    assert [r.crm_id for r, _ in (c[1] for c in importer.calls if c[0] == "run")] == ["1", "4"]


def test_if_parking_together_fails_each_record_takes_its_own_attempt(
    importer: FakeImporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(requests: Any) -> Any:
        raise RuntimeError("DynamoDB said something new")

    monkeypatch.setattr(importer, "park_known", broken)
    records = [sqs_record({"organization_id": ORG, "crm_id": c}) for c in ("1", "2")]

    response = run(importer, *records)

    assert failures(response) == []
    assert [c[1][0].crm_id for c in importer.calls if c[0] == "run"] == ["1", "2"]


def test_after_a_record_parks_the_lanes_rest_are_asked_about_again(
    importer: FakeImporter,
) -> None:
    importer.script("2", result="retry_later", retry_after=50_000, parked=True)
    importer.script("4", parked_together=True)
    held = Reservation(ORG, 1, 1_234_567, 1_795_000_061.5)
    turn = sqs_record({"organization_id": ORG, "crm_id": "5"})
    turn["messageAttributes"] = {
        batch.RESERVATION_ATTRIBUTE: {"stringValue": held.encode(), "dataType": "String"}
    }
    records = [sqs_record({"organization_id": ORG, "crm_id": c}) for c in ("2", "3", "4")]

    response = run(importer, *records, sqs_record("{not json"), turn)

    assert failures(response) == []
    # Not the one with a turn (it goes first), nor poison; again after 2 parked, but not 4.
    assert importer.park_asks == [["2", "3", "4"], ["3"]]
    ran = [c[1][0].crm_id for c in importer.calls if c[0] == "run"]
    assert ran == ["5", "2", "3"]


@pytest.mark.parametrize(("retry_after", "visibility"), [(None, 60), (0.2, 1), (10**6, 43170)])
def test_the_delay_is_rounded_up_and_capped_below_sqs_12_hours(
    importer: FakeImporter, retry_after: float | None, visibility: int
) -> None:
    importer.script("1001", result="retry_later", retry_after=retry_after)
    sqs = FakeSqs()
    run(importer, sqs_record({"organization_id": ORG, "crm_id": "1001"}), sqs=sqs)
    assert sqs.visibility[0]["VisibilityTimeout"] == visibility


def test_a_batch_where_every_record_waits_is_answered_not_raised(importer: FakeImporter) -> None:
    for crm_id in ("1", "2"):
        importer.script(crm_id, result="retry_later", retry_after=5)
    records = [sqs_record({"organization_id": ORG, "crm_id": c}, message_id=c) for c in "12"]
    assert failures(run(importer, *records)) == ["1", "2"]


def test_a_failed_visibility_change_still_reports_the_record(importer: FakeImporter) -> None:
    importer.script("1001", result="retry_later", retry_after=5)
    record = sqs_record({"organization_id": ORG, "crm_id": "1001"}, message_id="m")
    assert failures(run(importer, record, sqs=FakeSqs(fail=True))) == ["m"]


def test_an_unexpected_error_retries_that_record_and_spares_the_rest(
    importer: FakeImporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run = importer.run

    def flaky(request: Any, **options: Any) -> Any:
        if request.crm_id == "1":
            raise RuntimeError("DynamoDB throttled")
        return real_run(request, **options)

    monkeypatch.setattr(importer, "run", flaky)
    records = [sqs_record({"organization_id": ORG, "crm_id": c}, message_id=c) for c in "12"]
    assert failures(run(importer, *records)) == ["1"]
    assert importer.ledger.records[(ORG, "account", "2")].status == Status.SUCCEEDED


@pytest.mark.parametrize(("receive_count", "last"), [(1, False), (7, False), (8, True)])
def test_the_last_delivery_before_the_dlq_is_flagged_to_the_engine(
    importer: FakeImporter, receive_count: int, last: bool
) -> None:
    run(importer, sqs_record({"organization_id": ORG, "crm_id": "1"}, receive_count=receive_count))
    assert importer.calls[0][1][1] is last


def test_the_senders_correlation_id_follows_the_message(importer: FakeImporter) -> None:
    record = sqs_record({"organization_id": ORG, "crm_id": "1"}, correlation_id="order-42")
    run(importer, record)
    assert importer.calls[0][1][0].correlation_id == "order-42"


def test_a_rate_limited_record_is_sent_again_fresh_so_waiting_never_nears_the_dlq(
    importer: FakeImporter,
) -> None:
    importer.script("2002", result="retry_later", retry_after=37.2, rate_limited=True)
    record = sqs_record({"organization_id": ORG, "crm_id": "2002"}, message_id="throttled")
    record["attributes"]["ApproximateReceiveCount"] = "7"
    record["messageAttributes"] = {
        "correlation_id": {"stringValue": "corr-9", "dataType": "String"}
    }
    sqs = FakeSqs()

    response = run(importer, record, sqs=sqs)

    assert failures(response) == []  # the original is deleted...
    assert sqs.sent == [  # ...because an identical request waits in the queue, delayed
        {
            "QueueUrl": ACCOUNT_QUEUE,
            "MessageBody": record["body"],
            "DelaySeconds": 38,
            "MessageAttributes": {
                "correlation_id": {"DataType": "String", "StringValue": "corr-9"}
            },
            "MessageGroupId": ORG,  # the fair-queue tenant, read from the request
        }
    ]
    assert sqs.visibility == []


def test_if_the_copy_cannot_be_sent_the_original_comes_back_instead(
    importer: FakeImporter,
) -> None:
    importer.script("2002", result="retry_later", retry_after=5, rate_limited=True)
    record = sqs_record({"organization_id": ORG, "crm_id": "2002"}, message_id="throttled")

    response = run(importer, record, sqs=FakeSqs(fail=True))

    assert failures(response) == ["throttled"]


class _ShortOnTime(LambdaContext):
    def get_remaining_time_in_millis(self) -> int:
        return 5_000


def test_records_not_started_before_the_function_runs_out_of_time_are_requeued(
    importer: FakeImporter,
) -> None:
    records = [
        sqs_record({"organization_id": ORG, "crm_id": str(n)}, message_id=f"m{n}") for n in (1, 2)
    ]
    sqs = FakeSqs()

    response = batch.process_batch(
        sqs_event(*records),
        _ShortOnTime(),  # type: ignore[arg-type]
        importer=importer,  # type: ignore[arg-type]
        kind="account",
        sqs=sqs,  # type: ignore[arg-type]
    )

    assert failures(response) == []
    assert [m["DelaySeconds"] for m in sqs.sent] == [0, 0]
    assert [c for c in importer.calls if c[0] == "run"] == []


def test_a_record_requeued_unstarted_keeps_the_rate_slot_held_for_it(
    importer: FakeImporter,
) -> None:
    held = Reservation(ORG, 1, 1_234_567, 1_795_000_061.5)
    record = sqs_record({"organization_id": ORG, "crm_id": "1"})
    record["messageAttributes"] = {
        batch.RESERVATION_ATTRIBUTE: {"stringValue": held.encode(), "dataType": "String"}
    }
    sqs = FakeSqs()

    batch.process_batch(
        sqs_event(record),
        _ShortOnTime(),  # type: ignore[arg-type]
        importer=importer,  # type: ignore[arg-type]
        kind="account",
        sqs=sqs,  # type: ignore[arg-type]
    )

    assert sqs.sent[0]["MessageAttributes"] == {
        batch.RESERVATION_ATTRIBUTE: {"DataType": "String", "StringValue": held.encode()}
    }


def test_the_rate_slot_held_for_a_retry_travels_with_its_delayed_copy_and_back(
    importer: FakeImporter,
) -> None:
    held = Reservation(ORG, 3, 7_654_321, 1_795_000_061.5)
    importer.script(
        "2002", result="retry_later", retry_after=41, rate_limited=True, reservation=held
    )
    record = sqs_record({"organization_id": ORG, "crm_id": "2002"}, correlation_id="c-1")
    sqs = FakeSqs()

    run(importer, record, sqs=sqs)

    (copy,) = sqs.sent
    assert copy["DelaySeconds"] == 41
    assert copy["MessageAttributes"] == {
        "correlation_id": {"DataType": "String", "StringValue": "c-1"},
        batch.RESERVATION_ATTRIBUTE: {"DataType": "String", "StringValue": held.encode()},
    }
    # When the copy comes back, its import is given the slot held for it
    back = sqs_record({"organization_id": ORG, "crm_id": "2002"})
    back["messageAttributes"] = {
        name: {"stringValue": v["StringValue"], "dataType": v["DataType"]}
        for name, v in copy["MessageAttributes"].items()
    }
    importer.script("2002", result="imported")
    run(importer, back)
    assert importer.reservations == [None, held]


def test_a_copy_sent_for_another_reason_drops_a_reservation_it_no_longer_has(
    importer: FakeImporter,
) -> None:
    stale = Reservation(ORG, 3, 7_654_321, 1_795_000_061.5)
    importer.script("2002", result="retry_later", retry_after=9, rate_limited=True)
    record = sqs_record({"organization_id": ORG, "crm_id": "2002"})
    record["messageAttributes"] = {
        batch.RESERVATION_ATTRIBUTE: {"stringValue": stale.encode(), "dataType": "String"}
    }
    sqs = FakeSqs()

    run(importer, record, sqs=sqs)

    assert importer.reservations == [stale]
    assert sqs.sent[0]["MessageAttributes"] == {}


def test_a_made_up_reservation_attribute_gives_the_sender_nothing(importer: FakeImporter) -> None:
    record = sqs_record({"organization_id": ORG, "crm_id": "2002"})
    record["messageAttributes"] = {
        batch.RESERVATION_ATTRIBUTE: {"stringValue": "r1:0:abc:1", "dataType": "String"}
    }
    run(importer, record)
    assert importer.reservations == [None]


def test_the_records_with_a_turn_go_first_soonest_first(importer: FakeImporter) -> None:
    later = Reservation(ORG, 4, 4_567_890, 1_795_000_080.0)
    sooner = Reservation(ORG, 1, 1_234_567, 1_795_000_061.5)
    records = []
    for crm_id, turn in (("1", None), ("2", later), ("3", None), ("4", sooner)):
        record = sqs_record({"organization_id": ORG, "crm_id": crm_id}, message_id=f"m{crm_id}")
        if turn is not None:
            record["messageAttributes"] = {
                batch.RESERVATION_ATTRIBUTE: {"stringValue": turn.encode(), "dataType": "String"}
            }
        records.append(record)

    run(importer, *records)

    ran = [c[1][0].crm_id for c in importer.calls if c[0] == "run"]
    assert ran == ["4", "2", "1", "3"]  # then the others, as they came
    assert importer.reservations == [sooner, later, None, None]


ORGS = [str(700100201 + n) for n in range(5)]


class _MeetingImporter(FakeImporter):
    """Each import of `meet` waits until `n` of them are in flight at once (or fails after
    10 s); the others run through."""

    def __init__(self, n: int, meet: set[str] | None = None) -> None:
        super().__init__(make_settings(organizations={o: Organization() for o in [ORG, *ORGS]}))
        self.meeting = threading.Barrier(n, timeout=10)
        self.meet = meet
        self.in_flight: dict[str, int] = {}
        self.most_at_once: dict[str, int] = {}
        self._lock = threading.Lock()

    def run(self, request: ImportRequest, **kwargs: Any) -> Any:  # type: ignore[override]
        org = request.organization_id
        with self._lock:
            self.in_flight[org] = self.in_flight.get(org, 0) + 1
            self.most_at_once[org] = max(self.most_at_once.get(org, 0), self.in_flight[org])
        try:
            if self.meet is None or request.crm_id in self.meet:
                self.meeting.wait()
            return super().run(request, **kwargs)
        finally:
            with self._lock:
                self.in_flight[org] -= 1


@pytest.fixture
def info_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The service's log lines from INFO up (another suite may have raised the level)."""
    out = io.StringIO()
    monkeypatch.setattr(logger.registered_handler, "stream", out)
    level = logger.log_level
    logger.setLevel(logging.INFO)
    yield out
    logger.setLevel(level)


def test_a_batchs_organizations_are_imported_at_once_each_record_logging_as_its_own(
    info_logs: io.StringIO,
) -> None:
    out = info_logs
    # Each import waits for the three other organizations' to be in flight: one organization
    # after the other, the first would wait alone and fail.
    importer = _MeetingImporter(4)
    records = [
        sqs_record({"organization_id": ORGS[n], "crm_id": str(n)}, message_id=f"message-{n}")
        for n in range(4)
    ]

    response = run(importer, *records)

    assert failures(response) == []
    assert sorted(importer.ledger.records) == [(ORGS[n], "account", str(n)) for n in range(4)]
    done = [json.loads(line) for line in out.getvalue().splitlines() if "import done" in line]
    assert sorted((d["crm_id"], d["correlation_id"]) for d in done) == [
        (str(n), f"message-{n}") for n in range(4)
    ]


def test_one_organizations_records_take_turns_while_others_run_at_once() -> None:
    # Three records of one organization and one of another: the other's import meets the
    # first organization's imports in flight, but never two of the first at once.
    importer = _MeetingImporter(2, meet={"1", "9"})
    records = [
        sqs_record({"organization_id": ORG, "crm_id": str(n)}, message_id=f"m{n}")
        for n in (1, 2, 3)
    ]
    records.append(sqs_record({"organization_id": ORGS[0], "crm_id": "9"}, message_id="m9"))

    response = run(importer, *records)

    assert failures(response) == []
    assert importer.most_at_once == {ORG: 1, ORGS[0]: 1}
    ran = [
        c[1][0].crm_id for c in importer.calls if c[0] == "run" and c[1][0].organization_id == ORG
    ]
    assert ran == ["1", "2", "3"]  # in the batch's order


def test_records_failing_at_once_are_reported_in_the_batchs_order() -> None:
    importer = _MeetingImporter(5)
    for crm_id in ("5", "2", "4"):
        importer.script(crm_id, result="retry_later", retry_after=30)
    records = [
        sqs_record({"organization_id": ORGS[n - 1], "crm_id": str(n)}, message_id=f"m{n}")
        for n in range(1, 6)
    ]

    response = run(importer, *records)

    assert failures(response) == ["m2", "m4", "m5"]


def test_after_a_batch_the_handlers_thread_logs_under_no_records_correlation_id(
    importer: FakeImporter,
) -> None:
    run(importer, sqs_record({"organization_id": ORG, "crm_id": "1"}, message_id="m1"))

    assert "correlation_id" not in logger.thread_safe_get_current_keys()


def _back(copy: dict[str, Any], crm_id: str) -> dict[str, Any]:
    """The SQS record a copy becomes when the queue delivers it."""
    back = sqs_record({"organization_id": ORG, "crm_id": crm_id})
    back["messageAttributes"] = {
        name: {"stringValue": v["StringValue"], "dataType": v["DataType"]}
        for name, v in copy["MessageAttributes"].items()
    }
    return back


def test_a_retry_copy_whose_record_says_its_time_is_marked_and_stays_marked() -> None:
    # The engine asks for the mark when the record will say when the copy comes back; a copy
    # sent again for its turn keeps it, so its record can be told the new time then too.
    first = sqs_record({"organization_id": ORG, "crm_id": "2002"}, correlation_id="c-1")
    assert not batch.MessageHolder(FakeSqs(), SQSRecord(first)).keeps_a_time  # type: ignore[arg-type]
    sqs = FakeSqs()

    assert batch.MessageHolder(sqs, SQSRecord(first)).hold(5, True, keeps_a_time=True)  # type: ignore[arg-type]
    marked = batch.MessageHolder(sqs, SQSRecord(_back(sqs.sent[0], "2002")))  # type: ignore[arg-type]
    assert marked.keeps_a_time
    assert marked.hold(60, True)  # sent again for its turn

    again = sqs.sent[1]["MessageAttributes"]
    assert again[batch.TIME_KEPT_ATTRIBUTE] == {"DataType": "String", "StringValue": "1"}
    assert again["correlation_id"] == {"DataType": "String", "StringValue": "c-1"}


def test_a_redelivered_message_may_keep_a_time_and_a_plain_copy_is_not_marked() -> None:
    again = sqs_record({"organization_id": ORG, "crm_id": "2002"}, receive_count=2)
    assert batch.MessageHolder(FakeSqs(), SQSRecord(again)).keeps_a_time  # type: ignore[arg-type]
    sqs = FakeSqs()
    first = sqs_record({"organization_id": ORG, "crm_id": "2002"})
    assert batch.MessageHolder(sqs, SQSRecord(first)).hold(60, True)  # type: ignore[arg-type]
    assert sqs.sent[0]["MessageAttributes"] == {}


def _waiting_for_turns(importer: FakeImporter, n: int, **sqs: Any) -> tuple[Any, FakeSqs]:
    """A batch of `n` records of one organization, each waiting for its turn (nothing written)."""
    records = []
    for i in range(n):
        crm_id = str(3000 + i)
        importer.script(crm_id, result="retry_later", retry_after=41, rate_limited=True, later=True)
        records.append(sqs_record({"organization_id": ORG, "crm_id": crm_id}, message_id=crm_id))
    fake = FakeSqs(**sqs)
    return run(importer, *records, sqs=fake), fake


def test_a_lane_waiting_for_turns_sends_its_delayed_copies_together(
    importer: FakeImporter,
) -> None:
    response, sqs = _waiting_for_turns(importer, 10)

    assert failures(response) == []  # each original is deleted: its copy holds it
    assert sqs.batches == [10]  # one SendMessageBatch, no SendMessage
    assert sorted(json.loads(m["MessageBody"])["crm_id"] for m in sqs.sent) == [
        str(3000 + i) for i in range(10)
    ]
    assert {m["DelaySeconds"] for m in sqs.sent} <= {40, 41}  # from each hold, not the send
    assert {m.get("MessageGroupId") for m in sqs.sent} == {ORG}  # fair queues' tenant


def test_copies_sqs_refuses_in_the_batch_are_sent_alone(importer: FakeImporter) -> None:
    refused = [json.dumps({"organization_id": ORG, "crm_id": c}) for c in ("3001", "3004")]

    response, sqs = _waiting_for_turns(importer, 5, refuse=refused)

    assert failures(response) == []
    assert sqs.batches == [3]
    assert len(sqs.sent) == 5 and [m["MessageBody"] for m in sqs.sent[3:]] == refused


def test_copies_that_cannot_be_sent_leave_their_messages_in_the_queue(
    importer: FakeImporter,
) -> None:
    response, sqs = _waiting_for_turns(importer, 4, fail=True)

    # Not deleted: each comes back when its visibility ends (no record promised a time)
    assert sorted(failures(response)) == ["3000", "3001", "3002", "3003"]
    assert sqs.sent == []


def test_a_batch_call_that_fails_falls_back_to_one_send_each(importer: FakeImporter) -> None:
    response, sqs = _waiting_for_turns(importer, 3, fail_batches=True)

    assert failures(response) == []
    assert sqs.batches == [] and len(sqs.sent) == 3


def test_only_copies_nothing_waits_on_wait_for_the_lane(importer: FakeImporter) -> None:
    # A retry whose record says its time (the engine writes it after the hold) is sent at once;
    # a turn that writes nothing waits for the lane's end; eleven make two sends of the outbox.
    importer.script("2002", result="retry_later", retry_after=9, rate_limited=True)
    first = sqs_record({"organization_id": ORG, "crm_id": "2002"})
    records = [first]
    for i in range(11):
        crm_id = str(3000 + i)
        importer.script(crm_id, result="retry_later", retry_after=41, rate_limited=True, later=True)
        records.append(sqs_record({"organization_id": ORG, "crm_id": crm_id}))
    sqs = FakeSqs()

    run(importer, *records, sqs=sqs)

    assert json.loads(sqs.sent[0]["MessageBody"])["crm_id"] == "2002"
    assert sqs.batches == [10, 1]  # the eleventh at the lane's end
    assert len(sqs.sent) == 12


def test_a_delayed_copy_counts_its_delay_from_its_hold() -> None:
    now = [1_000.0]
    sqs = FakeSqs()
    outbox = batch._Outbox(sqs, clock=lambda: now[0])  # type: ignore[arg-type]
    send = {"QueueUrl": "q", "MessageBody": "{}", "MessageAttributes": {}}
    outbox.add({"messageId": "a"}, send, due=1_041.0)
    outbox.add({"messageId": "b"}, send, due=1_003.0)
    now[0] = 1_005.0  # the lane's other records took 5 s

    assert outbox.flush() == []
    assert [m["DelaySeconds"] for m in sqs.sent] == [36, 0]


def test_a_lane_whose_copies_cannot_be_sent_fails_only_its_own_records() -> None:
    # Two lanes at once; one organization's copies cannot be sent. Only its originals stay in
    # the queue (batch item failures); the other lane's copies are sent and its originals go.
    other = ORGS[0]
    importer = FakeImporter(
        make_settings(organizations={ORG: Organization(), other: Organization()})
    )
    records, unsendable = [], []
    for org in (ORG, other):
        for i in range(3):
            crm_id = f"{5000 + i}" if org == ORG else f"{6000 + i}"
            importer.script(
                crm_id, result="retry_later", retry_after=30, rate_limited=True, later=True
            )
            body = {"organization_id": org, "crm_id": crm_id}
            records.append(sqs_record(body, message_id=f"m-{crm_id}"))
            if org == ORG:
                unsendable.append(json.dumps(body))
    sqs = FakeSqs(unsendable=unsendable)

    response = run(importer, *records, sqs=sqs)

    assert sorted(failures(response)) == ["m-5000", "m-5001", "m-5002"]
    assert sorted(json.loads(m["MessageBody"])["crm_id"] for m in sqs.sent) == [
        "6000",
        "6001",
        "6002",
    ]


class _RunsAtSend(FakeSqs):
    """Notes how many imports had run when each batch of copies was sent."""

    def __init__(self, importer: FakeImporter) -> None:
        super().__init__()
        self._importer = importer
        self.runs_at_send: list[int] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.runs_at_send.append(sum(c[0] == "run" for c in self._importer.calls))
        return super().send_message_batch(QueueUrl, Entries)


@pytest.mark.parametrize(("wait", "runs"), [(1, 1), (41, 3)], ids=["due soon", "due later"])
def test_a_copy_due_soon_goes_before_the_lanes_next_record(
    importer: FakeImporter, wait: float, runs: int
) -> None:
    # A later record may wait on Zoho for seconds: a copy whose turn is that close is not held.
    importer.script("7001", result="retry_later", retry_after=wait, rate_limited=True, later=True)
    records = [sqs_record({"organization_id": ORG, "crm_id": c}) for c in ("7001", "7002", "7003")]
    sqs = _RunsAtSend(importer)

    run(importer, *records, sqs=sqs)

    assert sqs.runs_at_send == [runs]
    assert json.loads(sqs.sent[0]["MessageBody"])["crm_id"] == "7001"
