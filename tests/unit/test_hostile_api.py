"""Hostile HTTP requests against the resolver, in-process and by the thousand: whatever the path
segments, query and headers hold, the answer is a documented one (never a 5xx, every refusal
`{"code", "message"}` naming the field), and a refused request reaches no import, no ledger
write and no queue."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_to_books import api
from crm_to_books.entities import KINDS
from tests.support.fake_importer import ORG, FakeImporter
from tests.support.lambda_events import LambdaContext, api_event

ID = re.compile(r"[0-9]{1,19}")
FIELDS = {"kind", "crm_id", "organization_id", "status", "limit", "cursor", "body", "path"}
HOSTILE = [
    "..",
    "../../etc/passwd",
    "%2e%2e%2f",
    "..%2f",
    "' OR 1=1 --",
    '{"$gt":""}',
    "١٢٣",
    "-1",
    "1" * 20,
    "1" * 10_000,
    "1\x00",
    "1\r\nX-Injected: 1",
    "<script>",
    "",
]
segments = st.sampled_from(HOSTILE) | st.text(max_size=40) | st.from_regex(r"\A[0-9]{1,19}\Z")
kinds = st.sampled_from([*KINDS, "invoice", "Account", "account#1"]) | st.text(max_size=12)


def resolve(event: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    importer = FakeImporter()
    app = api.build_app(importer, import_kinds=KINDS)
    context: Any = LambdaContext()
    raw = app.resolve(event, context)
    body = json.loads(raw["body"])
    touched = [name for name in importer.names() if name in {"run", "accept", "enqueue"}]
    return raw["statusCode"], body, {"touched": ",".join(touched)}


def assert_refusal(status: int, body: dict[str, Any]) -> None:
    assert 400 <= status < 500, (status, body)
    assert set(body) == {"code", "message"}, body
    assert isinstance(body["code"], int) and isinstance(body["message"], str)
    field = body["message"].split(":", 1)[0]
    assert field in FIELDS | {"X-Correlation-Id"}, body["message"]
    assert len(body["message"]) < 400  # what the caller sent is echoed clipped


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=kinds,
    crm_id=segments,
    organization_id=segments,
    correlation_id=st.none() | st.sampled_from(HOSTILE) | st.text(max_size=140),
    body=st.none() | st.sampled_from(["", "{}", "x" * 1_000_000, '{"organization_id":"1"}']),
)
def test_an_import_request_is_imported_only_when_every_part_is_valid(
    kind: str, crm_id: str, organization_id: str, correlation_id: str | None, body: str | None
) -> None:
    headers = {"X-Correlation-Id": correlation_id} if correlation_id is not None else {}
    event = api_event(
        "POST", f"/v1/crm/{kind}/{crm_id}/import", {"organization_id": organization_id}, headers
    )
    event["body"] = body

    status, answer, seen = resolve(event)

    valid = (
        kind in KINDS
        and ID.fullmatch(crm_id)
        and organization_id == ORG
        and (correlation_id is None or re.fullmatch(r"[\x21-\x7e]{1,128}", correlation_id))
        and not body
    )
    if valid:
        assert status == 200 and seen["touched"] == "run"
    else:
        assert_refusal(status, answer)
        assert not seen["touched"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    organization_id=segments,
    status=st.none() | st.sampled_from(["succeeded", "failed' OR '1'='1", "", "SUCCEEDED"]),
    kind=st.none() | kinds,
    limit=st.none() | st.sampled_from(["0", "1", "100", "101", "-1", "1e3", "9" * 400, "abc"]),
    cursor=st.none() | st.sampled_from(["", "!!", "A" * 3000, "e30", "W10"]) | st.text(max_size=30),
)
def test_a_listing_answers_a_page_or_a_documented_refusal(
    organization_id: str,
    status: str | None,
    kind: str | None,
    limit: str | None,
    cursor: str | None,
) -> None:
    query = {"organization_id": organization_id}
    for name, value in (("status", status), ("kind", kind), ("limit", limit), ("cursor", cursor)):
        if value is not None:
            query[name] = value

    code, answer, seen = resolve(api_event("GET", "/v1/imports", query))

    assert code < 500, answer
    if code == 200:
        assert set(answer) == {"imports", "next_cursor"}
    else:
        assert_refusal(code, answer)
    assert not seen["touched"]


@pytest.mark.parametrize("segment", HOSTILE)
def test_a_hostile_record_path_is_refused_naming_the_field(segment: str) -> None:
    event = api_event("GET", f"/v1/imports/account/{segment}", {"organization_id": ORG})
    status, answer, seen = resolve(event)
    assert_refusal(status, answer)
    assert answer["message"].startswith(("crm_id: ", "path: "))
    assert not seen["touched"]
