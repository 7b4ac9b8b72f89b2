"""A lane's imports that wait for their turn before any lease (their organization at its
per-minute limit) send their delayed copies together, one SendMessageBatch, and each original
message is deleted only once its copy is in the queue. Against the real engine and handler,
moto (IAM enforced: SendMessageBatch is authorized as sqs:SendMessage) and the Zoho sandbox."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from crm_to_books.ledger import epoch
from crm_to_books.models import Status
from crm_to_books.pipeline import Importer
from crm_to_books.settings import Organization
from functions.importer import handler as importer_fn
from tests.functional.conftest import ORG, OffsetClock
from tests.functional.test_engine_outcomes import request
from tests.support.lambda_events import LambdaContext, received_records, sqs_event

CONTEXT = LambdaContext()
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")


def counted_sqs(fail: set[str] | None = None) -> tuple[Any, Counter[str]]:
    """An SQS client for the handler whose calls are counted (and `fail`'s refused)."""
    client, seen = boto3.client("sqs"), Counter[str]()

    def count(model: Any, **_: Any) -> None:
        seen[model.name] += 1
        if fail and model.name in fail:
            raise ClientError({"Error": {"Code": "ServiceUnavailable"}}, model.name)

    client.meta.events.register("before-call.sqs", count)
    return client, seen


def crowded(importer: Importer, queue: str) -> None:
    """One call a minute, and this minute's spent on 7500: the container sees it crowded."""
    sqs = boto3.client("sqs")
    sqs.send_message(
        QueueUrl=queue, MessageBody=json.dumps({"organization_id": ORG, "crm_id": "7500"})
    )
    records = received_records(sqs, queue)
    answer = importer_fn.handler(sqs_event(*records), CONTEXT, importer=importer)
    assert answer == {"batchItemFailures": []}
    sqs.delete_message(QueueUrl=queue, ReceiptHandle=records[0]["receiptHandle"])  # as Lambda


def backlog(queue: str, n: int) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs")
    for i in range(n):
        body = json.dumps({"organization_id": ORG, "crm_id": str(7510 + i)})
        sqs.send_message(QueueUrl=queue, MessageBody=body, MessageGroupId=ORG)
    records = received_records(sqs, queue)
    assert len(records) == n
    return records


def counts(queue: str) -> tuple[int, int]:
    """Messages delayed (the copies), and in flight (the originals, until Lambda deletes them)."""
    got = boto3.client("sqs").get_queue_attributes(
        QueueUrl=queue,
        AttributeNames=[
            "ApproximateNumberOfMessagesDelayed",
            "ApproximateNumberOfMessagesNotVisible",
        ],
    )["Attributes"]
    return int(got["ApproximateNumberOfMessagesDelayed"]), int(
        got["ApproximateNumberOfMessagesNotVisible"]
    )


@pytest.fixture
def one_a_minute(new_importer: Any) -> Importer:
    return new_importer(
        import_kind="account",
        rate_window_seconds=60.0,
        organizations={ORG: Organization(requests_per_minute=1)},
    )


def test_a_lane_waiting_for_its_turns_sends_one_batch_of_copies(
    one_a_minute: Importer, queue: str
) -> None:
    crowded(one_a_minute, queue)
    records = backlog(queue, 6)
    client, calls = counted_sqs()

    answer = importer_fn.handler(sqs_event(*records), CONTEXT, importer=one_a_minute, sqs=client)

    assert answer == {"batchItemFailures": []}  # every original deleted: its copy holds it
    assert calls == {"SendMessageBatch": 1}
    assert counts(queue) == (6, 6)  # six copies delayed; the six originals Lambda deletes
    for i in range(6):  # nothing written: the record changes when the import is attempted
        assert one_a_minute.ledger.get(ORG, "account", str(7510 + i)) is None


def test_copies_that_cannot_be_sent_leave_their_originals_in_the_queue(
    one_a_minute: Importer, queue: str
) -> None:
    crowded(one_a_minute, queue)
    records = backlog(queue, 3)
    client, calls = counted_sqs(fail={"SendMessageBatch", "SendMessage"})

    answer = importer_fn.handler(sqs_event(*records), CONTEXT, importer=one_a_minute, sqs=client)

    # Each original is a batch item failure: the queue brings it back when its visibility
    # ends, with no record saying otherwise; nothing is lost, nothing sent twice.
    assert sorted(f["itemIdentifier"] for f in answer["batchItemFailures"]) == sorted(
        r["messageId"] for r in records
    )
    assert calls == {"SendMessageBatch": 1, "SendMessage": 3}
    assert counts(queue) == (0, 3)
    assert one_a_minute.ledger.get(ORG, "account", "7510") is None


def test_a_retry_whose_record_says_its_time_is_not_held_back(
    one_a_minute: Importer, queue: str, clock: OffsetClock
) -> None:
    # A retry's copy (marked): its record is told the new time right after its copy is sent,
    # so that copy goes at once, alone; the others of the lane still go together.
    from crm_to_books import batch
    from crm_to_books.ledger import Completion

    crowded(one_a_minute, queue)
    claim = one_a_minute.ledger.begin(request("account", "7510"), "earlier", 60, 30)
    one_a_minute.ledger.complete(claim, Completion(Status.RETRYING, next_attempt_at=1.0))  # type: ignore[arg-type]
    records = backlog(queue, 4)
    for record in records:
        if json.loads(record["body"])["crm_id"] == "7510":
            record["messageAttributes"][batch.TIME_KEPT_ATTRIBUTE] = {
                "stringValue": "1",
                "dataType": "String",
            }
    client, calls = counted_sqs()

    answer = importer_fn.handler(sqs_event(*records), CONTEXT, importer=one_a_minute, sqs=client)

    assert answer == {"batchItemFailures": []}
    assert calls == {"SendMessage": 1, "SendMessageBatch": 1}
    kept = one_a_minute.ledger.get(ORG, "account", "7510")
    assert kept and kept.status is Status.RETRYING and kept.next_attempt_at
    assert epoch(kept.next_attempt_at) > clock() + 30  # its turn, a window on; not the past
    assert counts(queue) == (4, 4)
