"""The HTTP API: every route, validated by Powertools, every error rendered in one place.

One resolver holds every route, so each function publishes the same OpenAPI document; API
Gateway sends a function only its own routes, and `import_kinds` says which kinds it imports.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Collection, Mapping
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn
from aws_lambda_powertools.event_handler.openapi.params import Header, Path, Query
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from pydantic import BaseModel, ConfigDict, Field

from crm_to_books import __version__, triggers
from crm_to_books.entities import KINDS, Kind, get_entity
from crm_to_books.errors import (
    ConfigurationError,
    Deferred,
    InProgress,
    InvalidRequest,
    NotFound,
    RateLimited,
    RetryQueued,
    ServiceError,
    ZohoRefused,
)
from crm_to_books.models import ID_PATTERN, ImportError_, ImportRecord, ImportRequest, Status
from crm_to_books.observability import logger
from crm_to_books.ports import HooksLike, ImporterLike, OutcomeLike
from crm_to_books.topology import HOOK_MAX_IDS, HOOK_PATH

SQS_MAX_DELAY_SECONDS = 900  # SQS DelaySeconds limit; the queue re-delays past it
ASYNC_PREFERENCE = "respond-async"
JSON = content_types.APPLICATION_JSON

OrganizationId = Annotated[
    str, Query(pattern=ID_PATTERN, description="Books organization id, 1 to 19 digits")
]
CrmId = Annotated[str, Path(pattern=ID_PATTERN, description="CRM record id, 1 to 19 digits")]
KindPath = Annotated[Kind, Path(description="what to import; Zoho's own path segment")]


# Response bodies, for the OpenAPI document and to build the answers from one shape.
class ErrorBody(BaseModel):
    code: int = Field(description="service error code (see docs/api.md)")
    message: str = Field(description="the field and the reason, or what happened and what next")


class ImportAnswer(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    code: int = 0
    message: str = "success"
    data: dict[str, Any] = Field(description="Zoho's `data`; ids are strings")
    import_: ImportRecord = Field(alias="import")


class RecordAnswer(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    import_: ImportRecord = Field(alias="import")


class AcceptedAnswer(RecordAnswer):
    code: int | None = Field(default=None, description="1202 kept for later, 1203 in progress")
    message: str | None = Field(default=None, description="what is known, and what comes next")


class ZohoSaid(BaseModel):
    code: int | None
    message: str


class RefusedAnswer(ErrorBody):
    model_config = ConfigDict(populate_by_name=True)

    zoho: ZohoSaid
    import_: ImportRecord = Field(alias="import")


class DeferredAnswer(ErrorBody):
    model_config = ConfigDict(populate_by_name=True)

    import_: ImportRecord | None = Field(default=None, alias="import")


class ImportPage(BaseModel):
    imports: list[ImportRecord]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: done")


class Health(BaseModel):
    status: str = "ok"
    version: str


def _doc(description: str, model: type[BaseModel], *headers: str) -> OpenAPIResponse:
    response: OpenAPIResponse = {
        "description": description,
        "content": {JSON: {"model": model}},
    }
    if headers:
        response["headers"] = {h: {"schema": {"type": "string"}} for h in headers}
    return response


_ERRORS: dict[int, OpenAPIResponse] = {
    400: _doc("Invalid request: the message names the field (code 1100)", ErrorBody),
    403: _doc("Unknown organization (code 1101)", ErrorBody),
    500: _doc("Configuration or internal error (codes 1001, 1000)", ErrorBody),
}
_IMPORT_RESPONSES: dict[int, OpenAPIResponse] = {
    200: _doc("Imported now, or already imported (answered from the ledger)", ImportAnswer),
    202: _doc(
        "Accepted: queued (`Prefer: respond-async`), kept for a later attempt (code 1202), or "
        "in progress in another request (code 1203)",
        AcceptedAnswer,
        "Location",
        "Retry-After",
    ),
    **_ERRORS,
    422: _doc("Zoho refused the import; recorded as failed (code 1422)", RefusedAnswer),
    429: _doc("Rate limited; nothing imported (code 1429)", DeferredAnswer, "Retry-After"),
    503: _doc(
        "Zoho unavailable or connection broken; queued or parked for retry (code 1503)",
        DeferredAnswer,
        "Retry-After",
        "Location",
    ),
}


def build_app(
    importer: ImporterLike, import_kinds: Collection[str] = (), hooks: HooksLike | None = None
) -> APIGatewayRestResolver:
    """The resolver with every route. `import_kinds`: the kinds this function imports (an
    import of another kind is refused); the status API imports none. `hooks`: the function
    that receives Zoho CRM's notifications; the others refuse them."""
    app = APIGatewayRestResolver(enable_validation=True)
    _import_route(app, importer, import_kinds)
    _status_routes(app, importer)
    _hook_route(app, hooks)
    _service_routes(app, importer)
    # Domain errors become HTTP answers here and in `error_response`, nowhere else.
    app.exception_handler(RequestValidationError)(_invalid)
    app.exception_handler(ServiceError)(error_response)
    app.exception_handler(Exception)(_unexpected)

    @app.not_found
    def no_route(exc: NotFoundError) -> Response[dict[str, Any]]:
        event = app.current_event
        return error_response(unroutable(event.http_method, event.path))

    return app


