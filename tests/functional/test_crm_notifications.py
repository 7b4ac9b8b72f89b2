"""Zoho CRM notification channels and the hook, against moto and the sandbox's CRM: a channel
enabled at Zoho posts real notifications, which the hook verifies and queues; bad tokens, a
replay, a burst, other modules and operations; renewal, a lapsed channel and its gap; disable."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from crm_to_books import topology
from crm_to_books.crm_sync import CrmSync
from crm_to_books.hooks import CrmHooks
from crm_to_books.observability import metrics
from crm_to_books.pipeline import Importer
from crm_to_books.settings import Settings
from crm_to_books_cli.sandbox import ZohoSandbox
from crm_to_books_cli.sandbox.testing import NotifyReceiver, wait_until
from functions.crm_hooks import handler as hooks_fn
from functions.sweep import handler as sweep_fn
from tests.functional.conftest import NAMES, ORG, OffsetClock
from tests.functional.crm_world import books_records, crm_settings, import_all, queued, sources
from tests.support.iam import InProcess
from tests.support.lambda_events import LambdaContext, api_event, emitted_metrics

# The engine here is the sweep function's (the hook's calls go through its handler, imports
# through crm_world.import_all): each call is checked against that function's role.
pytestmark = pytest.mark.iam(plays="sweep")

DAY = 86_400


class Context(LambdaContext):
    def get_remaining_time_in_millis(self) -> int:
        return 120_000


Post = Callable[[Any], tuple[int, dict[str, Any]]]


@pytest.fixture(autouse=True)
def no_metrics_left_over() -> Iterator[None]:
    """Library calls outside a handler add metrics nobody flushes: not into these tests."""
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


@pytest.fixture
def crm(settings: Settings, sandbox: ZohoSandbox) -> Settings:
    return crm_settings(settings, sandbox)


@pytest.fixture
def engine(crm: Settings, clock: OffsetClock) -> Callable[[], CrmSync]:
    return lambda: CrmSync(crm, clock=clock, sleep=clock.advance)


@pytest.fixture
def receiver() -> Iterator[NotifyReceiver]:
    with NotifyReceiver() as r:
        yield r


@pytest.fixture
def post(crm: Settings) -> Post:
    """POST a body to /v1/hooks/zoho-crm through the hook function (a new container each
    time), as API Gateway would: (status, answer)."""

    def send(body: Any) -> tuple[int, dict[str, Any]]:
        event = api_event("POST", topology.HOOK_PATH, headers={"Content-Type": "application/json"})
        event["body"] = body if isinstance(body, str) else json.dumps(body)
        importer = Importer(crm)
        answer = hooks_fn.handler(
            event,
            LambdaContext(function_name="crm-to-books-crm-hooks"),
            importer=importer,
            hooks=CrmHooks(crm, importer.intake),
        )
        return answer["statusCode"], json.loads(answer["body"])

    return send


@pytest.fixture
def channel(
    engine: Callable[[], CrmSync], receiver: NotifyReceiver, clock: OffsetClock
) -> dict[str, Any]:
    answer = engine().handle(
        {"action": "watch_enable", "organization_id": ORG, "kinds": ["account", "contact"],
         "notify_url": receiver.url},
        time_left=60,
    )  # fmt: skip
    return dict(answer["channel"])


def notified(sandbox: ZohoSandbox, receiver: NotifyReceiver, count: int) -> list[dict[str, Any]]:
    sandbox.crm.wait_for_notifications(timeout=5)
    return receiver.wait_for(count)


def test_enable_registers_a_channel_at_zoho_and_keeps_its_token_secret(
    channel: dict[str, Any], sandbox: ZohoSandbox, receiver: NotifyReceiver
) -> None:
    watching = {(c["channel_id"], c["module"]) for c in sandbox.crm.channels()}
    assert watching == {(channel["channel_id"], "Accounts"), (channel["channel_id"], "Contacts")}
    assert channel["state"] == "active" and channel["expires_in_seconds"] > DAY - 700
    secret = boto3.client("secretsmanager").get_secret_value(
        SecretId=NAMES.channel_secret(channel["channel_id"])
    )
    stored = json.loads(secret["SecretString"])
    assert 32 <= len(stored["token"]) <= 50 and stored["kinds"] == ["account", "contact"]
    assert stored["token"] not in json.dumps(channel)


def test_each_created_or_changed_record_is_queued_from_its_notification(
    channel: dict[str, Any],
    sandbox: ZohoSandbox,
    receiver: NotifyReceiver,
    post: Post,
    aws_world: dict[str, Any],
) -> None:
    [created] = sandbox.crm.create_records("Accounts", [{"Account_Name": "Initech"}])
    sandbox.crm.update_record("Accounts", created["id"], Phone="555")
    bodies = notified(sandbox, receiver, 2)
    assert [b["operation"] for b in bodies] == ["insert", "update"]

    answers = [post(b) for b in bodies]

    assert answers == [(200, {"queued": 1, "ignored": {}})] * 2
    assert set(sources(aws_world["queue_urls"]["account"])) == {"crm"}


def test_a_wrong_or_missing_token_or_unknown_channel_queues_nothing(
    channel: dict[str, Any],
    sandbox: ZohoSandbox,
    receiver: NotifyReceiver,
    post: Post,
    aws_world: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sandbox.crm.create_records("Accounts", [{"Account_Name": "Initech"}])
    [body] = notified(sandbox, receiver, 1)
    receiver_token = body["token"]

    # The right token with its last character changed (to another one: a random token can
    # end in any of them).
    last = "y" if receiver_token.endswith("x") else "x"
    wrong = post({**body, "token": receiver_token[:-1] + last})
    unknown = post({**body, "channel_id": "123456789"})
    missing = post({**body, "token": None})
    not_json = post("not json")
    huge = post({**body, "ids": ["1"] * 50_000})

    assert wrong[0] == unknown[0] == 403
    assert wrong == unknown  # the answer says nothing of which channels exist
    assert missing[0] == 401 and missing[1]["message"].startswith("token:")
    too_big = post({**body, "module": "x" * 300_000})
    assert not_json[0] == huge[0] == 400 and too_big[0] == 413
    assert not queued(aws_world["queue_urls"]["account"])
    out = capsys.readouterr().out
    assert receiver_token not in out
    refused = [line for line in out.splitlines() if '"CrmHookRefused"' in line and "_aws" in line]
    assert len(refused) == 6


def test_a_replayed_notification_is_imported_once(
    channel: dict[str, Any],
    sandbox: ZohoSandbox,
    receiver: NotifyReceiver,
    post: Post,
    crm: Settings,
    aws_world: dict[str, Any],
    iam: InProcess,
) -> None:
    [created] = sandbox.crm.create_records("Accounts", [{"Account_Name": "Initech"}])
    [body] = notified(sandbox, receiver, 1)
    for _ in range(2):
        assert post(body) == (200, {"queued": 1, "ignored": {}})
    messages = queued(aws_world["queue_urls"]["account"])
    assert messages == {created["id"]: 2}

    import_all(iam, crm, "account", messages.elements())

    assert books_records(sandbox, "account") == {created["id"]: 1}


def test_a_burst_of_a_hundred_records_is_one_notification_and_a_hundred_imports(
    channel: dict[str, Any],
    sandbox: ZohoSandbox,
    receiver: NotifyReceiver,
    post: Post,
    aws_world: dict[str, Any],
) -> None:
    created = sandbox.crm.create_records(
        "Contacts", [{"Last_Name": f"Burst {i}"} for i in range(100)]
    )
    [body] = notified(sandbox, receiver, 1)
    assert len(body["ids"]) == 100

    assert post(body) == (200, {"queued": 100, "ignored": {}})
    assert set(queued(aws_world["queue_urls"]["contact"])) == {r["id"] for r in created}


def test_deletes_other_modules_and_malformed_ids_are_ignored_and_counted(
    channel: dict[str, Any],
    sandbox: ZohoSandbox,
    receiver: NotifyReceiver,
    post: Post,
    aws_world: dict[str, Any],
) -> None:
    sandbox.crm.create_records("Accounts", [{"Account_Name": "Initech"}])
    [body] = notified(sandbox, receiver, 1)
    assert post({**body, "operation": "delete"}) == (200, {"queued": 0, "ignored": {"delete": 1}})
    assert post({**body, "module": "Vendors"}) == (
        200,
        {"queued": 0, "ignored": {"module_not_watched": 1}},
    )
    assert post({**body, "module": "Deals"}) == (
        200,
        {"queued": 0, "ignored": {"unknown_module": 1}},
    )
    bad_ids = [*body["ids"], "12ab", "", "1" * 20, True, None, "٣"]
    assert post({**body, "ids": bad_ids}) == (200, {"queued": 1, "ignored": {"malformed_id": 6}})
    assert sum(queued(aws_world["queue_urls"]["account"]).values()) == 1


def test_renewal_leaves_a_fresh_channel_alone_and_extends_one_nearing_its_end(
    channel: dict[str, Any],
    engine: Callable[[], CrmSync],
    sandbox: ZohoSandbox,
    clock: OffsetClock,
) -> None:
    calls = sandbox.crm.counters()["requests_by_api"]["watch"]
    fresh = engine().handle({"action": "renew_channels"}, time_left=60)
    assert [c["outcome"] for c in fresh["channels"]] == ["fresh"]
    assert sandbox.crm.counters()["requests_by_api"]["watch"] == calls  # Zoho not asked

    clock.advance(DAY - 5 * 3600)  # five hours left, by our clock
    renewed = engine().handle({"action": "renew_channels"}, time_left=60)

    [outcome] = renewed["channels"]
    assert outcome["outcome"] == "renewed"
    assert sandbox.crm.counters()["requests_by_api"]["watch"] == calls + 1


def test_a_lapsed_channel_is_enabled_again_and_its_gap_swept(
    engine: Callable[[], CrmSync],
    sandbox: ZohoSandbox,
    receiver: NotifyReceiver,
    post: Post,
    aws_world: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Zoho grants only 2 s (its default when it does not take the expiry asked for).
    sandbox.crm.configure(channel_max_seconds=3600, channel_default_seconds=2)
    channel = engine().handle(
        {"action": "watch_enable", "organization_id": ORG, "kinds": ["account"],
         "notify_url": receiver.url},
        time_left=60,
    )["channel"]  # fmt: skip
    assert channel["expires_in_seconds"] <= 2
    wait_until(lambda: not sandbox.crm.channels(), timeout=10)  # it lapsed at Zoho
    gap = sandbox.crm.create_records("Accounts", [{"Account_Name": f"Gap {i}"} for i in range(3)])
    sandbox.crm.wait_for_notifications(timeout=5)
    assert not receiver.bodies  # nobody was told

    answer = sweep_fn.handler(
        {"action": "renew_channels"}, Context(function_name="crm-to-books-sweep"), crm=engine()
    )

    [outcome] = answer["channels"]
    assert outcome["outcome"] == "re-enabled"
    [swept] = outcome["gap_sweeps"]
    assert swept["complete"] and swept["queued"] >= 3
    assert {r["id"] for r in gap} <= set(queued(aws_world["queue_urls"]["account"]))
    assert {c["channel_id"] for c in sandbox.crm.channels()} == {channel["channel_id"]}
    assert emitted_metrics(capsys.readouterr().out)["CrmChannelsLapsed"] == 1
    [status] = engine().handle({"action": "watch_status"}, time_left=10)["channels"]
    assert status["lapses"] == 1 and not status["pending_gap"]
    # The same token still verifies: notifications after the lapse are queued again.
    sandbox.crm.create_records("Accounts", [{"Account_Name": "After"}])
    [body] = notified(sandbox, receiver, 1)
    assert post(body) == (200, {"queued": 1, "ignored": {}})


def test_disable_removes_the_channel_at_zoho_and_its_token(
    channel: dict[str, Any],
    engine: Callable[[], CrmSync],
    sandbox: ZohoSandbox,
    receiver: NotifyReceiver,
    post: Post,
) -> None:
    sandbox.crm.create_records("Accounts", [{"Account_Name": "Before"}])
    [body] = notified(sandbox, receiver, 1)

    answer = engine().handle({"action": "watch_disable", "organization_id": ORG}, time_left=60)

    assert answer["channel"]["state"] == "disabled"
    assert not sandbox.crm.channels()
    assert post(body)[0] == 403
    assert engine().handle({"action": "watch_status"}, time_left=10)["channels"][0]["state"] == (
        "disabled"
    )


def test_watch_commands_refuse_bad_input_with_the_field_named(
    engine: Callable[[], CrmSync],
) -> None:
    sync = engine()
    assert sync.handle(
        {"action": "watch_enable", "organization_id": ORG, "kinds": ["deal"], "notify_url": "x"},
        time_left=10,
    )["error"]["message"].startswith("kinds.0:")
    assert (
        "notify_url"
        in sync.handle(
            {"action": "watch_enable", "organization_id": ORG, "notify_url": "ftp://x"},
            time_left=10,
        )["error"]["message"]
    )
    assert (
        sync.handle(
            {
                "action": "watch_enable",
                "organization_id": "999",
                "notify_url": "http://127.0.0.1/x",
            },
            time_left=10,
        )["error"]["code"]
        == 1101
    )
