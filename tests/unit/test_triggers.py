"""Every trigger shape AWS delivers, parsed into one ImportRequest; poison named precisely."""

from __future__ import annotations

import json
from typing import Any

import jmespath
import pytest

from crm_to_books import triggers
from crm_to_books.errors import InvalidRequest
from tests.support.lambda_events import eventbridge_body, load, sqs_record

ORG = "700100200"
CRM = "4876876000000624001"


def test_http_request_takes_the_callers_correlation_header_in_any_case() -> None:
    request = triggers.from_http(
        kind="account",
        organization_id=ORG,
        crm_id=CRM,
        headers={"x-correlation-id": "order-42"},
        request_id="req-1",
    )
    assert request.model_dump() == {
        "kind": "account",
        "organization_id": ORG,
        "crm_id": CRM,
        "source": "http",
        "correlation_id": "order-42",
    }


def test_http_request_falls_back_to_the_api_gateway_request_id() -> None:
    request = triggers.from_http(
        kind="item", organization_id=ORG, crm_id=CRM, headers={}, request_id="req-1"
    )
    assert request.correlation_id == "req-1"


def test_a_correlation_header_that_could_forge_log_lines_is_refused() -> None:
    with pytest.raises(InvalidRequest) as err:
        triggers.from_http(
            kind="item",
            organization_id=ORG,
            crm_id=CRM,
            headers={"X-Correlation-Id": "a\nb"},
            request_id=None,
        )
    assert err.value.field == "X-Correlation-Id"


def test_the_recorded_sqs_record_parses_with_the_senders_correlation_id() -> None:
    record = load("sqs_batch")["Records"][0]
    request = triggers.from_sqs_record(record, "account")
    assert (request.kind, request.organization_id, request.crm_id) == ("account", ORG, CRM)
    assert request.source == "sqs"
    assert request.correlation_id == "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"


def test_an_sqs_record_without_correlation_attribute_uses_its_message_id() -> None:
    record = load("sqs_batch")["Records"][1]
    assert triggers.from_sqs_record(record, "account").correlation_id == record["messageId"]


@pytest.mark.parametrize(
    ("attribute", "source"),
    [("redrive", "redrive"), ("cli", "cli"), ("http", "http"), ("eventbridge", "sqs"),
     ("anything", "sqs"), (None, "sqs")],
)  # fmt: skip
def test_a_plain_message_takes_its_source_from_the_source_attribute(
    attribute: str | None, source: str
) -> None:
    record = sqs_record({"organization_id": ORG, "crm_id": CRM})
    if attribute is not None:
        record["messageAttributes"]["source"] = {"stringValue": attribute, "dataType": "String"}

    assert triggers.from_sqs_record(record, "account").source == source


def test_an_eventbridge_event_delivered_through_sqs_parses_from_its_detail() -> None:
    record = load("sqs_record_eventbridge")
    request = triggers.from_sqs_record(record, "account")
    assert (request.kind, request.organization_id, request.crm_id) == (
        "account",
        ORG,
        "4876876000000624003",
    )
    assert request.source == "eventbridge"
    assert request.correlation_id == "7f7e2e4c-3d2a-4b6e-9a51-4c0b1c2d3e4f"


def test_json_numbers_within_2_53_are_accepted_as_ids() -> None:
    request = triggers.from_sqs_record(
        sqs_record({"organization_id": 700100200, "crm_id": 12345}), "account"
    )
    assert (request.organization_id, request.crm_id) == (ORG, "12345")


POISON: list[tuple[str, Any, str]] = [
    ("invalid JSON", "{not json", "body: is not valid JSON"),
    ("not an object", json.dumps([ORG, CRM]), "body: must be a JSON object"),
    ("missing crm_id", {"organization_id": ORG}, "crm_id: is required"),
    ("missing organization", {"crm_id": CRM}, "organization_id: is required"),
    (
        "20-digit id",
        {"organization_id": ORG, "crm_id": "1" * 20},
        "crm_id: must be a string of 1 to 19 digits",
    ),
    (
        "id with letters",
        {"organization_id": "70010020O", "crm_id": CRM},
        "organization_id: must be a string of 1 to 19 digits",
    ),
    (
        "number past 2^53",
        {"organization_id": ORG, "crm_id": 2**60},
        "crm_id: must be sent as a string when over 2^53",
    ),
    (
        "another kind, plain body",
        {"organization_id": ORG, "crm_id": CRM, "kind": "vendor"},
        "kind: this queue takes account imports, got 'vendor'",
    ),
    (
        "another kind, EventBridge",
        eventbridge_body("item", ORG, CRM),
        "detail.kind: this queue takes account imports, got 'item'",
    ),
    (
        "unknown kind, EventBridge",
        eventbridge_body("invoice", ORG, CRM),
        "detail.kind: must be one of account, contact, vendor, item, got 'invoice'",
    ),
    (
        "bad id, EventBridge",
        eventbridge_body("account", ORG, "x1"),
        "detail.crm_id: must be a string of 1 to 19 digits",
    ),
    (
        "another detail-type",
        eventbridge_body("account", ORG, CRM, **{"detail-type": "Import Succeeded"}),
        "detail-type: must be 'Import Requested', got 'Import Succeeded'",
    ),
    (
        "detail not an object",
        json.dumps({"detail-type": "Import Requested", "detail": "account"}),
        "detail: must be a JSON object",
    ),
]