def _import_route(
    app: APIGatewayRestResolver, importer: ImporterLike, import_kinds: Collection[str]
) -> None:
    @app.post(
        "/v1/crm/<kind>/<crm_id>/import",
        summary="Import a CRM record into Books (Zoho's path, minus OAuth)",
        operation_id="importRecord",
        tags=["imports"],
        responses=_IMPORT_RESPONSES,
    )
    def import_record(
        kind: KindPath,
        crm_id: CrmId,
        organization_id: OrganizationId,
        prefer: Annotated[
            str | None, Header(alias="Prefer", description="`respond-async`: answer 202")
        ] = None,
        correlation_id: Annotated[
            str | None,
            Header(alias=triggers.CORRELATION_HEADER, pattern=triggers.CORRELATION_ID_PATTERN),
        ] = None,
    ) -> Response[dict[str, Any]]:
        if kind not in import_kinds:
            served = ", ".join(import_kinds) or "no"
            raise InvalidRequest("kind", f"this function imports {served} records, not {kind}")
        event = app.current_event
        if event.body:  # Zoho's import takes none: a body is a caller's mistake, or a probe
            raise InvalidRequest("body", "must be empty: the import takes no request body")
        importer.settings.organization(organization_id)
        request = triggers.from_http(
            kind=kind,
            organization_id=organization_id,
            crm_id=crm_id,
            headers=event.headers,
            request_id=event.request_context.request_id,
        )
        logger.set_correlation_id(request.correlation_id)
        location = _location(event.raw_event, request)
        if _prefers_async(prefer):
            return _accept(importer, request, location)
        return _answer(importer.run(request, sync=True), location)


