"""Functional set-up: moto stands in for AWS, the Zoho sandbox for Zoho."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.core.botocore_stubber import BotocoreStubber

from crm_to_books import aws
from crm_to_books import topology as t
from crm_to_books.entities import KINDS
from crm_to_books.pipeline import Importer
from crm_to_books.settings import Organization, Settings
from crm_to_books_cli.sandbox import SandboxConfig, ZohoSandbox

NAMES = t.Names()
ORG = "700100200"  # the sandbox's organization with every sync mode
ACCOUNTS_ONLY_ORG = "700100201"
WINDOW = 2.0  # a compressed "minute", for the limiter and the sandbox alike


def create_tables(client: Any) -> None:
    keys = (t.LEDGER_PARTITION_KEY, t.LEDGER_SORT_KEY)
    index_keys = (t.LEDGER_STATUS_INDEX_PARTITION_KEY, t.LEDGER_STATUS_INDEX_SORT_KEY)
    client.create_table(
        TableName=NAMES.ledger_table,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[
            {"AttributeName": keys[0], "KeyType": "HASH"},
            {"AttributeName": keys[1], "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": k, "AttributeType": "S"} for k in keys + index_keys
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": t.LEDGER_STATUS_INDEX,
                "KeySchema": [
                    {"AttributeName": index_keys[0], "KeyType": "HASH"},
                    {"AttributeName": index_keys[1], "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )
    client.create_table(
        TableName=NAMES.state_table,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": t.STATE_PARTITION_KEY, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": t.STATE_PARTITION_KEY, "AttributeType": "S"}],
    )


@pytest.fixture
def sandbox() -> Iterator[ZohoSandbox]:
    config = SandboxConfig(rate_window_seconds=WINDOW)
    with ZohoSandbox(port=0, config=config) as sb:
        yield sb


_MOTO_LOCK = threading.RLock()


@pytest.fixture
def aws_world(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """moto with the stack's tables, queues, bus; clients cached by the library reset.

    moto's in-process backends are not thread-safe (a transaction deep-copies tables while
    another thread writes), so requests are served one at a time, as moto server does.
    """
    original = BotocoreStubber.process_request

    def serialized(self: BotocoreStubber, request: Any) -> Any:
        with _MOTO_LOCK:
            return original(self, request)

    monkeypatch.setattr(BotocoreStubber, "process_request", serialized)
    aws.reset()
    with mock_aws():
        create_tables(boto3.client("dynamodb"))
        sqs = boto3.client("sqs")
        urls = {k: sqs.create_queue(QueueName=NAMES.queue(k))["QueueUrl"] for k in KINDS}
        events = boto3.client("events")
        events.create_event_bus(Name=NAMES.event_bus)
        yield {"queue_urls": urls}
    aws.reset()


def put_connection(sandbox: ZohoSandbox, refresh_token: str | None = None) -> str:
    name = NAMES.connection_secret("default")
    value = json.dumps(
        {
            "client_id": sandbox.client_id,
            "client_secret": sandbox.client_secret,
            "refresh_token": refresh_token or sandbox.refresh_token,
            "accounts_url": sandbox.url,
        }
    )
    client = boto3.client("secretsmanager")
    try:
        client.put_secret_value(SecretId=name, SecretString=value)
    except client.exceptions.ResourceNotFoundException:
        client.create_secret(Name=name, SecretString=value)
    return name


@pytest.fixture
def settings(sandbox: ZohoSandbox, aws_world: dict[str, Any]) -> Settings:
    secret = put_connection(sandbox)
    return Settings(
        ledger_table=NAMES.ledger_table,
        state_table=NAMES.state_table,
        event_bus_name=NAMES.event_bus,
        organizations={org: Organization() for org in sandbox.organizations},
        connections={"default": secret},
        queue_urls=aws_world["queue_urls"],
        rate_window_seconds=WINDOW,
        zoho_read_timeout=2.0,
    )


@pytest.fixture
def new_importer(settings: Settings) -> Callable[..., Importer]:
    """A fresh Importer is a fresh Lambda container: empty memory, shared AWS and Zoho."""

    def make(**overrides: Any) -> Importer:
        s = settings.model_copy(update=overrides) if overrides else settings
        return Importer(s)

    return make
