"""Every trigger's event, parsed into one `ImportRequest`.

Bad input raises `InvalidRequest` naming the field and the reason; for SQS that makes the
record poison (it can never succeed, so it is recorded and deleted instead of retried).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, get_args

from crm_to_books.errors import InvalidRequest
from crm_to_books.models import ImportRequest, Source
from crm_to_books.topology import DETAIL_IMPORT_REQUESTED

CORRELATION_HEADER = "X-Correlation-Id"
CORRELATION_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"  # visible ASCII: safe in logs and headers
CORRELATION_ID_RULE = "must be 1 to 128 visible ASCII characters"
# For `Logger.inject_lambda_context`: the caller's header, else the API Gateway request id,
# else the first SQS message id (each record then sets its own), else the schedule's event id.
CORRELATION_ID_PATH = (
    'headers."X-Correlation-Id" || headers."x-correlation-id" || requestContext.requestId'
    " || Records[0].messageId || id"
)

_SOURCES = frozenset(get_args(Source)) - {"eventbridge"}  # an event says so by its shape
_CORRELATION_ID = re.compile(CORRELATION_ID_PATTERN)  # fullmatch: `$` alone lets a "\n" end it
# AWS partitions: aws, aws-cn, aws-us-gov, aws-iso, aws-iso-b, aws-eusc, ...
_PARTITION = re.compile(r"^aws(-[a-z]+)*$")


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A header's value, whatever case the client used (REST API events keep the client's)."""
    if not headers:
        return None
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def http_correlation_id(headers: Mapping[str, str] | None, request_id: str | None) -> str | None:
    value = header(headers, CORRELATION_HEADER)
    if value is None:
        return request_id
    if not _CORRELATION_ID.fullmatch(value):
        raise InvalidRequest(CORRELATION_HEADER, CORRELATION_ID_RULE)
    return value


def from_http(
    *,
    kind: str,
    organization_id: str,
    crm_id: str,
    headers: Mapping[str, str] | None,
    request_id: str | None,
) -> ImportRequest:
    """`POST /v1/crm/{kind}/{crm_id}/import?organization_id=` from an API Gateway proxy event."""
    return ImportRequest.parse(
        kind=kind,
        organization_id=organization_id,
        crm_id=crm_id,
        source="http",
        correlation_id=http_correlation_id(headers, request_id),
    )


def is_sqs_event(event: Mapping[str, Any]) -> bool:
    records = event.get("Records")
    return (
        isinstance(records, list)
        and bool(records)
        and all(isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records)
    )


def from_sqs_record(record: Mapping[str, Any], queue_kind: str) -> ImportRequest:
    """One message of `queue_kind`'s queue: `{"organization_id", "crm_id"}` or an EventBridge
    `Import Requested` event. A message for another kind is refused: its queue is elsewhere."""
    body = _json_object(record.get("body"))
    if _is_eventbridge(body):
        return _from_eventbridge(body, record, queue_kind)
    kind = body.get("kind", queue_kind)
    if kind != queue_kind:
        raise InvalidRequest("kind", f"this queue takes {queue_kind} imports, got {kind!r}")
    return ImportRequest.parse(
        kind=queue_kind,
        organization_id=body.get("organization_id"),
        crm_id=body.get("crm_id"),
        source=_message_source(record),
        correlation_id=_message_id(record),
    )


def salvage(record: Mapping[str, Any], queue_kind: str) -> ImportRequest | None:
    """The import a poison message was about, when it names a valid ledger key, so the refusal
    can be recorded where the sender will look; None when there is no such key."""
    try:
        body = _json_object(record.get("body"))
    except InvalidRequest:
        return None
    eventbridge = _is_eventbridge(body)
    fields = body.get("detail") if eventbridge else body
    if not isinstance(fields, dict):
        return None
    try:
        return ImportRequest.parse(
            kind=fields.get("kind", None if eventbridge else queue_kind),
            organization_id=fields.get("organization_id"),
            crm_id=fields.get("crm_id"),
            source="eventbridge" if eventbridge else _message_source(record),
            correlation_id=_message_id(record),
        )
    except InvalidRequest:
        return None


def queue_url(event_source_arn: str, endpoint_url: str) -> str:
    """The queue URL for `arn:{partition}:sqs:{region}:{account}:{name}` (any partition: aws,
    aws-cn, aws-us-gov, ...) on the SQS client's endpoint (AWS's or an emulator's), so no
    `GetQueueUrl` call is needed."""
    parts = event_source_arn.split(":")
    if (
        len(parts) != 6
        or parts[0] != "arn"
        or not _PARTITION.match(parts[1])
        or parts[2] != "sqs"
        or not all(parts[3:])
    ):
        raise ValueError(f"not an SQS queue ARN: {event_source_arn!r}")
    return f"{endpoint_url.rstrip('/')}/{parts[4]}/{parts[5]}"


def _json_object(text: object) -> dict[str, Any]:
    if not isinstance(text, str):
        raise InvalidRequest("body", "is missing")
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can read
        raise InvalidRequest("body", "is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body", "must be a JSON object")
    return body


def _is_eventbridge(body: Mapping[str, Any]) -> bool:
    return "detail-type" in body or "detail" in body


def _from_eventbridge(
    body: Mapping[str, Any], record: Mapping[str, Any], queue_kind: str
) -> ImportRequest:
    detail_type = body.get("detail-type")
    if detail_type != DETAIL_IMPORT_REQUESTED:
        raise InvalidRequest(
            "detail-type", f"must be {DETAIL_IMPORT_REQUESTED!r}, got {detail_type!r}"
        )
    detail = body.get("detail")
    if not isinstance(detail, dict):
        raise InvalidRequest("detail", "must be a JSON object")
    event_id = body.get("id")
    correlation_id = (
        event_id
        if isinstance(event_id, str) and _CORRELATION_ID.fullmatch(event_id)
        else _message_id(record)
    )
    try:
        request = ImportRequest.parse(
            kind=detail.get("kind"),
            organization_id=detail.get("organization_id"),
            crm_id=detail.get("crm_id"),
            source="eventbridge",
            correlation_id=correlation_id,
        )
    except InvalidRequest as exc:
        raise InvalidRequest(f"detail.{exc.field}", exc.reason) from None
    if request.kind != queue_kind:
        raise InvalidRequest(
            "detail.kind", f"this queue takes {queue_kind} imports, got {request.kind!r}"
        )
    return request


def _message_source(record: Mapping[str, Any]) -> Source:
    """Who queued the message: the `source` attribute (the re-drive job, the async HTTP path and
    `crm-to-books bulk` set it) when it names a source, else "sqs"."""
    attribute = (record.get("messageAttributes") or {}).get("source") or {}
    value = attribute.get("stringValue") if isinstance(attribute, dict) else None
    return value if value in _SOURCES else "sqs"  # type: ignore[return-value]


def _message_id(record: Mapping[str, Any]) -> str | None:
    """The sender's correlation id (`Importer.enqueue` sets it), else the SQS message id."""
    attribute = (record.get("messageAttributes") or {}).get("correlation_id") or {}
    value = attribute.get("stringValue") if isinstance(attribute, dict) else None
    if isinstance(value, str) and _CORRELATION_ID.fullmatch(value):
        return value
    message_id = record.get("messageId")
    return message_id if isinstance(message_id, str) else None
