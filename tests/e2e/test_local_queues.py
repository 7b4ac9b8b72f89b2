"""The local SQS event sources, the event bus's routing and the schedules."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from crm_to_books_cli.local import LocalStack
from tests.e2e.helpers import MAX_RECEIVE_COUNT, Logs, wait_until


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def send_batch(stack: LocalStack, kind: str, *orders: dict[str, Any]) -> list[str]:
    entries = [
        {
            "Id": str(i),
            "MessageBody": json.dumps(order),
            "MessageAttributes": {"origin": {"DataType": "String", "StringValue": "e2e"}},
        }
        for i, order in enumerate(orders)
    ]
    answer = stack.client("sqs").send_message_batch(
        QueueUrl=stack.queue_urls[kind], Entries=entries
    )
    assert not answer.get("Failed")
    return [entry["MessageId"] for entry in sorted(answer["Successful"], key=lambda e: e["Id"])]


def dlq_bodies(stack: LocalStack, kind: str) -> list[dict[str, Any]]:
    answer = stack.client("sqs").receive_message(
        QueueUrl=stack.dlq_urls[kind], MaxNumberOfMessages=10, WaitTimeSeconds=1
    )
    return [json.loads(m["Body"]) for m in answer.get("Messages", [])]


def test_a_batch_deletes_its_successes_and_a_failing_message_reaches_the_dlq(
    fake_stack: LocalStack, fake_stack_logs: Logs
) -> None:
    # Given three messages sent together, the middle one failing every time
    good, bad, other = unique("good"), unique("bad"), unique("other")
    ids = send_batch(fake_stack, "item", {"id": good}, {"id": bad, "action": "fail"}, {"id": other})
    function = "e2e-fake-item-import"

    # Then they arrive as one batch, each as a real SQS record
    (first,) = fake_stack_logs.wait_for(function, id=good)
    assert sorted(first["batch"]) == sorted(ids)
    record = first["record"]
    assert record["messageId"] == ids[0]
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == "arn:aws:sqs:us-east-1:123456789012:e2e-fake-item-imports"
    assert record["awsRegion"] == "us-east-1"
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["attributes"]["SentTimestamp"].isdigit()
    assert record["md5OfBody"]
    assert record["messageAttributes"] == {
        "origin": {
            "stringValue": "e2e",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "String",
        }
    }

    # And the failing one comes back until its receives run out, then sits in the DLQ
    failures = fake_stack_logs.wait_for(function, count=MAX_RECEIVE_COUNT, id=bad, timeout=30)
    counts = [r["record"]["attributes"]["ApproximateReceiveCount"] for r in failures]
    assert counts == [str(n) for n in range(1, MAX_RECEIVE_COUNT + 1)]
    parked = wait_until(lambda: dlq_bodies(fake_stack, "item"), "the failed message in the DLQ")
    assert [body["id"] for body in parked] == [bad]

    # And the successes were deleted: never delivered again
    assert len(fake_stack_logs.records(function, id=good)) == 1
    assert len(fake_stack_logs.records(function, id=other)) == 1


def test_a_container_killed_mid_batch_loses_nothing(
    fake_stack: LocalStack, fake_stack_logs: Logs, tmp_path: Path
) -> None:
    # Given a batch whose second message kills the container the first time it is handled
    before, killer = unique("before"), unique("killer")
    send_batch(
        fake_stack,
        "contact",
        {"id": before},
        {"id": killer, "action": "exit_once", "marker": str(tmp_path / "exited")},
    )
    function = "e2e-fake-contact-import"
    (last_words,) = fake_stack_logs.wait_for(function, id=killer, where=lambda r: "exiting" in r)

    # Then the whole batch comes back after its visibility timeout and is handled in a new
    # container: both messages succeed, the first one a second time (at least once delivery)
    (done,) = fake_stack_logs.wait_for(function, id=killer, outcome="ok", timeout=30)
    assert done["pid"] != last_words["exiting"]
    assert done["record"]["attributes"]["ApproximateReceiveCount"] == "2"
    again = fake_stack_logs.wait_for(function, count=2, id=before, outcome="ok")
    assert [r["record"]["attributes"]["ApproximateReceiveCount"] for r in again] == ["1", "2"]
    assert last_words["exiting"] not in fake_stack.container_pids()


def test_import_requested_events_are_routed_to_their_kind_queue(
    fake_stack: LocalStack, fake_stack_logs: Logs
) -> None:
    vendor, contact, ignored = unique("vendor"), unique("contact"), unique("ignored")

    def event(detail_type: str, kind: str, marker: str) -> dict[str, str]:
        detail = {"kind": kind, "organization_id": "700100200", "crm_id": "1", "id": marker}
        return {
            "EventBusName": fake_stack.names.event_bus,
            "Source": "e2e.tests",
            "DetailType": detail_type,
            "Detail": json.dumps(detail),
        }

    answer = fake_stack.client("events").put_events(
        Entries=[
            event("Something Else", "vendor", ignored),
            event("Import Requested", "vendor", vendor),
            event("Import Requested", "contact", contact),
        ]
    )
    assert answer["FailedEntryCount"] == 0

    (received,) = fake_stack_logs.wait_for("e2e-fake-vendor-import", id=vendor)
    fake_stack_logs.wait_for("e2e-fake-contact-import", id=contact)
    assert len(received["batch"]) == 1  # the other event was not routed beside it
    assert not fake_stack_logs.records(id=ignored)
    body = received["body"]
    assert set(body) == {
        "version", "id", "detail-type", "source", "account", "time", "region", "resources",
        "detail",
    }  # fmt: skip
    assert (body["detail-type"], body["source"], body["account"]) == (
        "Import Requested",
        "e2e.tests",
        "123456789012",
    )


def test_the_schedules_fire_on_their_period_and_on_demand(
    fake_stack: LocalStack, fake_stack_logs: Logs
) -> None:
    # The token keeper's period is 1 s in the test stack
    fired = fake_stack_logs.wait_for("e2e-fake-token-keeper", count=2, timeout=10)
    event = fired[-1]["event"]
    assert (event["detail-type"], event["source"], event["detail"]) == (
        "Scheduled Event",
        "aws.scheduler",
        "{}",
    )
    assert event["resources"] == [
        "arn:aws:scheduler:us-east-1:123456789012:schedule/default/e2e-fake-token-keeper"
    ]

    # The re-drive job's is 5 minutes: fire it now
    invocation = fake_stack.fire("redrive")
    assert invocation.ok
    assert invocation.result["received"]["detail-type"] == "Scheduled Event"
