"""The local HTTP API: API Gateway REST proxy events to the function topology routes to."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from crm_to_books import topology
from crm_to_books.entities import KINDS
from crm_to_books_cli.local import LocalStack
from tests.e2e.helpers import Logs

TIMEOUT = 30
RECORD = "/v1/imports/{kind}/{crm_id}"


def call(stack: LocalStack, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{stack.api_url}{path}", timeout=TIMEOUT, **kwargs)


def test_an_import_request_reaches_its_function_as_a_proxy_event(fake_stack: LocalStack) -> None:
    # Given a POST like a caller's, with a repeated query parameter and a body
    response = call(
        fake_stack,
        "POST",
        "/v1/crm/account/3652397000000100001/import?organization_id=700100200&tag=a&tag=b",
        headers={"Prefer": "respond-async", "X-Correlation-Id": "c-1"},
        data=b'{"note": "hi"}',
    )

    # Then the function's proxy response is the HTTP response, headers merged like API Gateway
    assert response.status_code == 201
    assert response.headers["X-Echo"] == "yes"
    assert response.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    assert response.headers["x-amzn-RequestId"]
    echo = response.json()

    # And the function got a REST API (payload 1.0) proxy event
    event = echo["event"]
    assert event["resource"] == "/v1/crm/account/{crm_id}/import"
    assert event["path"] == "/v1/crm/account/3652397000000100001/import"
    assert event["httpMethod"] == "POST"
    assert event["pathParameters"] == {"crm_id": "3652397000000100001"}
    assert event["queryStringParameters"] == {"organization_id": "700100200", "tag": "b"}
    assert event["multiValueQueryStringParameters"]["tag"] == ["a", "b"]
    assert event["headers"]["Prefer"] == "respond-async"
    assert event["multiValueHeaders"]["X-Correlation-Id"] == ["c-1"]
    assert event["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert event["headers"]["X-Amzn-Trace-Id"].startswith("Root=1-")
    assert event["body"] == '{"note": "hi"}'
    assert event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["stage"] == "prod"
    assert context["resourcePath"] == event["resource"]
    assert context["path"] == "/prod" + event["path"]
    assert context["httpMethod"] == "POST"
    assert context["requestId"] and context["identity"]["sourceIp"] == "127.0.0.1"

    # And a Lambda context, in a container configured like the deployed function
    lambda_context = echo["context"]
    assert lambda_context["function_name"] == "e2e-fake-account-import"
    assert lambda_context["invoked_function_arn"].endswith(":function:e2e-fake-account-import")
    assert lambda_context["memory_limit_in_mb"] == topology.FUNCTION_MEMORY_MB
    assert 0 < lambda_context["remaining_ms"] <= topology.FUNCTION_TIMEOUT_SECONDS * 1000
    assert lambda_context["log_group_name"] == "/aws/lambda/e2e-fake-account-import"
    settings = echo["settings"]
    assert settings["import_kind"] == "account"
    assert settings["ledger_table"] == "e2e-fake-ledger"
    assert settings["event_bus_name"] == "e2e-fake-bus"
    assert sorted(settings["organizations"]) == ["700100200", "700100201"]
    assert settings["connections"] == {"default": "e2e-fake/connections/default"}
    assert settings["queue_urls"] == {"account": fake_stack.queue_urls["account"]}
    assert echo["env"]["AWS_ENDPOINT_URL"] == fake_stack.aws_endpoint


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_routes_to_its_own_function(fake_stack: LocalStack, kind: str) -> None:
    response = call(fake_stack, "POST", f"/v1/crm/{kind}/42/import?organization_id=700100200")

    assert response.status_code == 201
    echo = response.json()
    assert echo["context"]["function_name"] == f"e2e-fake-{kind}-import"
    assert echo["env"]["IMPORT_KIND"] == kind


@pytest.mark.parametrize(
    ("path", "resource", "parameters"),
    [
        ("/v1/imports", "/v1/imports", None),
        ("/v1/imports/item/55", "/v1/imports/{kind}/{crm_id}", {"kind": "item", "crm_id": "55"}),
        ("/v1/health", "/v1/health", None),
        # The path is decoded once, like API Gateway: "%2541" arrives as "%41". (An encoded "/"
        # splits a segment: no route, tests/e2e/test_hostile_input.py.)
        ("/v1/imports/item/5%2541", RECORD, {"kind": "item", "crm_id": "5%41"}),
        ("/v1/imports/it%65m/5", RECORD, {"kind": "item", "crm_id": "5"}),
    ],
)
def test_status_routes_reach_the_status_api(
    fake_stack: LocalStack, path: str, resource: str, parameters: dict[str, str] | None
) -> None:
    response = call(fake_stack, "GET", path, params={"organization_id": "700100200"})

    assert response.status_code == 201
    event = response.json()["event"]
    assert response.json()["context"]["function_name"] == "e2e-fake-status-api"
    assert response.json()["settings"]["queue_urls"] == {}  # as infra/stack.py wires it
    assert (event["resource"], event["pathParameters"]) == (resource, parameters)
    assert event["body"] is None


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/nowhere"), ("GET", "/v1/crm/account/1/import"), ("DELETE", "/v1/imports")],
)
def test_unknown_routes_answer_like_api_gateway(
    fake_stack: LocalStack, method: str, path: str
) -> None:
    response = call(fake_stack, method, path)

    assert response.status_code == 403
    assert response.json() == {"message": "Missing Authentication Token"}


def test_a_failing_function_is_a_502_and_a_dead_container_is_replaced(
    fake_stack: LocalStack, fake_stack_logs: Logs
) -> None:
    crashed = call(fake_stack, "GET", "/v1/imports", params={"crash": "1"})
    assert crashed.status_code == 502
    assert crashed.json() == {"message": "Internal server error"}
    assert fake_stack_logs.wait_for(
        "e2e-fake-status-api", errorType="RuntimeError", errorMessage="asked to crash"
    )

    exited = call(fake_stack, "GET", "/v1/imports", params={"exit": "1"})
    assert exited.status_code == 502
    last_words = fake_stack_logs.wait_for("e2e-fake-status-api", where=lambda r: "exiting" in r)

    after = call(fake_stack, "GET", "/v1/imports")
    assert after.status_code == 201
    assert {r["exiting"] for r in last_words}.isdisjoint(fake_stack.container_pids())


def test_binary_bodies_arrive_base64_encoded(fake_stack: LocalStack) -> None:
    response = call(fake_stack, "POST", "/v1/crm/item/7/import", data=b"\xff\xfe")

    event = response.json()["event"]
    assert event["isBase64Encoded"] is True
    assert event["body"] == "//4="