def _status_routes(app: APIGatewayRestResolver, importer: ImporterLike) -> None:
    @app.get(
        "/v1/imports/<kind>/<crm_id>",
        summary="One import's ledger record",
        operation_id="getImport",
        tags=["imports"],
        responses={
            200: _doc("The record", RecordAnswer),
            **_ERRORS,
            404: _doc("No import recorded (code 1104)", ErrorBody),
        },
    )
    def get_import(
        kind: KindPath, crm_id: CrmId, organization_id: OrganizationId
    ) -> Response[dict[str, Any]]:
        importer.settings.organization(organization_id)
        record = importer.ledger.get(organization_id, kind, crm_id)
        if record is None:
            raise NotFound(
                f"no import recorded for {kind} {crm_id} in organization {organization_id}"
            )
        return _json(200, {"import": record.public()})

    @app.get(
        "/v1/imports",
        summary="An organization's imports, paginated",
        operation_id="listImports",
        tags=["imports"],
        responses={200: _doc("One page", ImportPage), **_ERRORS},
    )
    def list_imports(
        organization_id: OrganizationId,
        status: Annotated[Status | None, Query()] = None,
        kind: Annotated[Kind | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 50,
        cursor: Annotated[
            str | None, Query(max_length=2048, description="`next_cursor` of the previous page")
        ] = None,
    ) -> Response[dict[str, Any]]:
        importer.settings.organization(organization_id)
        records, next_cursor = importer.ledger.list(
            organization_id,
            status=status.value if status else None,
            kind=kind,
            limit=limit,
            cursor=cursor,
        )
        return _json(200, {"imports": [r.public() for r in records], "next_cursor": next_cursor})


class CrmNotification(BaseModel):
    """The body Zoho CRM posts (documented here; `hooks.py` reads it, so that a missing or wrong
    token is a 401/403, not a validation error)."""

    model_config = ConfigDict(extra="allow")

    module: str = Field(max_length=100, description="the CRM module, e.g. Accounts")
    ids: list[str] = Field(max_length=HOOK_MAX_IDS, description="record ids, 1 to 19 digits")
    operation: str = Field(description="insert and update are queued; delete is ignored")
    channel_id: str
    token: str | None = Field(default=None, description="the channel's token")


class HookAnswer(BaseModel):
    queued: int = Field(description="imports queued, one per id")
    ignored: dict[str, int] = Field(
        description="ids not queued, by reason: delete, other_operation, unknown_module, "
        "module_not_watched, malformed_id, unknown_organization"
    )


def _hook_route(app: APIGatewayRestResolver, hooks: HooksLike | None) -> None:
    @app.post(
        HOOK_PATH,
        summary="Zoho CRM notifications (Notification API): each id becomes a queued import",
        operation_id="zohoCrmNotification",
        tags=["hooks"],
        # Zoho cannot sign requests: the channel's token in the body is the proof (the
        # document says so: `openapi_document`).
        responses={
            200: _doc("Verified and queued (or ignored, counted)", HookAnswer),
            400: _ERRORS[400],
            401: _doc("No channel token (code 1401); nothing queued", ErrorBody),
            403: _doc("Unknown channel or wrong token (code 1403); nothing queued", ErrorBody),
            413: _doc("Body over 256 KiB (code 1413)", ErrorBody),
            500: _ERRORS[500],
            503: _doc("Imports could not be queued (code 1504)", ErrorBody),
        },
    )
    def zoho_crm_notification() -> Response[dict[str, Any]]:
        if hooks is None:
            raise ConfigurationError("this function does not receive CRM notifications")
        event = app.current_event
        body: str | bytes | None = event.body
        if event.is_base64_encoded and event.body:  # bytes, not necessarily text
            body = base64.b64decode(event.body)
        return _json(200, hooks.receive(body, event.request_context.request_id))


def _service_routes(app: APIGatewayRestResolver, importer: ImporterLike) -> None:
    document: list[str] = []  # built on first request: the schema walk costs cold-start time

    @app.get(
        "/v1/health",
        summary="The function is up and configured",
        operation_id="health",
        tags=["service"],
        responses={200: _doc("Healthy", Health), 500: _ERRORS[500]},
    )
    def health() -> Response[dict[str, Any]]:
        importer.settings  # noqa: B018  (validates the configuration: ConfigurationError is a 500)
        return _json(200, Health(version=__version__).model_dump())

    @app.get(
        "/v1/openapi.json",
        summary="This OpenAPI document",
        operation_id="openapi",
        tags=["service"],
        responses={
            200: {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}}
        },
    )
    def openapi() -> Response[str]:
        if not document:
            document.append(openapi_document(app))
        return Response(200, JSON, document[0])


# Our routes' shapes with any segment: a path of that shape that no route matched has a kind or
# an id with characters the router does not take (a NUL, a newline, a quote, ...).
ID_RULE = "must be a string of 1 to 19 digits"
_ROUTE_SHAPES = (
    ("POST", re.compile(r"/v1/crm/(?P<kind>[^/]+)/(?P<crm_id>[^/]+)/import/?")),
    ("GET", re.compile(r"/v1/imports/(?P<kind>[^/]+)/(?P<crm_id>[^/]+)/?")),
)


def unroutable(method: str, path: str) -> ServiceError:
    """Why no route took `method path`: the field at fault when the path has one of our routes'
    shapes, else no such route. Echoes only the start of what the caller sent."""
    for shape_method, shape in _ROUTE_SHAPES:
        found = shape.fullmatch(path)
        if found and method == shape_method:
            kind, crm_id = found["kind"], found["crm_id"]
            if kind not in KINDS:
                kinds = ", ".join(KINDS)
                return InvalidRequest("kind", f"must be one of {kinds}, got {kind[:40]!r}")
            return InvalidRequest("crm_id", f"{ID_RULE}, got {crm_id[:40]!r}")
    return NotFound(f"path: no route {method[:10]} {path[:100]}")


