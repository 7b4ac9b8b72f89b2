"""What the CRM trigger tests share: settings with CRM syncs, a sweep engine per "container",
reading what reached the queues, importing it."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3

from crm_to_books.models import ImportRequest
from crm_to_books.pipeline import Importer
from crm_to_books.settings import Organization, Settings, Sync
from crm_to_books_cli.sandbox import ZohoSandbox
from tests.functional.conftest import NAMES, ORG
from tests.support.iam import IMPORTER, InProcess

NO_LIMIT = {"requests_per_minute": 10_000, "daily_limit": 1_000_000, "max_concurrency": 50}


def crm_settings(settings: Settings, sandbox: ZohoSandbox, *syncs: Sync) -> Settings:
    """`settings` with the CRM channel secrets' prefix, `syncs`, and Books limits out of the
    way (these tests are about which imports are queued, not about Books' pace)."""
    for org in sandbox.organizations:
        sandbox.set_limits(org, **NO_LIMIT)
    return Settings.model_validate(
        {
            **settings.model_dump(),
            "organizations": {org: Organization(**NO_LIMIT) for org in sandbox.organizations},
            "channel_secret_prefix": NAMES.channel_secret_prefix,
            "syncs": [s.model_dump() for s in syncs],
        }
    )


def queued(queue_url: str) -> Counter[str]:
    """Every import message waiting in the queue, by CRM id (they stay hidden afterwards)."""
    sqs = boto3.client("sqs")
    found: Counter[str] = Counter()
    while True:
        got = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=3600
        ).get("Messages", [])
        if not got:
            return found
        found.update(json.loads(m["Body"])["crm_id"] for m in got)


def sources(queue_url: str) -> list[str]:
    sqs = boto3.client("sqs")
    got = sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=10,
        VisibilityTimeout=3600,
        MessageAttributeNames=["All"],
    ).get("Messages", [])
    return [m["MessageAttributes"]["source"]["StringValue"] for m in got]


def import_all(
    iam: InProcess, settings: Settings, kind: str, crm_ids: Iterable[str], org: str = ORG
) -> None:
    """Import each message's id as the kind's function would (with its role: `iam`, the test's
    fixture), four containers at a time; a message told to retry later comes back (as from the
    queue) until it is done."""
    local = threading.local()

    def one(crm_id: str) -> tuple[str, str]:
        if not hasattr(local, "importer"):
            local.importer = Importer(settings)
        request = ImportRequest(kind=kind, organization_id=org, crm_id=crm_id, source="schedule")
        return crm_id, str(local.importer.run(request).result)

    todo = list(crm_ids)
    for _ in range(10):
        with iam.playing(IMPORTER), ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(one, todo))
        assert {r for _, r in results} <= {"imported", "already_imported", "retry_later"}
        todo = [crm_id for crm_id, r in results if r == "retry_later"]
        if not todo:
            return
    raise AssertionError(f"{len(todo)} imports still waiting")


def books_records(sandbox: ZohoSandbox, kind: str, org: str = ORG) -> dict[str, Any]:
    """CRM id -> Books records made from it."""
    return dict(sandbox.counters()["books_records"].get(org, {}).get(kind, {}))
