"""Functional set-up: moto stands in for AWS, the Zoho sandbox for Zoho."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.core.botocore_stubber import BotocoreStubber

from crm_to_books import topology as t
from crm_to_books.entities import KINDS
from crm_to_books.pipeline import Importer
from crm_to_books.settings import Organization, Settings
from crm_to_books_cli.iam.synth import local_config
from crm_to_books_cli.local.emulator import forget_library_clients
from crm_to_books_cli.sandbox import SandboxConfig, ZohoSandbox
from tests.support import iam as iam_support

NAMES = t.Names()
ORG = "700100200"  # the sandbox's organization with every sync mode
ACCOUNTS_ONLY_ORG = "700100201"
WINDOW = 2.0  # a compressed "minute", for the limiter and the sandbox alike


# The stack these tests stand for: its default prefix, the sandbox's organizations on the
# connection `default` (what `settings` below configures).
IAM = iam_support.in_process(
    local_config(
        NAMES.prefix,
        {o.organization_id: Organization().model_dump() for o in SandboxConfig().organizations},
        ["default"],
    )
)


@pytest.fixture(autouse=True)
def iam(request: pytest.FixtureRequest) -> Iterator[iam_support.InProcess]:
    """Each AWS call the engine makes is checked against the role of the function it plays
    (tests/support/iam.py): `@pytest.mark.iam(plays=...)` names it; `iam.off()` lets a test's
    own set-up through engine code pass."""
    marker = request.node.get_closest_marker("iam")
    options = dict(marker.kwargs) if marker else {}
    IAM.revoked = iam_support.revocations(request.config)
    enforce = options.get("enforce", True) and not request.config.getoption("--no-iam")
    plays = options.get("plays", iam_support.IMPORTER)
    with IAM.enforcing(plays, enforce, options.get("record", True)):
        yield IAM


def create_tables(client: Any) -> None:
    for name, spec in NAMES.tables.items():
        client.create_table(**spec.create_table_request(name))


@pytest.fixture
def sandbox() -> Iterator[ZohoSandbox]:
    # These tests are about the engine and handlers: any id they make up is a CRM record.
    config = SandboxConfig(rate_window_seconds=WINDOW, auto_create_crm_records=True)
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
    forget_library_clients()
    with mock_aws():
        create_tables(boto3.client("dynamodb"))
        sqs = boto3.client("sqs")
        urls = {k: sqs.create_queue(QueueName=NAMES.queue(k))["QueueUrl"] for k in KINDS}
        events = boto3.client("events")
        events.create_event_bus(Name=NAMES.event_bus)
        yield {"queue_urls": urls}
    forget_library_clients()


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


class OffsetClock:
    """The real clock, moved on by `advance` (Zoho's side keeps real time: only what the
    engine believes about time jumps, e.g. past the settle time after an unknown outcome)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock() -> OffsetClock:
    return OffsetClock()


def past_settle(settings: Settings) -> float:
    """Seconds after which an unknown outcome may be looked up."""
    return settings.lookup_settle_seconds + 1


@pytest.fixture
def new_importer(settings: Settings, clock: OffsetClock) -> Callable[..., Importer]:
    """A fresh Importer is a fresh Lambda container: empty memory, shared AWS and Zoho, and
    the test's clock."""

    def make(**overrides: Any) -> Importer:
        s = settings.model_copy(update=overrides) if overrides else settings
        return Importer(s, clock=clock)

    return make


@pytest.fixture
def importer(new_importer: Callable[..., Importer]) -> Importer:
    """A container of the account import function."""
    return new_importer(import_kind="account")


@pytest.fixture
def queue(aws_world: dict[str, Any]) -> str:
    """The account imports' queue."""
    return str(aws_world["queue_urls"]["account"])
