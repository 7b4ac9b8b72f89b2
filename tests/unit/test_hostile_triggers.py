"""Hostile queue messages, in-process and by the thousand: whatever a body holds, parsing either
yields a request that satisfies every input rule or refuses it naming the field, and the batch
deletes it as poison without an import, a retry or a requeue."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_to_books import batch, triggers
from crm_to_books.entities import KINDS
from crm_to_books.errors import InvalidRequest, UnknownOrganization
from crm_to_books.models import ImportRequest
from tests.support.fake_importer import ORG, FakeImporter, FakeSqs
from tests.support.lambda_events import LambdaContext, eventbridge_body, sqs_event, sqs_record

ID = re.compile(r"[0-9]{1,19}")
FIELDS = ("kind", "organization_id", "crm_id", "detail", "detail-type", "id")

# Values a hostile sender puts where ids go: near-misses of valid ids and plain junk.
id_like = st.one_of(
    st.from_regex(r"\A-?[0-9]{0,25}\Z"),
    st.sampled_from(["١٢٣", "\uff11\uff12", "1\n", " 1", "1e3", "0x1F", "' OR 1=1 --", ORG]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.none(),
    st.booleans(),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
fields = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=8),
    id_like | json_values | st.sampled_from([*KINDS, "invoice", "Import Requested"]),
    max_size=6,
)
bodies = st.one_of(
    fields.map(json.dumps),
    st.builds(
        lambda detail, changes: json.dumps(
            {**json.loads(eventbridge_body("account", ORG, "1")), "detail": detail, **changes}
        ),
        fields | json_values,
        st.dictionaries(st.sampled_from(["detail-type", "id", "source"]), json_values, max_size=2),
    ),
    json_values.map(json.dumps),
    st.text(max_size=60),
    st.integers(1, 5000).map(lambda depth: "[" * depth + "]" * depth),
)


def process(record: dict[str, Any], importer: FakeImporter, sqs: FakeSqs) -> Any:
    context: Any = LambdaContext()
    return batch.process_batch(
        sqs_event(record),
        context,
        importer=importer,
        kind="account",
        sqs=sqs,  # type: ignore[arg-type]
    )


def assert_valid(request: ImportRequest) -> None:
    assert request.kind == "account"
    assert ID.fullmatch(request.organization_id) and ID.fullmatch(request.crm_id)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_any_body_parses_to_a_valid_request_or_is_refused_naming_the_field(body: str) -> None:
    try:
        request = triggers.from_sqs_record(sqs_record(body), "account")
    except InvalidRequest as exc:
        assert exc.field and exc.reason
        assert exc.message.startswith(f"{exc.field}: ")
    else:
        assert_valid(request)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, correlation_id=st.text(max_size=140))
def test_a_poison_message_is_deleted_never_imported_retried_or_requeued(
    body: str, correlation_id: str
) -> None:
    importer, sqs = FakeImporter(), FakeSqs()
    record = sqs_record(body, correlation_id=correlation_id or None)
    request: ImportRequest | None
    try:
        request = triggers.from_sqs_record(record, "account")
        importer.settings.organization(request.organization_id)
    except (InvalidRequest, UnknownOrganization):  # poison, either way
        request = None

    answer = process(record, importer, sqs)

    if request is None:
        assert answer == {"batchItemFailures": []}
        assert "run" not in importer.names()
        assert not sqs.sent and not sqs.visibility
    else:
        (call,) = [args for name, args in importer.calls if name == "run"]
        assert_valid(call[0])
        assert re.fullmatch(r"[\x21-\x7e]{1,128}", call[0].correlation_id or "x")


def test_a_body_nested_past_the_json_parser_is_refused_not_crashed() -> None:
    # json.loads raises RecursionError here, which is no ValueError
    record = sqs_record('{"crm_id": ' + "[" * 100_000 + "]" * 100_000 + "}")
    importer = FakeImporter()

    answer = process(record, importer, FakeSqs())

    assert answer == {"batchItemFailures": []}
    assert importer.names() == []  # nothing to record: it names no key


def test_a_correlation_id_ending_in_a_newline_is_not_taken() -> None:
    record = sqs_record({"organization_id": ORG, "crm_id": "1"}, correlation_id="order-42\n")
    assert triggers.from_sqs_record(record, "account").correlation_id == record["messageId"]