@pytest.mark.parametrize(("body", "message"), [p[1:] for p in POISON], ids=[p[0] for p in POISON])
def test_poison_records_are_refused_naming_the_field(body: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        triggers.from_sqs_record(sqs_record(body), "account")
    assert err.value.message == message


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"organization_id": ORG, "crm_id": CRM, "kind": "vendor"}, (ORG, "vendor", CRM)),
        (eventbridge_body("item", ORG, CRM), (ORG, "item", CRM)),
        ({"organization_id": ORG, "crm_id": CRM, "extra": 1}, (ORG, "account", CRM)),
        ({"organization_id": ORG}, None),
        ({"organization_id": ORG, "crm_id": "1" * 20}, None),
        (eventbridge_body("invoice", ORG, CRM), None),
        ("{not json", None),
    ],
)
def test_salvage_finds_the_ledger_key_a_poison_message_names(
    body: Any, key: tuple[str, str, str] | None
) -> None:
    found = triggers.salvage(sqs_record(body), "account")
    assert (found.key if found else None) == key


def test_a_salvaged_poison_message_keeps_its_senders_source() -> None:
    record = sqs_record({"organization_id": ORG, "crm_id": CRM, "kind": "item"})
    record["messageAttributes"]["source"] = {"stringValue": "cli", "dataType": "String"}
    found = triggers.salvage(record, "account")
    assert found is not None and found.source == "cli"


def test_queue_url_comes_from_the_arn_and_the_clients_endpoint() -> None:
    arn = "arn:aws:sqs:eu-west-1:123456789012:crm-to-books-item-imports"
    assert (
        triggers.queue_url(arn, "https://sqs.eu-west-1.amazonaws.com")
        == "https://sqs.eu-west-1.amazonaws.com/123456789012/crm-to-books-item-imports"
    )
    assert (
        triggers.queue_url(arn, "http://localhost:4566/")
        == "http://localhost:4566/123456789012/crm-to-books-item-imports"
    )
    with pytest.raises(ValueError, match="not an SQS queue ARN"):
        triggers.queue_url("arn:aws:sns:eu-west-1:1:topic", "https://sqs")


@pytest.mark.parametrize(
    ("partition", "region", "endpoint"),
    [
        ("aws-cn", "cn-north-1", "https://sqs.cn-north-1.amazonaws.com.cn"),
        ("aws-us-gov", "us-gov-west-1", "https://sqs.us-gov-west-1.amazonaws.com"),
        ("aws-iso-b", "us-isob-east-1", "https://sqs.us-isob-east-1.sc2s.sgov.gov"),
    ],
)
def test_queue_url_takes_a_queue_arn_of_any_partition(
    partition: str, region: str, endpoint: str
) -> None:
    arn = f"arn:{partition}:sqs:{region}:123456789012:crm-to-books-item-imports"
    assert triggers.queue_url(arn, endpoint) == f"{endpoint}/123456789012/crm-to-books-item-imports"


@pytest.mark.parametrize(
    "arn",
    [
        "arn:azure:sqs:eu-west-1:123456789012:q",
        "arn:aws:sqs::123456789012:q",
        "arn:aws:sqs:eu-west-1:123456789012",
        "urn:aws:sqs:eu-west-1:123456789012:q",
    ],
)
def test_queue_url_refuses_what_is_not_a_queue_arn(arn: str) -> None:
    with pytest.raises(ValueError, match="not an SQS queue ARN"):
        triggers.queue_url(arn, "https://sqs")


def test_sqs_events_are_told_apart_from_other_events() -> None:
    assert triggers.is_sqs_event(load("sqs_batch"))
    assert not triggers.is_sqs_event(load("apigw_rest_import"))
    assert not triggers.is_sqs_event(load("schedule_event"))
    assert not triggers.is_sqs_event({"Records": [{"eventSource": "aws:s3"}]})


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (load("apigw_rest_import"), "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"),
        (
            {**load("apigw_rest_import"), "headers": {"X-Correlation-Id": "order-42"}},
            "order-42",
        ),
        ({**load("apigw_rest_import"), "headers": {"x-correlation-id": "order-43"}}, "order-43"),
        (load("sqs_batch"), "059f36b4-87a3-44ab-83d2-661975830a7d"),
        (load("schedule_event"), "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa"),
    ],
    ids=["api-request-id", "header", "header-lowercase", "sqs", "schedule"],
)
def test_the_logger_correlation_path_fits_every_trigger(
    event: dict[str, Any], expected: str
) -> None:
    assert jmespath.search(triggers.CORRELATION_ID_PATH, event) == expected
