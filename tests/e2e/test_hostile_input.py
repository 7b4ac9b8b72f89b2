"""Hostile input from outside: fuzzed requests against the served OpenAPI document, malformed
queue messages and events, oversized bodies and ids, path traversal and injection attempts.

Every one is refused with a documented answer, and a refused request reaches nothing: no Zoho
call, no ledger record (except a poison message's documented `failed` record), no queue
message. The stack is this module's own, so the sandbox's counters move only for what these
tests send.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from crm_to_books_cli.local import LocalStack
from tests.e2e.drive import aws
from tests.e2e.drive import queue_depth as depth
from tests.e2e.helpers import Logs, own_stack, wait_until

pytestmark = pytest.mark.timeout(240)

PREFIX = "e2e-hostile"
ORG = "700100200"  # configured, every sync mode
TIMEOUT = 30
MAX_EXAMPLES = 15  # random cases per route and mode, on top of schemathesis' coverage cases
GATEWAY_403 = {"message": "Missing Authentication Token"}  # API Gateway's own: no route


# --- the stack and what "reaching nothing" means ------------------------------------------------
@pytest.fixture(scope="module")
def logs() -> Logs:
    return Logs()


@pytest.fixture(scope="module")
def stack(logs: Logs) -> Iterator[LocalStack]:
    """The real handlers and the Zoho sandbox; a failing message returns after 2 s and is
    dead-lettered on its third receive, so a poison message that looped would show at once."""
    with own_stack(PREFIX, logs) as stack:
        yield stack


@dataclass(frozen=True)
class Trace:
    """Everything a request could have touched."""

    zoho: str  # the sandbox's counters of token requests and Books requests
    ledger: int  # ledger items
    queued: int  # messages in every queue and DLQ

    @classmethod
    def of(cls, stack: LocalStack) -> Trace:
        counters: dict[str, Any] = stack.sandbox.counters()  # type: ignore[union-attr]
        zoho = json.dumps(
            [counters["token_requests"], counters["books_requests"], counters["imports"]],
            sort_keys=True,
        )
        table = stack.names.ledger_table
        ledger = aws(stack, "dynamodb").scan(TableName=table, Select="COUNT")["Count"]
        urls = [*stack.queue_urls.values(), *stack.dlq_urls.values()]
        return cls(zoho, int(ledger), sum(depth(stack, url) for url in urls))


def assert_documented_error(status: int, body: Any, fields: set[str]) -> None:
    """`{"code": int, "message": "<field>: <reason>"}` naming one of `fields`."""
    assert isinstance(body, dict), body
    assert isinstance(body.get("code"), int) and isinstance(body.get("message"), str), body
    # 401/403 1401/1403: the CRM hook's channel token missing or wrong; 413: too large a body
    expected = {400: {1100}, 401: {1401}, 403: {1101, 1403}, 404: {1104}, 413: {1413}}[status]
    assert body["code"] in expected, body
    field = body["message"].split(":", 1)[0].lower()  # header names are case-insensitive
    assert field in {f.lower() for f in fields}, f"{body['message']!r} names none of {fields}"


# --- schemathesis against the served document ---------------------------------------------------
# (Its pytest plugin's lazy schemas do not run under pytest 9: each operation and generation mode
# is driven here instead, its coverage cases first, then hypothesis-generated ones.)
OPERATIONS = {
    "POST /v1/crm/{kind}/{crm_id}/import",
    "GET /v1/imports/{kind}/{crm_id}",
    "GET /v1/imports",
    "GET /v1/health",
    "POST /v1/hooks/zoho-crm",
}  # every route of the document but /v1/openapi.json itself, which schemathesis does not fuzz
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def api_schema(stack: LocalStack) -> Any:
    schema = schemathesis.openapi.from_url(f"{stack.api_url}/v1/openapi.json")
    schema.config.update(base_url=stack.api_url)
    # IAM (SigV4) is API Gateway's to check, and the local API does not (docs/local.md): leave
    # the Authorization header out rather than expect the service to refuse its absence.
    schema.config.generation.update(with_security_parameters=False)
    return schema


def operation(api_schema: Any, label: str) -> Any:
    found = {r.ok().label: r.ok() for r in api_schema.get_all_operations()}
    assert set(found) == OPERATIONS  # a new route must be fuzzed too
    return found[label]


def routable(stack: LocalStack, method: str, path: str) -> bool:
    """Whether API Gateway (the local one: same routes, same decoding) has a route for it."""
    assert stack.api is not None
    decoded = unquote(urlsplit(path).path)
    return any(route.match(method, decoded) is not None for route in stack.api.routes)


def check_case(stack: LocalStack, case: Any) -> None:
    """Send one generated request; its answer must be one the document describes."""
    before = Trace.of(stack)
    response = case.call(timeout=TIMEOUT)
    if not routable(stack, case.method, case.formatted_path):
        # API Gateway refuses it (no route for that kind, an encoded "/" in an id): the
        # service never runs. This is API Gateway's own answer (docs/local.md).
        assert (response.status_code, response.json()) == (403, GATEWAY_403), case.formatted_path
    else:
        case.validate_response(response, checks=CHECKS)
        if 400 <= response.status_code < 500:
            names = {p.name for p in case.operation.iter_parameters()} | {"body", "path"}
            names |= {"token", "ids"}  # the CRM hook's body fields
            assert_documented_error(response.status_code, response.json(), names)
    if 400 <= response.status_code < 500:
        assert Trace.of(stack) == before, f"a refused request left a trace: {case.formatted_path}"


@pytest.mark.parametrize(
    ("label", "mode"),
    [
        (label, mode)
        for label in sorted(OPERATIONS)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if not (label == "GET /v1/health" and mode is GenerationMode.NEGATIVE)  # no parameters
    ],
    ids=lambda value: str(value.value) if isinstance(value, GenerationMode) else str(value),
)
def test_every_route_answers_generated_requests_as_documented(
    stack: LocalStack, api_schema: Any, label: str, mode: GenerationMode
) -> None:
    # Given the requests schemathesis makes of the served document for this route: its
    # coverage cases (boundaries, wrong types, missing values), then random ones
    api_operation = operation(api_schema, label)
    coverage = list(
        api_schema.iter_coverage_cases(
            api_operation, generation_modes=[mode], generation_config=api_schema.config.generation
        )
    )
    assert coverage

    # Then each answer is documented: never a 5xx, every 4xx the error body naming the field,
    # and nothing a refused request could touch (Zoho, the ledger, the queues) moved
    for case in coverage:
        check_case(stack, case)

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,  # the same requests on every run
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report the request as sent
        suppress_health_check=list(HealthCheck),
    )
    @given(case=api_operation.as_strategy(mode))
    def fuzz(case: Any) -> None:
        check_case(stack, case)

    fuzz()


def test_the_document_is_served_and_lists_every_route(stack: LocalStack) -> None:
    response = http_request(stack, "GET", "/v1/openapi.json")
    assert response.status == 200
    paths = response.json()["paths"]
    served = {f"{m.upper()} {p}" for p, ops in paths.items() for m in ops}
    assert served == OPERATIONS | {"GET /v1/openapi.json"}


# --- malformed queue messages and events ------------------------------------------------------
@dataclass(frozen=True)
class Poison:
    name: str
    body: str
    recorded: tuple[str, str, str] | None = None  # the ledger key it names, if it names one
    attributes: dict[str, Any] | None = None


def eventbridge(detail: Any, detail_type: str = "Import Requested", **changes: Any) -> str:
    event = {
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": detail_type,
        "source": "e2e.hostile",
        "account": "123456789012",
        "time": "2025-01-01T12:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
        **changes,
    }
    return json.dumps(event)


def plain(**fields: Any) -> str:
    return json.dumps(fields)


def nested(depth: int) -> str:
    return '{"organization_id": ' + "[" * depth + "]" * depth + ', "crm_id": "1"}'


POISON = [
    Poison("not JSON", "{organization_id: 700100200"),
    Poison("empty", ""),
    Poison("a JSON array", json.dumps([{"organization_id": ORG, "crm_id": "1"}])),
    Poison("null", "null"),
    Poison("a number", "12345"),
    Poison("a string", json.dumps("700100200/1")),
    Poison("no fields", "{}"),
    Poison("null id", plain(organization_id=ORG, crm_id=None)),
    Poison("a number past 2^53", f'{{"organization_id": "{ORG}", "crm_id": {2**53 + 1}}}'),
    Poison("a negative number", plain(organization_id=ORG, crm_id=-42)),
    Poison("a negative id", plain(organization_id=ORG, crm_id="-42")),
    Poison("20 digits", plain(organization_id=ORG, crm_id="12345678901234567890")),
    Poison("Arabic-Indic digits", plain(organization_id=ORG, crm_id="١٢٣")),
    Poison("fullwidth digits", plain(organization_id="\uff17\uff10\uff10", crm_id="1")),
    Poison("a 200 kB id", plain(organization_id=ORG, crm_id="9" * 200_000)),
    Poison("nested junk", plain(organization_id={"$gt": ""}, crm_id=["1", {"a": [None]}])),
    Poison("nested past the parser", nested(100_000)),
    Poison("SQL", plain(organization_id="' OR 1=1 --", crm_id="1; DROP TABLE ledger")),
    Poison("unknown organization", plain(organization_id="999", crm_id="1")),
    Poison(
        "another kind", plain(kind="item", organization_id=ORG, crm_id="77"), (ORG, "item", "77")
    ),
    Poison("a trailing newline", plain(organization_id=ORG, crm_id="1\n")),
    Poison(
        "event: another detail-type",
        eventbridge({"kind": "account", "organization_id": ORG, "crm_id": "78"}, "Something Else"),
        (ORG, "account", "78"),
    ),
    Poison("event: detail a string", eventbridge(json.dumps({"kind": "account"}))),
    Poison("event: detail null", eventbridge(None)),
    Poison(
        "event: another kind",
        eventbridge({"kind": "vendor", "organization_id": ORG, "crm_id": "79"}),
        (ORG, "vendor", "79"),
    ),
    Poison(
        "event: unknown kind",
        eventbridge({"kind": "invoice", "organization_id": ORG, "crm_id": "1"}),
    ),
    Poison(
        "event: no detail-type",
        json.dumps({"detail": {"kind": "account", "organization_id": ORG, "crm_id": "80"}}),
        (ORG, "account", "80"),
    ),
    Poison(
        "event: 20-digit org",
        eventbridge({"kind": "account", "organization_id": "1" * 20, "crm_id": "1"}),
    ),
    Poison(
        "a CRLF correlation id",
        plain(organization_id=ORG, crm_id="-1"),
        attributes={"correlation_id": {"DataType": "String", "StringValue": "x\r\nX-Injected: 1"}},
    ),
]


def poison_records(logs: Logs, function: str) -> list[dict[str, Any]]:
    return logs.records(function, message="poison message deleted")


def test_malformed_messages_are_deleted_as_poison_once_and_reach_nothing(
    stack: LocalStack, logs: Logs
) -> None:
    # Given malformed messages on the account queue
    sqs, function = aws(stack, "sqs"), f"{PREFIX}-account-import"
    before = Trace.of(stack)
    already = len(poison_records(logs, function))
    sent: dict[str, Poison] = {}
    for poison in POISON:
        answer = sqs.send_message(
            QueueUrl=stack.queue_urls["account"],
            MessageBody=poison.body or " ",
            MessageAttributes=poison.attributes or {},
        )
        sent[answer["MessageId"]] = poison

    # Then each is handled once and deleted: the queue empties without the DLQ
    wait_until(
        lambda: len(poison_records(logs, function)) >= already + len(sent),
        "every poison message logged",
        timeout=60,
    )
    wait_until(lambda: depth(stack, stack.queue_urls["account"]) == 0, "the queue empty", 30)
    assert depth(stack, stack.dlq_urls["account"]) == 0
    handled = [r["correlation_id"] for r in poison_records(logs, function)[already:]]
    assert sorted(handled) == sorted(sent), "a poison message was handled more than once"
    assert not logs.records(
        function, message="import done", where=lambda r: r.get("correlation_id") in sent
    )

    # And nothing reached Zoho; only the poison naming a valid key left a record, `failed`
    after = Trace.of(stack)
    assert after.zoho == before.zoho
    recorded = [p.recorded for p in POISON if p.recorded]
    assert after.ledger == before.ledger + len(recorded)
    for key in recorded:
        record = import_record(stack, *key)
        assert record["status"] == "failed" and record["last_error"]["category"] == "invalid"
        assert record["attempts"] == 0


def import_record(stack: LocalStack, organization_id: str, kind: str, crm_id: str) -> Any:
    response = http_request(
        stack, "GET", f"/v1/imports/{kind}/{crm_id}?organization_id={organization_id}"
    )
    assert response.status == 200, response.body
    return response.json()["import"]


def test_malformed_events_on_the_bus_are_poison_too(stack: LocalStack, logs: Logs) -> None:
    # Given `Import Requested` events the bus routes to the account queue, with junk ids
    events = aws(stack, "events")
    before = Trace.of(stack)
    details = [
        {"kind": "account", "organization_id": ORG, "crm_id": "1" * 10_000},
        {"kind": "account", "organization_id": ORG, "crm_id": "١٢٣"},
        {"kind": "account", "organization_id": ORG, "crm_id": 2**63},
        {"kind": "account", "organization_id": [ORG], "crm_id": {"$ne": None}},
        {"kind": "account", "organization_id": "' OR '1'='1", "crm_id": "1"},
        {"kind": "account"},
    ]
    markers = [f"e2e.hostile.{n}.{time.monotonic_ns()}" for n in range(len(details))]
    answer = events.put_events(
        Entries=[
            {
                "EventBusName": stack.names.event_bus,
                "Source": marker,
                "DetailType": "Import Requested",
                "Detail": json.dumps(detail),
            }
            for marker, detail in zip(markers, details, strict=True)
        ]
    )
    assert answer["FailedEntryCount"] == 0

    # Then each is refused as poison once, and reaches nothing
    function = f"{PREFIX}-account-import"

    def refused() -> list[str] | None:
        bodies = [r["body"] for r in poison_records(logs, function)]
        found = [m for m in markers for b in bodies if m in b]
        return found if len(found) >= len(markers) else None

    assert sorted(wait_until(refused, "every event refused", timeout=60)) == sorted(markers)
    wait_until(lambda: depth(stack, stack.queue_urls["account"]) == 0, "the queue empty", 30)
    assert Trace.of(stack) == before


# --- oversized, traversal and injection attempts over HTTP ---------------------------------------
@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    stack: LocalStack,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> RawResponse:
    """The request line exactly as given (no client normalizing "..", re-encoding or
    refusing odd characters)."""
    url = urlsplit(stack.api_url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=TIMEOUT)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body or b"")))
        connection.endheaders(body or None)
        response = connection.getresponse()
        return RawResponse(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


def raw_socket_request(stack: LocalStack, request: bytes) -> RawResponse:
    """Bytes no HTTP client would send (a folded header line)."""
    url = urlsplit(stack.api_url)
    with socket.create_connection((url.hostname or "", url.port or 0), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return RawResponse(status, {}, body)


IMPORT = "/v1/crm/account/{}/import?organization_id=" + ORG
LIST = "/v1/imports?organization_id=" + ORG
ONE = "/v1/imports/account/{}?organization_id=" + ORG


def forged_cursor(organization_id: str) -> str:
    """A cursor shaped like the API's (base64 JSON of a DynamoDB key) for another organization."""
    key = {"pk": {"S": f"ORG#{organization_id}"}, "sk": {"S": "account#1"}}
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