def _invalid(exc: RequestValidationError) -> Response[dict[str, Any]]:
    return error_response(invalid_request(exc))


def _unexpected(exc: Exception) -> Response[dict[str, Any]]:
    logger.exception("unexpected error")
    return error_response(ServiceError("internal error; the logs have the details"))


def error_response(
    exc: ServiceError, record: ImportRecord | None = None, location: str | None = None
) -> Response[dict[str, Any]]:
    """The one place a domain error becomes an HTTP answer: `{"code", "message", ...}`."""
    body = exc.body()
    if record is not None:
        body["import"] = record.public()
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited | RetryQueued | Deferred | InProgress):
        headers["Retry-After"] = str(_seconds(exc.retry_after))
    if location:
        headers["Location"] = location
    log = logger.error if exc.http_status >= 500 else logger.info
    said = "request deferred" if exc.http_status < 400 else "request refused"
    log(said, extra={"code": exc.code, "http_status": exc.http_status})
    return _json(exc.http_status, body, headers)


def invalid_request(exc: RequestValidationError) -> InvalidRequest:
    """Powertools' validation error as our InvalidRequest: the first field and why."""
    err: Mapping[str, Any] = exc.errors()[0] if exc.errors() else {}
    loc = err.get("loc") or ("request",)
    field = str(loc[-1])
    kind, ctx = err.get("type", ""), err.get("ctx") or {}
    if kind == "missing":
        reason = "is required"
    elif kind == "string_pattern_mismatch" and ctx.get("pattern") == ID_PATTERN:
        reason = ID_RULE
    elif (
        kind == "string_pattern_mismatch" and ctx.get("pattern") == triggers.CORRELATION_ID_PATTERN
    ):
        reason = triggers.CORRELATION_ID_RULE
    elif kind in {"literal_error", "enum"}:
        reason = f"must be one of {str(ctx.get('expected', '')).replace(chr(39), '')}"
    else:
        reason = str(err.get("msg", "is invalid")).lower()
    got = err.get("input")
    if isinstance(got, str) and kind != "missing":
        reason += f", got {got[:40]!r}"
    if field.lower() == triggers.CORRELATION_HEADER.lower():
        field = triggers.CORRELATION_HEADER
    return InvalidRequest(field, reason)


def openapi_document(app: APIGatewayRestResolver) -> str:
    """Powertools' document for every route, without its default 422 (our validation
    errors answer 400 with `ErrorBody`; our 422 is Zoho's refusal)."""
    doc = json.loads(
        app.get_openapi_json_schema(
            title="crm-to-books",
            version=__version__,
            description=(
                "Imports Zoho CRM records into Zoho Books through Zoho Books' CRM integration. "
                "The import path mirrors Zoho's own. Kinds: " + ", ".join(KINDS) + "."
            ),
            security_schemes={
                "sigv4": APIKey(
                    name="Authorization",
                    in_=APIKeyIn.header,
                    description="AWS IAM (Signature Version 4)",
                )
            },
            security=[{"sigv4": []}],
        )
    )
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422", {})
            if "HTTPValidationError" in json.dumps(answer):
                del operation["responses"]["422"]
    schemas = doc.get("components", {}).get("schemas", {})
    hook = doc.get("paths", {}).get(HOOK_PATH, {}).get("post")
    if hook is not None:  # no signature: Powertools leaves out an empty `security`
        hook["security"] = []
        hook["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/CrmNotification"}}},
        }
        schemas["CrmNotification"] = CrmNotification.model_json_schema()
    for name in ("HTTPValidationError", "ResponseValidationError", "ValidationError"):
        schemas.pop(name, None)
    return json.dumps(doc, separators=(",", ":"))


def _accept(importer: ImporterLike, request: ImportRequest, location: str) -> Response[Any]:
    record = importer.accept(request)
    if record.status == Status.SUCCEEDED:  # already, or done while this request queued it
        return _json(200, _success(record, None))
    return _json(
        202,
        {"import": record.public()},
        {"Location": location, "Preference-Applied": ASYNC_PREFERENCE},
    )


