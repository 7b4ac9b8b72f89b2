"""The per-kind import function, handler and decorators included, over HTTP and SQS, against
the real engine, moto and the Zoho sandbox (fixtures in tests/functional/conftest.py)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from crm_to_books import aws, topology
from crm_to_books.models import Status
from crm_to_books.pipeline import Importer
from crm_to_books.settings import Settings, get_settings
from crm_to_books.zoho import ZohoClient
from crm_to_books_cli.sandbox import ZohoSandbox
from functions.importer import handler as importer_fn
from functions.status_api import handler as status_fn
from tests.functional.conftest import ACCOUNTS_ONLY_ORG, NAMES, ORG
from tests.support.lambda_events import (
    LambdaContext,
    api_event,
    eventbridge_body,
    received_records,
    sqs_event,
)

CONTEXT = LambdaContext()
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")


def post(importer: Importer, kind: str, crm_id: str, **headers: str) -> dict[str, Any]:
    event = api_event("POST", f"/v1/crm/{kind}/{crm_id}/import", {"organization_id": ORG}, headers)
    return importer_fn.handler(event, CONTEXT, importer=importer)


def get(importer: Importer, path: str) -> dict[str, Any]:
    event = api_event("GET", path.split("?", maxsplit=1)[0], {"organization_id": ORG})
    return status_fn.handler(event, CONTEXT, importer=importer)


def body(answer: dict[str, Any]) -> dict[str, Any]:
    return json.loads(answer["body"])


def header(answer: dict[str, Any], name: str) -> str:
    return str(answer["multiValueHeaders"][name][0])


def imports_in_books(sandbox: ZohoSandbox, kind: str, crm_id: str) -> int:
    return int(sandbox.counters()["imports"].get(ORG, {}).get(kind, {}).get(crm_id, 0))


# --- HTTP ---------------------------------------------------------------------------------------
def test_a_sync_import_answers_200_with_zohos_data_and_imports_once(
    importer: Importer, sandbox: ZohoSandbox
) -> None:
    first = post(importer, "account", "5001")
    again = post(importer, "account", "5001")

    assert first["statusCode"] == again["statusCode"] == 200
    contact_id = body(first)["data"]["contact_id"]
    assert isinstance(contact_id, str) and contact_id.isdigit()
    assert body(first)["import"]["books_id"] == contact_id
    assert body(again)["data"] == {"contact_id": contact_id}
    assert imports_in_books(sandbox, "account", "5001") == 1


def test_an_item_import_answers_with_item_id(new_importer: Callable[..., Importer]) -> None:
    answer = post(new_importer(import_kind="item"), "item", "6001")
    assert answer["statusCode"] == 200 and body(answer)["data"]["item_id"].isdigit()


def test_a_record_missing_in_crm_is_a_422_with_zohos_code(
    importer: Importer, sandbox: ZohoSandbox
) -> None:
    answer = post(importer, "account", sandbox.crm_ids["missing"])

    assert answer["statusCode"] == 422
    refused = body(answer)
    assert refused["code"] == 1422 and refused["zoho"]["code"]
    assert refused["message"].startswith("Zoho refused the import: ")
    assert refused["message"].endswith("will not be retried.")
    assert refused["import"]["status"] == "failed"


def test_zoho_throttling_is_a_429_with_retry_after(
    importer: Importer, sandbox: ZohoSandbox, queue: str
) -> None:
    sandbox.set_limits(ORG, requests_per_minute=1)
    assert post(importer, "account", "5101")["statusCode"] == 200

    answer = post(importer, "account", "5102")

    assert answer["statusCode"] == 429
    assert int(header(answer, "Retry-After")) >= 1
    assert body(answer)["code"] == 1429 and "import" not in body(answer)
    assert _depth(queue) == 0  # the caller retries; nothing was queued or recorded
    assert importer.ledger.get(ORG, "account", "5102") is None


def test_zoho_down_is_a_503_and_the_import_is_queued_for_retry(
    importer: Importer, sandbox: ZohoSandbox, queue: str
) -> None:
    sandbox.set_faults(fail_5xx_next=1, fail_5xx_status=502)

    answer = post(importer, "account", "5201")

    assert answer["statusCode"] == 503
    assert int(header(answer, "Retry-After")) >= 1
    assert header(answer, "Location") == f"/prod/v1/imports/account/5201?organization_id={ORG}"
    assert body(answer)["code"] == 1503 and "queued" in body(answer)["message"]
    assert "may have imported it" in body(answer)["message"]  # it says what is not known
    assert _depth(queue) == 1


def test_respond_async_queues_then_the_queue_imports_and_the_location_tells(
    importer: Importer, sandbox: ZohoSandbox, queue: str
) -> None:
    accepted = post(
        importer, "account", "5301", Prefer="respond-async", **{"X-Correlation-Id": "order-77"}
    )
    assert accepted["statusCode"] == 202 and body(accepted)["import"]["status"] == "queued"
    location = header(accepted, "Location").removeprefix("/prod")
    assert body(get(importer, location))["import"]["status"] == "queued"
    assert imports_in_books(sandbox, "account", "5301") == 0

    records = received_records(boto3.client("sqs"), queue)
    answer = importer_fn.handler(sqs_event(*records), CONTEXT, importer=importer)

    assert answer == {"batchItemFailures": []}
    record = body(get(importer, location))["import"]
    assert record["status"] == "succeeded" and "order-77" in record["correlation_ids"]
    assert imports_in_books(sandbox, "account", "5301") == 1


def test_nothing_is_written_or_sent_for_a_refused_request(
    importer: Importer, sandbox: ZohoSandbox, queue: str
) -> None:
    for kind, crm_id, org in [
        ("account", "1" * 20, ORG),
        ("item", "1", ORG),
        ("account", "1", "9"),
    ]:
        event = api_event("POST", f"/v1/crm/{kind}/{crm_id}/import", {"organization_id": org})
        answer = importer_fn.handler(event, CONTEXT, importer=importer)
        assert answer["statusCode"] in (400, 403)
    assert importer.ledger.list(ORG) == ([], None) and importer.ledger.list("9") == ([], None)
    assert _depth(queue) == 0 and sandbox.counters()["token_requests"]["total"] == 0


# --- SQS ----------------------------------------------------------------------------------------
@pytest.fixture
def visibility_changes() -> Iterator[list[dict[str, Any]]]:
    """ChangeMessageVisibility calls as they reach moto (which checks the receipt handle)."""
    seen: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        seen.append(dict(params))

    client = aws.client("sqs")
    client.meta.events.register("provide-client-params.sqs.ChangeMessageVisibility", record)
    yield seen
    client.meta.events.unregister("provide-client-params.sqs.ChangeMessageVisibility", record)


def test_a_mixed_batch_imports_delays_and_drops_exactly_the_right_records(
    importer: Importer,
    sandbox: ZohoSandbox,
    queue: str,
    visibility_changes: list[dict[str, Any]],
) -> None:
    sqs = boto3.client("sqs")
    bodies = {
        "retry": json.dumps({"organization_id": ORG, "crm_id": "7001"}),
        "good": json.dumps({"organization_id": ORG, "crm_id": "7002"}),
        "bridged": eventbridge_body("account", ORG, "7003"),
        "invalid-json": '{"organization_id": "700100200", "crm_id": ',
        "missing-field": json.dumps({"organization_id": ORG}),
        "20-digits": json.dumps({"organization_id": ORG, "crm_id": "1" * 20}),
        "wrong-kind": eventbridge_body("item", ORG, "7004"),
    }
    for name, text in bodies.items():
        sqs.send_message(
            QueueUrl=queue,
            MessageBody=text,
            MessageAttributes={"test_name": {"DataType": "String", "StringValue": name}},
        )
    records = received_records(sqs, queue)
    by_name = {r["messageAttributes"]["test_name"]["stringValue"]: r for r in records}
    assert set(by_name) == set(bodies)
    # Zoho fails the retryable record's import (the batch's records are imported at once).
    sandbox.set_faults(fail_5xx_next=1, crm_id="7001")
    ordered = [by_name[name] for name in bodies]

    answer = importer_fn.handler(sqs_event(*ordered), CONTEXT, importer=importer)

    assert answer == {"batchItemFailures": [{"itemIdentifier": by_name["retry"]["messageId"]}]}
    [change] = visibility_changes
    assert change["QueueUrl"] == queue
    assert change["ReceiptHandle"] == by_name["retry"]["receiptHandle"]
    # The outcome is unknown: back when it may be looked up, the settle time after the send
    settle = importer.settings.lookup_settle_seconds
    assert settle - 5 <= change["VisibilityTimeout"] <= settle + 1
    ledger = importer.ledger
    retrying = ledger.get(ORG, "account", "7001")
    assert retrying and retrying.status is Status.RETRYING
    for crm_id in ("7002", "7003"):
        done = ledger.get(ORG, "account", crm_id)
        assert done and done.status is Status.SUCCEEDED
    poison = ledger.get(ORG, "item", "7004")
    assert poison and poison.status is Status.FAILED and poison.last_error
    assert poison.last_error.category == "invalid"
    assert "this queue takes account imports" in poison.last_error.message
    assert imports_in_books(sandbox, "item", "7004") == 0
    listed, _ = ledger.list(ORG)
    assert {(r.kind, r.crm_id) for r in listed} == {
        ("account", "7001"),
        ("account", "7002"),
        ("account", "7003"),
        ("item", "7004"),
    }


def test_a_batchs_organizations_import_at_once_sharing_one_token(
    importer: Importer, sandbox: ZohoSandbox, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each import holds Zoho for 0.3 s; the calls in flight at once are counted as they go.
    sandbox.set_faults(latency_seconds=0.3)
    in_flight: Counter[str] = Counter()
    most: Counter[str] = Counter()
    lock = threading.Lock()
    send = ZohoClient.import_record

    def counted(self: ZohoClient, *args: Any, **kwargs: Any) -> Any:
        org = kwargs.get("organization_id") or args[2]
        with lock:
            in_flight[org] += 1
            most[org] = max(most[org], in_flight[org])
            most["any"] = max(most["any"], in_flight.total() - in_flight["any"])
        try:
            return send(self, *args, **kwargs)
        finally:
            with lock:
                in_flight[org] -= 1

    monkeypatch.setattr(ZohoClient, "import_record", counted)
    sqs = boto3.client("sqs")
    wanted = [(org, f"{7100 + n}") for n in range(5) for org in (ORG, ACCOUNTS_ONLY_ORG)]
    for org, crm_id in wanted:
        body = json.dumps({"organization_id": org, "crm_id": crm_id})
        sqs.send_message(QueueUrl=queue, MessageBody=body)
    records = received_records(sqs, queue)
    assert len(records) == len(wanted)

    answer = importer_fn.handler(sqs_event(*records), CONTEXT, importer=importer)

    assert answer == {"batchItemFailures": []}
    # The two organizations' imports ran at once; each organization's took turns.
    assert most == {ORG: 1, ACCOUNTS_ONLY_ORG: 1, "any": 2}
    # The lanes shared one token: one refreshed it, the other waited and took it.
    assert sandbox.counters()["token_requests"]["total"] == 1
    for org, crm_id in wanted:
        record = importer.ledger.get(org, "account", crm_id)
        assert record and record.status is Status.SUCCEEDED, (org, crm_id)
        assert sandbox.counters()["imports"][org]["account"][crm_id] == 1


def test_an_import_requested_event_on_the_bus_reaches_the_kinds_queue_and_imports(
    importer: Importer, sandbox: ZohoSandbox, queue: str
) -> None:
    sqs, events = boto3.client("sqs"), boto3.client("events")
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.put_rule(
        Name="account-imports",
        EventBusName=NAMES.event_bus,
        EventPattern=json.dumps(topology.import_requested_pattern("account")),
    )
    events.put_targets(
        Rule="account-imports", EventBusName=NAMES.event_bus, Targets=[{"Id": "q", "Arn": arn}]
    )
    events.put_events(
        Entries=[
            {
                "EventBusName": NAMES.event_bus,
                "Source": "billing.service",
                "DetailType": topology.DETAIL_IMPORT_REQUESTED,
                "Detail": json.dumps({"kind": "account", "organization_id": ORG, "crm_id": "7101"}),
            }
        ]
    )
    records = received_records(sqs, queue)
    assert len(records) == 1 and json.loads(records[0]["body"])["detail-type"]

    answer = importer_fn.handler(sqs_event(*records), CONTEXT, importer=importer)

    assert answer == {"batchItemFailures": []}
    record = importer.ledger.get(ORG, "account", "7101")
    assert record and record.status is Status.SUCCEEDED and record.sources == ["eventbridge"]


# --- production defaults ---------------------------------------------------------------------
@pytest.fixture
def environment(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in settings.model_copy(update={"import_kind": "account"}).to_env().items():
        monkeypatch.setenv(name, value)
    caches = (get_settings, importer_fn._importer, importer_fn._app)
    for cache in caches:
        cache.cache_clear()
    yield
    for cache in caches:
        cache.cache_clear()


@pytest.mark.usefixtures("environment")
def test_without_injection_the_handler_builds_its_engine_once_from_the_environment() -> None:
    first = importer_fn.handler(
        api_event("POST", "/v1/crm/account/7201/import", {"organization_id": ORG}), CONTEXT
    )
    again = importer_fn.handler(
        api_event("POST", "/v1/crm/account/7201/import", {"organization_id": ORG}), CONTEXT
    )
    assert first["statusCode"] == again["statusCode"] == 200
    assert importer_fn._importer.cache_info().currsize == 1
    assert importer_fn._app.cache_info().hits == 1  # the second call reused the container's


def _depth(queue: str) -> int:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=queue,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesDelayed"]
    )


def test_every_message_the_service_sends_names_its_organization_as_the_fair_queue_tenant(
    importer: Importer, sandbox: ZohoSandbox, queue: str
) -> None:
    # SQS fair queues tell tenants apart by MessageGroupId: with the organization there, one
    # organization's backlog does not hold up another's import in the same kind's queue.
    sqs = boto3.client("sqs")

    def tenants() -> list[str | None]:
        got = sqs.receive_message(
            QueueUrl=queue, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
        )
        for message in got.get("Messages", []):
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
        return [m["Attributes"].get("MessageGroupId") for m in got.get("Messages", [])]

    assert post(importer, "account", "5401", Prefer="respond-async")["statusCode"] == 202
    assert tenants() == [ORG]

    # A message from an event bus carries no group; when Zoho throttles its import, the copy
    # the service sends back to the queue does.
    sandbox.set_limits(ORG, requests_per_minute=1)
    assert post(importer, "account", "5402")["statusCode"] == 200
    sqs.send_message(QueueUrl=queue, MessageBody=eventbridge_body("account", ORG, "5403"))
    [bridged] = received_records(sqs, queue)
    assert "MessageGroupId" not in bridged["attributes"]

    answer = importer_fn.handler(sqs_event(bridged), CONTEXT, importer=importer)

    assert answer == {"batchItemFailures": []}  # held by a new, delayed message
    record = importer.ledger.get(ORG, "account", "5403")
    assert record and record.status is Status.RETRYING
    deadline = time.monotonic() + 10
    seen: list[str | None] = []
    while not seen and time.monotonic() < deadline:
        seen = tenants()
    assert seen == [ORG]