@dataclass(frozen=True)
class Attempt:
    name: str
    method: str
    target: str
    fields: frozenset[str]  # what the refusal may name; empty: API Gateway refuses (no route)
    headers: dict[str, str] | None = None
    body: bytes | None = None


def attempt(
    name: str,
    method: str,
    target: str,
    *fields: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Attempt:
    return Attempt(name, method, target, frozenset(fields), headers, body)


ATTEMPTS = [
    # oversized
    attempt("a 1 MB body", "POST", IMPORT.format(1), "body", body=b"x" * 1_000_000),
    attempt(
        "a 1 MB JSON body", "POST", IMPORT.format(1), "body", body=b'{"a":"' + b"x" * 2**20 + b'"}'
    ),
    attempt("a 10k-digit id", "POST", IMPORT.format("1" * 10_000), "crm_id"),
    attempt("a 10k-digit id to read", "GET", ONE.format("9" * 10_000), "crm_id"),
    attempt(
        "a 10k-digit org", "GET", "/v1/imports?organization_id=" + "7" * 10_000, "organization_id"
    ),
    attempt(
        "a 10k correlation id",
        "POST",
        IMPORT.format(1),
        "X-Correlation-Id",
        headers={"X-Correlation-Id": "c" * 10_000},
    ),
    attempt(
        "a 10k Prefer",
        "POST",
        IMPORT.format("1" * 20),
        "crm_id",
        headers={"Prefer": "respond-async;" * 800},
    ),
    attempt("a 10k cursor", "GET", LIST + "&cursor=" + "A" * 10_000, "cursor"),
    attempt("a huge limit", "GET", LIST + "&limit=" + "9" * 400, "limit"),
    # ids that are not decimal strings of 1 to 19 digits
    attempt("20 digits", "POST", IMPORT.format("1" * 20), "crm_id"),
    attempt("a negative id", "POST", IMPORT.format("-1"), "crm_id"),
    attempt("Arabic-Indic digits", "POST", IMPORT.format(quote("١٢٣")), "crm_id"),
    attempt("a NUL", "POST", IMPORT.format("1%00"), "crm_id"),
    attempt("an encoded newline", "POST", IMPORT.format("1%0d%0a"), "crm_id"),
    attempt("a float", "GET", LIST + "&limit=1e3", "limit"),
    # path traversal
    attempt(
        "../ in a path", "GET", "/v1/imports/account/../../../etc/passwd?organization_id=" + ORG
    ),
    attempt("%2e%2e%2f in a path", "GET", ONE.format("%2e%2e%2f%2e%2e%2fetc%2fpasswd")),
    attempt("..%2f as an id", "POST", IMPORT.format("..%2f")),
    attempt("double-encoded ../", "GET", ONE.format("..%252f..%252fetc%252fpasswd"), "crm_id"),
    attempt("an encoded slash", "GET", ONE.format("1%2F2")),
    attempt("a backslash", "GET", ONE.format("..%5c..%5cwindows"), "crm_id", "path"),
    attempt("../ as a kind", "GET", "/v1/imports/..%2f..%2f/1?organization_id=" + ORG),
    attempt("a kind not imported", "GET", "/v1/imports/invoice/1?organization_id=" + ORG, "kind"),
    # injection in ids, query strings and headers
    attempt(
        "SQL in the org",
        "GET",
        "/v1/imports?organization_id=" + quote("' OR 1=1 --"),
        "organization_id",
    ),
    attempt(
        "NoSQL in the org",
        "GET",
        "/v1/imports?organization_id=" + quote('{"$gt":""}'),
        "organization_id",
    ),
    attempt(
        "the last of two orgs",
        "GET",
        f"/v1/imports?organization_id={ORG}&organization_id=" + quote("' OR ''='"),
        "organization_id",
    ),
    attempt("SQL in an id", "POST", IMPORT.format(quote("1' OR '1'='1")), "crm_id"),
    attempt("NoSQL in an id", "GET", ONE.format(quote('{"$ne":null}')), "crm_id"),
    attempt("SQL in a status", "GET", LIST + "&status=" + quote("succeeded' OR '1'='1"), "status"),
    attempt("a key path as a kind", "GET", LIST + "&kind=" + quote("account#1"), "kind"),
    attempt("a cursor of junk", "GET", LIST + "&cursor=" + quote("!!'\";--"), "cursor"),
    attempt(
        "a non-ASCII correlation id",
        "POST",
        IMPORT.format(1),
        "X-Correlation-Id",
        headers={"X-Correlation-Id": "é"},
    ),
    attempt(
        "SQL in a correlation id",
        "POST",
        IMPORT.format("1" * 20),
        "crm_id",
        headers={"X-Correlation-Id": "'OR'1'='1"},
    ),
    attempt(
        "an unknown organization",
        "POST",
        "/v1/crm/account/1/import?organization_id=999",
        "organization_id",
    ),
]


# Cursors are base64 JSON of a DynamoDB key; the ledger binds one to the query it continues
# (organization, status, string keys), so a forged one is a 400, never a query DynamoDB refuses.
FORGED_CURSORS = [
    pytest.param(
        attempt(name, "GET", LIST + "&cursor=" + cursor, "cursor"),
        id=name,
    )
    for name, cursor in [
        ("a cursor of another organization", forged_cursor("700100201")),
        ("a cursor with a number key", base64.urlsafe_b64encode(b'{"pk":{"N":"1"}}').decode()),
    ]
]


@pytest.mark.parametrize(
    "attempt", [*(pytest.param(a, id=a.name) for a in ATTEMPTS), *FORGED_CURSORS]
)
def test_hostile_requests_are_refused_with_the_documented_body_and_reach_nothing(
    stack: LocalStack, attempt: Attempt
) -> None:
    before = Trace.of(stack)

    response = http_request(stack, attempt.method, attempt.target, attempt.headers, attempt.body)

    if attempt.fields:
        # The function refused it: 4xx, `{"code", "message"}` naming the field
        assert 400 <= response.status < 500, (response.status, response.body[:300])
        assert_documented_error(response.status, response.json(), set(attempt.fields))
    else:
        # No route matches the decoded path: API Gateway refuses it, no function runs
        assert response.status == 403 and response.json() == GATEWAY_403, response.body[:300]
    assert Trace.of(stack) == before


def test_an_encoded_crlf_in_a_correlation_id_stays_characters(stack: LocalStack) -> None:
    # Percent-encoded CR LF is visible ASCII: a valid correlation id, kept verbatim, never decoded
    # into a header of the answer
    value = "a%0d%0aSet-Cookie:%20x=1"
    response = http_request(
        stack, "POST", IMPORT.format("3652397000000100002"), {"X-Correlation-Id": value}
    )
    assert response.status == 200, response.body[:300]
    assert "Set-Cookie" not in response.headers
    assert value in response.json()["import"]["correlation_ids"]


def test_a_folded_header_line_cannot_smuggle_a_correlation_id(stack: LocalStack) -> None:
    before = Trace.of(stack)
    target = IMPORT.format(1)
    request = (
        f"POST {target} HTTP/1.1\r\nHost: localhost\r\n"
        "X-Correlation-Id: abc\r\n X-Injected: yes\r\n"  # a folded (obsolete) header line
        "Content-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode()

    response = raw_socket_request(stack, request)

    assert response.status == 400, response.body[:300]
    assert_documented_error(400, response.json(), {"X-Correlation-Id"})
    assert Trace.of(stack) == before


def test_an_import_of_a_configured_record_still_works_after_all_that(stack: LocalStack) -> None:
    # The refusals above were not the API refusing everything
    response = http_request(stack, "POST", IMPORT.format("3652397000000100001"))
    assert response.status == 200, response.body[:300]
    assert response.json()["import"]["status"] == "succeeded"