# Categories of an attempt that Zoho (or the connection to it) ended: a 503. Anything else kept
# for later was our own wait (the rate limiter, a settle time, another attempt): a 202.
_ZOHO_CATEGORIES = frozenset(
    {
        "unknown_outcome",
        "zoho_unavailable",
        "connection_broken",
        "auth",
        "scope_missing",
        "lookup_refused",
        "lookup_unprovable",
    }
)


def _answer(outcome: OutcomeLike, location: str) -> Response[Any]:
    """A synchronous import's outcome as the documented answer (docs/api.md). Each says only
    what is known: 429 only when nothing was recorded (nothing imported, nothing owed)."""
    record = outcome.record
    if record is None:  # only a queued import's attempt may end before reading the ledger
        raise RuntimeError("a synchronous import's outcome has no record")
    if outcome.result in {"imported", "already_imported"}:
        return _json(200, _success(record, outcome.zoho_data))
    error = outcome.error
    if outcome.result == "failed":
        return error_response(
            ZohoRefused(
                error.message if error else "no reason given",
                error.zoho_code if error else None,
                error.http_status if error else None,
            ),
            record,
        )
    wait = _seconds(outcome.retry_after)
    if outcome.result == "in_progress":
        return error_response(
            InProgress(
                "Another request is importing this record and has not finished yet; poll the "
                "Location for its outcome.",
                wait,
            ),
            record,
            location,
        )
    if not outcome.recorded:
        message = (
            f"Rate limited ({_reason(error, 'no request slot with Zoho for this organization')})."
            f" Nothing was imported; retry after {wait} seconds."
        )
        kept = record if record.status is not Status.IN_PROGRESS else None  # as it was before
        return error_response(RateLimited(message, wait), kept)
    if outcome.parked:  # the re-drive job holds it
        then = f"after {record.next_attempt_at}" if record.next_attempt_at else "later"
        next_step = f"It is parked and will be tried again automatically {then}."
    elif outcome.queued:
        next_step = f"It is queued for another attempt in {wait} s."
    else:  # another attempt's message or lease holds it
        next_step = f"Another attempt holds it; the next is due in about {wait} s."
    by_zoho = (
        error is not None
        and not outcome.deferred  # a wait of our own this time, whatever failed before
        and (error.category in _ZOHO_CATEGORIES or error.http_status is not None)
    )
    known = (record.detail or "").strip() or (
        f"Zoho could not complete the import now ({_reason(error, 'unavailable')})."
        if by_zoho
        else f"Not imported yet ({_reason(error, 'waiting')})."
    )
    message = f"{known} {next_step} Poll the Location for its status."
    exc = RetryQueued(message, wait) if by_zoho else Deferred(message, wait)
    return error_response(exc, record, location)


def _success(record: ImportRecord, zoho_data: Mapping[str, Any] | None) -> dict[str, Any]:
    data = (
        dict(zoho_data)
        if zoho_data is not None
        else {get_entity(record.kind).books_id_key: record.books_id}
    )
    return ImportAnswer(data=data, import_=record).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )


def _reason(error: ImportError_ | None, default: str) -> str:
    if error is None:
        return default
    said = f"Zoho code {error.zoho_code}: " if error.zoho_code is not None else ""
    return said + error.message.rstrip(" .")


def _seconds(value: float | None) -> int:
    return max(0, math.ceil(value)) if value is not None else 60


def _prefers_async(prefer: str | None) -> bool:
    """RFC 7240: `Prefer` is a list of preferences, each possibly with `;` parameters."""
    if not prefer:
        return False
    return any(p.split(";")[0].strip().lower() == ASYNC_PREFERENCE for p in prefer.split(","))


def _location(raw_event: Mapping[str, Any], request: ImportRequest) -> str:
    """Where to poll, including the stage or base path API Gateway saw (`requestContext.path`
    keeps it, `path` does not), so the URL works as the client called it."""
    path = str(raw_event.get("path") or "")
    full = str((raw_event.get("requestContext") or {}).get("path") or path)
    base = full[: -len(path)] if path and full.endswith(path) else ""
    return (
        f"{base}/v1/imports/{request.kind}/{request.crm_id}"
        f"?organization_id={request.organization_id}"
    )


def _json(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Response[Any]:
    return Response(status, JSON, dict(body), headers=headers)
