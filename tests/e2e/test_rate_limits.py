"""An organization at its limit, through the local stack's real queues and poller: a burst of
queued imports bigger than Zoho's window allows waits for turns (rate slots held for each
waiting message, carried by its delayed copy), and every record still ends in Books once,
without a 429, a dead-lettered message or a window over the limit.

The stack is this module's own: a sandbox organization allowed 3 calls in a 6 s window and 2
at once (Zoho's 100 a minute and 10 at once, compressed), the service told the same.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from crm_to_books_cli.local import LocalStack
from crm_to_books_cli.local.stack import CONNECTION
from crm_to_books_cli.sandbox import SandboxConfig, ZohoSandbox
from crm_to_books_cli.sandbox.config import Organization
from tests.e2e.drive import queue_depth
from tests.e2e.helpers import Logs, own_stack, wait_until
from tests.e2e.test_service_imports import assert_imported_once, new_id, record

pytestmark = pytest.mark.timeout(180)

BUSY = Organization(
    organization_id="700100300",
    name="Sandbox Busy (3 calls in 6 s, 2 at once)",
    sync_modes=("accounts_and_contacts", "vendors", "products"),
    requests_per_minute=3,
    max_concurrency=2,
)
WINDOW = 6.0
BURST = 12  # four windows' worth


@pytest.fixture(scope="module")
def logs() -> Logs:
    return Logs()


@pytest.fixture(scope="module")
def stack(logs: Logs) -> Iterator[LocalStack]:
    limits = {"requests_per_minute": 3, "max_concurrency": 2}
    with own_stack(
        "e2e-limits",
        logs,
        settings={
            "rate_window_seconds": WINDOW,
            "attempt_lease_seconds": 15.0,
            "organizations": {BUSY.organization_id: {"connection": CONNECTION, **limits}},
        },
        sandbox=ZohoSandbox(
            port=0,
            config=SandboxConfig(
                auto_create_crm_records=True, organizations=(BUSY,), rate_window_seconds=WINDOW
            ),
        ),
    ) as stack:
        yield stack


def test_a_burst_over_the_limit_waits_for_turns_and_imports_each_record_once(
    stack: LocalStack, logs: Logs
) -> None:
    sandbox = stack.sandbox
    assert sandbox is not None
    organization_id = BUSY.organization_id
    crm_ids = [new_id() for _ in range(BURST)]
    sqs = stack.client("sqs")

    # When a burst of queued imports arrives at once, four times what a window allows
    started = time.monotonic()
    for first in range(0, BURST, 10):
        sqs.send_message_batch(
            QueueUrl=stack.queue_urls["contact"],
            Entries=[
                {
                    "Id": str(i),
                    "MessageBody": json.dumps(
                        {"organization_id": organization_id, "crm_id": crm_id}
                    ),
                }
                for i, crm_id in enumerate(crm_ids[first : first + 10])
            ],
        )

    # Then every record is imported, once, as fast as the limit allows (3 calls a window: the
    # last three start three windows after the first), with slack for a slow machine but none
    # for a minute-long wait
    def all_done() -> bool:
        return all(
            (found := record(stack, "contact", crm_id, organization_id)) is not None
            and found["status"] == "succeeded"
            for crm_id in crm_ids
        )

    wait_until(all_done, f"{BURST} contacts succeeded", timeout=120, interval=0.5)
    took = time.monotonic() - started
    for crm_id in crm_ids:
        assert_imported_once(stack, organization_id, "contact", crm_id)
    assert took < (BURST / 3) * WINDOW + 30, f"{BURST} imports took {took:.1f} s"

    # And Zoho never saw more than its limit in a window, nor said 429
    counters: dict[str, Any] = sandbox.counters()
    assert counters["max_requests_in_window"][organization_id] <= 3, counters
    assert counters["max_concurrency_seen"][organization_id] <= 2, counters
    assert not any(counters["responses_429"].values()), counters
    assert counters["duplicates"] == 0

    # And the waiting messages were given turns (a held slot, the time its call may start)
    turns = logs.records("e2e-limits-contact-import", message="import requeued")
    assert any("turn_at" in line for line in turns), turns
    # ... some of them, waiting before any lease, sent together (SendMessageBatch, through the
    # local stack's SQS and the function's role)
    assert any(line.get("together") is True for line in turns), turns
    # ... and none was lost to the DLQ on the way
    assert queue_depth(stack, stack.dlq_urls["contact"]) == 0


def test_a_backlog_at_the_daily_cap_is_parked_together_and_leaves_the_queue(
    stack: LocalStack, logs: Logs
) -> None:
    # Given the organization's day spent: Zoho answers its next import 429 code 45
    sandbox = stack.sandbox
    assert sandbox is not None
    organization_id = BUSY.organization_id
    spent = int(sandbox.counters()["daily_requests"].get(organization_id, 0))
    sandbox.set_limits(organization_id, daily_limit=max(spent, 1))
    sqs = stack.client("sqs")
    crm_ids = [new_id() for _ in range(10)]

    # When a backlog arrives in one batch
    sqs.send_message_batch(
        QueueUrl=stack.queue_urls["contact"],
        Entries=[
            {
                "Id": str(i),
                "MessageBody": json.dumps({"organization_id": organization_id, "crm_id": c}),
            }
            for i, c in enumerate(crm_ids)
        ],
    )

    # Then each is parked until midnight for the re-drive job, none imported, the queue empty
    def all_parked() -> bool:
        return all(
            (found := record(stack, "contact", crm_id, organization_id)) is not None
            and found["status"] == "retrying"
            and found["parked"]
            for crm_id in crm_ids
        )

    wait_until(all_parked, "10 contacts parked", timeout=60, interval=0.5)
    assert queue_depth(stack, stack.queue_urls["contact"]) == 0
    assert queue_depth(stack, stack.dlq_urls["contact"]) == 0
    imports = sandbox.counters()["imports"].get(organization_id, {}).get("contact", {})
    assert not any(imports.get(c) for c in crm_ids)
    # ... the first by its own attempt (Zoho said 429 code 45), the rest together with it
    together = logs.records("e2e-limits-contact-import", message="import parked", together=True)
    assert {line["crm_id"] for line in together} & set(crm_ids), together
