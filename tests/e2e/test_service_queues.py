"""The real service's queue workers on the local stack: poison messages beside good ones, and a
worker killed in the middle of a batch."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

import pytest

from crm_to_books_cli.local import LocalStack
from tests.e2e.drive import queue_depth
from tests.e2e.helpers import Logs, wait_until
from tests.e2e.test_service_imports import (
    books_records,
    new_id,
    org,
    record,
    wait_for_status,
    zoho_imports,
)


@pytest.mark.timeout(60)
def test_poison_messages_are_dropped_beside_good_ones(
    local_stack: LocalStack, local_stack_logs: Logs
) -> None:
    organization_id = org(local_stack)
    good, other_good, wrong_kind = new_id(), new_id(), new_id()
    queue = local_stack.queue_urls["vendor"]
    poison_seen = len(
        local_stack_logs.records("e2e-vendor-import", message="poison message deleted")
    )
    bodies = [
        json.dumps({"organization_id": organization_id, "crm_id": good}),
        "{not json",
        json.dumps({"organization_id": organization_id, "crm_id": "12345678901234567890"}),
        json.dumps({"kind": "item", "organization_id": organization_id, "crm_id": wrong_kind}),
        json.dumps({"organization_id": organization_id, "crm_id": other_good}),
    ]

    # When the poison arrives in the same batch as the good messages
    answer = local_stack.client("sqs").send_message_batch(
        QueueUrl=queue, Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies)]
    )
    assert not answer.get("Failed")

    # Then the good ones are imported
    for crm_id in (good, other_good):
        wait_for_status(local_stack, "vendor", crm_id, organization_id, "succeeded")

    # And the wrong-kind one is recorded failed, with the reason, where its sender will look
    refused = wait_for_status(local_stack, "item", wrong_kind, organization_id, "failed")
    assert refused["last_error"]["category"] == "invalid"
    assert refused["last_error"]["message"] == "kind: this queue takes vendor imports, got 'item'"
    assert refused["attempts"] == 0

    # And every message was deleted: nothing waits to come back, nothing reached the DLQ
    wait_until(lambda: queue_depth(local_stack, queue) == 0, "the vendor queue to be empty")
    assert queue_depth(local_stack, local_stack.dlq_urls["vendor"]) == 0
    logged = local_stack_logs.wait_for(
        "e2e-vendor-import", count=poison_seen + 3, message="poison message deleted"
    )
    reasons = sorted(r["reason"] for r in logged[poison_seen:])
    assert reasons == [
        "body: is not valid JSON",
        "crm_id: must be a string of 1 to 19 digits",
        "kind: this queue takes vendor imports, got 'item'",
    ]

    # And Zoho never heard of the poison
    for kind in ("vendor", "item"):
        assert zoho_imports(local_stack, organization_id, kind, wrong_kind) == 0
    assert record(local_stack, "vendor", wrong_kind, organization_id) is None


@pytest.fixture
def hanging_contact_imports(local_stack: LocalStack) -> Iterator[None]:
    """Contact imports wait in Zoho until released; a blind re-import would duplicate."""
    sandbox = local_stack.sandbox
    assert sandbox is not None
    sandbox.configure(reimport="duplicate")  # type: ignore[attr-defined]
    sandbox.set_faults(latency_seconds=60, scope="imports", kind="contact")  # type: ignore[attr-defined]
    try:
        yield
    finally:
        sandbox.clear_faults()  # type: ignore[attr-defined]
        sandbox.configure(reimport="return_existing")  # type: ignore[attr-defined]


@pytest.mark.timeout(90)
@pytest.mark.usefixtures("hanging_contact_imports")
def test_a_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing(
    local_stack: LocalStack,
) -> None:
    organization_id = org(local_stack)
    sandbox = local_stack.sandbox
    ids = [new_id() for _ in range(3)]
    entries = [
        {"Id": str(i), "MessageBody": json.dumps({"organization_id": organization_id, "crm_id": c})}
        for i, c in enumerate(ids)
    ]

    # Given a batch whose first import is under way in Zoho
    local_stack.client("sqs").send_message_batch(
        QueueUrl=local_stack.queue_urls["contact"], Entries=entries
    )
    wait_until(
        lambda: sandbox.counters()["in_flight"].get(organization_id),  # type: ignore[union-attr]
        "an import held in Zoho",
    )

    # When the worker running it dies. Only the busy container: the local runtime hands a
    # container killed while idle to the next invocation, which then fails (and costs the
    # messages a receive); the pool has no public "busy" view, hence `_idle`.
    assert local_stack.runtime is not None
    pool = local_stack.runtime.pools[local_stack.function_name("contact-import")]
    killed = sorted(set(pool.pids()) - {c.pid for c in pool._idle})
    assert killed
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    # ... and Zoho then completes the import it was holding: its outcome is unknown to the service
    sandbox.clear_faults()  # type: ignore[union-attr]

    # Then every message comes back and every record ends succeeded, with one Books record each:
    # the one in flight is looked up in Books (once its dead attempt's lease ends), not re-imported
    for crm_id in ids:
        try:
            done = wait_for_status(local_stack, "contact", crm_id, organization_id, "succeeded", 75)
        except AssertionError as exc:  # say where it got stuck
            dlq = queue_depth(local_stack, local_stack.dlq_urls["contact"])
            found = record(local_stack, "contact", crm_id, organization_id)
            raise AssertionError(f"{exc}; record {found}; contact DLQ holds {dlq}") from None
        assert done["books_id"]
        assert books_records(local_stack, organization_id, "contact", crm_id) == 1
    assert sandbox.counters()["duplicates"] == 0  # type: ignore[union-attr]
    assert not set(killed) & set(pool.pids())
    wait_until(
        lambda: queue_depth(local_stack, local_stack.queue_urls["contact"]) == 0,
        "the contact queue to be empty",
    )
    assert queue_depth(local_stack, local_stack.dlq_urls["contact"]) == 0
