"""The HTTP API against a fake importer: every route, every documented answer.

Every answer is checked against the OpenAPI document's schema for its status code, so a body
that drifts from the document fails here.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from crm_to_books import api, topology
from crm_to_books.errors import ConfigurationError
from crm_to_books.models import ImportError_, ImportRecord, Status
from tests.support.fake_importer import NOW, ORG, FakeImporter, books_id
from tests.support.lambda_events import LambdaContext, api_event

DOC: dict[str, Any] = json.loads(api.openapi_document(api.build_app(FakeImporter())))
IMPORT = "/v1/crm/{kind}/{crm_id}/import"
CRM = "4876876000000624001"


class Answer:
    def __init__(self, raw: dict[str, Any]) -> None:
        self.status: int = raw["statusCode"]
        self.headers = {k: v[0] for k, v in raw["multiValueHeaders"].items()}
        self.body: dict[str, Any] = json.loads(raw["body"])


def call(
    app: Any,
    method: str,
    path: str,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    answer = Answer(app.resolve(api_event(method, path, query, headers), LambdaContext()))
    _assert_documented(method, path, answer)
    return answer


def _assert_documented(method: str, path: str, answer: Answer) -> None:
    templates = [t for t in DOC["paths"] if re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", t), path)]
    if not templates or method.lower() not in DOC["paths"][templates[0]]:
        assert answer.status == 404 and set(answer.body) == {"code", "message"}
        return
    responses = DOC["paths"][templates[0]][method.lower()]["responses"]
    assert str(answer.status) in responses, f"{answer.status} is not documented for {path}"
    schema = responses[str(answer.status)]["content"]["application/json"]["schema"]
    Draft202012Validator({**schema, "components": DOC["components"]}).validate(answer.body)


@pytest.fixture
def importer() -> FakeImporter:
    return FakeImporter()


@pytest.fixture
def app(importer: FakeImporter) -> Any:
    return api.build_app(importer, import_kinds=("account", "item"))


def import_path(kind: str = "account", crm_id: str = CRM) -> str:
    return f"/v1/crm/{kind}/{crm_id}/import"


# --- POST /v1/crm/{kind}/{crm_id}/import -------------------------------------------------------
def test_a_sync_import_answers_zohos_shape_plus_the_ledger_record(
    app: Any, importer: FakeImporter
) -> None:
    answer = call(app, "POST", import_path(), {"organization_id": ORG})

    assert answer.status == 200
    assert answer.body["code"] == 0 and answer.body["message"] == "success"
    assert answer.body["data"]["contact_id"] == books_id(CRM)
    assert answer.body["import"]["status"] == "succeeded"
    [(name, (request, _))] = importer.calls
    assert name == "run" and request.source == "http"
    assert request.key == (ORG, "account", CRM)


def test_items_answer_with_item_id(app: Any) -> None:
    answer = call(app, "POST", import_path("item"), {"organization_id": ORG})
    assert answer.status == 200 and isinstance(answer.body["data"]["item_id"], str)


def test_an_already_imported_record_answers_200_with_its_books_id(app: Any) -> None:
    first = call(app, "POST", import_path(), {"organization_id": ORG})
    again = call(app, "POST", import_path(), {"organization_id": ORG})
    assert again.status == 200
    assert again.body["data"] == {"contact_id": first.body["import"]["books_id"]}


def test_the_callers_correlation_id_reaches_the_import(app: Any, importer: FakeImporter) -> None:
    call(app, "POST", import_path(), {"organization_id": ORG}, {"x-correlation-id": "order-42"})
    assert importer.calls[0][1][0].correlation_id == "order-42"


@pytest.mark.parametrize("prefer", ["respond-async", "wait=10, Respond-Async", "respond-async;x=1"])
def test_respond_async_queues_and_answers_202_with_a_location(
    app: Any, importer: FakeImporter, prefer: str
) -> None:
    answer = call(app, "POST", import_path(), {"organization_id": ORG}, {"Prefer": prefer})

    assert answer.status == 202
    assert answer.headers["Location"] == f"/prod/v1/imports/account/{CRM}?organization_id={ORG}"
    assert answer.headers["Preference-Applied"] == "respond-async"
    assert answer.body["import"]["status"] == "queued"
    assert importer.names() == ["accept", "enqueue"]
    assert importer.calls[1][1][1] == 0  # no delay


def test_respond_async_for_an_imported_record_answers_200_and_queues_nothing(
    app: Any, importer: FakeImporter
) -> None:
    call(app, "POST", import_path(), {"organization_id": ORG})
    answer = call(app, "POST", import_path(), {"organization_id": ORG}, {"Prefer": "respond-async"})
    assert answer.status == 200 and answer.body["data"]["contact_id"]
    assert "enqueue" not in importer.names()


def test_zoho_refusing_the_import_answers_422_with_what_zoho_said(
    app: Any, importer: FakeImporter
) -> None:
    error = ImportError_(
        http_status=400, zoho_code=1002, message="Record does not exist", category="permanent"
    )
    importer.script(CRM, result="failed", error=error)

    answer = call(app, "POST", import_path(), {"organization_id": ORG})

    assert answer.status == 422
    assert answer.body["code"] == 1422
    assert answer.body["message"] == (
        "Zoho refused the import: Record does not exist (Zoho code 1002, HTTP 400). "
        "The import is recorded as failed and will not be retried."
    )
    assert answer.body["zoho"] == {"code": 1002, "message": "Record does not exist"}
    assert answer.body["import"]["status"] == "failed"
    assert "enqueue" not in importer.names()


def test_rate_limited_answers_429_with_retry_after_in_whole_seconds(
    app: Any, importer: FakeImporter
) -> None:
    error = ImportError_(message="the per-minute limit is used up", category="rate_limited")
    importer.script(CRM, result="retry_later", retry_after=2.2, rate_limited=True, error=error)

    answer = call(app, "POST", import_path(), {"organization_id": ORG})

    assert answer.status == 429
    assert answer.headers["Retry-After"] == "3"
    assert answer.body["code"] == 1429
    assert (
        "per-minute limit" in answer.body["message"] and "retry after 3" in answer.body["message"]
    )
    assert answer.body["import"]["status"] == "retrying"
    assert "enqueue" not in importer.names()


def test_zoho_unavailable_queues_the_retry_and_answers_503(
    app: Any, importer: FakeImporter
) -> None:
    error = ImportError_(http_status=502, message="Bad Gateway", category="unknown_outcome")
    importer.script(CRM, result="retry_later", retry_after=9.4, error=error)

    answer = call(app, "POST", import_path(), {"organization_id": ORG})

    assert answer.status == 503
    assert answer.headers["Retry-After"] == "10"
    assert answer.headers["Location"].endswith(f"/v1/imports/account/{CRM}?organization_id={ORG}")
    assert answer.body["code"] == 1503
    assert "Bad Gateway" in answer.body["message"] and "queued" in answer.body["message"]
    assert importer.names() == ["run", "enqueue"]  # the engine queued it: a message holds it


def test_an_import_kept_for_our_own_wait_answers_202_not_503(
    app: Any, importer: FakeImporter
) -> None:
    # Given an attempt that owes a look-up and met this service's own rate limiter
    error = ImportError_(message="the per-minute limit is used up", category="rate_limited")
    importer.script(
        CRM, result="retry_later", retry_after=42, rate_limited=True, recorded=True, error=error
    )

    answer = call(app, "POST", import_path(), {"organization_id": ORG})

    # Then it is accepted and kept, not blamed on Zoho, and never "nothing was imported"
    assert answer.status == 202 and answer.body["code"] == 1202
    assert answer.headers["Retry-After"] == "42" and "Location" in answer.headers
    assert "Nothing was imported" not in answer.body["message"]
    assert answer.body["import"]["status"] == "retrying"


def test_a_parked_import_is_left_to_the_redrive_job(app: Any, importer: FakeImporter) -> None:
    error = ImportError_(
        message="connection 'default' needs attention", category="connection_broken"
    )
    importer.script(CRM, result="retry_later", retry_after=300, parked=True, error=error)

    answer = call(app, "POST", import_path(), {"organization_id": ORG})

    assert answer.status == 503 and answer.headers["Retry-After"] == "300"
    assert "parked" in answer.body["message"]
    assert importer.names() == ["run"]


REJECTED = [
    ("POST", "/v1/crm/invoice/1/import", {"organization_id": ORG}, {}, 400, "kind: must be one of"),
    (
        "POST",
        f"/v1/crm/account/{'1' * 20}/import",
        {"organization_id": ORG},
        {},
        400,
        "crm_id: must be a string of 1 to 19 digits",
    ),
    ("POST", "/v1/crm/account/12a/import", {"organization_id": ORG}, {}, 400, "crm_id: must be"),
    ("POST", import_path(), {}, {}, 400, "organization_id: is required"),
    ("POST", import_path(), {"organization_id": "-1"}, {}, 400, "organization_id: must be"),
    ("POST", import_path(), {"organization_id": "999"}, {}, 403, "organization_id: 999 is not"),
    (
        "POST",
        import_path("vendor"),
        {"organization_id": ORG},
        {},
        400,
        "kind: this function imports account, item records, not vendor",
    ),
    (
        "POST",
        import_path(),
        {"organization_id": ORG},
        {"X-Correlation-Id": "x" * 129},
        400,
        "X-Correlation-Id: must be 1 to 128 visible ASCII characters",
    ),
    ("GET", f"/v1/imports/account/{'9' * 20}", {"organization_id": ORG}, {}, 400, "crm_id: must"),
    ("GET", f"/v1/imports/account/{CRM}", {"organization_id": "999"}, {}, 403, "organization_id"),
    ("GET", "/v1/imports", {}, {}, 400, "organization_id: is required"),
    ("GET", "/v1/imports", {"organization_id": "999"}, {}, 403, "organization_id: 999"),
    ("GET", "/v1/imports", {"organization_id": ORG, "limit": "0"}, {}, 400, "limit: "),
    ("GET", "/v1/imports", {"organization_id": ORG, "limit": "101"}, {}, 400, "limit: "),
    ("GET", "/v1/imports", {"organization_id": ORG, "limit": "ten"}, {}, 400, "limit: "),
    ("GET", "/v1/imports", {"organization_id": ORG, "status": "done"}, {}, 400, "status: must be"),
    ("GET", "/v1/imports", {"organization_id": ORG, "kind": "invoice"}, {}, 400, "kind: must be"),
]


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "status", "message"),
    REJECTED,
    ids=[f"{r[0]} {r[1]} {r[2]} {r[5]}" for r in REJECTED],
)
def test_a_rejected_request_names_the_field_and_reaches_nothing(
    app: Any,
    importer: FakeImporter,
    method: str,
    path: str,
    query: dict[str, str],
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    answer = call(app, method, path, query, headers)

    assert answer.status == status
    assert answer.body["code"] == (1101 if status == 403 else 1100)
    assert answer.body["message"].startswith(message)
    assert importer.calls == []


def test_an_import_with_a_body_is_refused_and_reaches_nothing(
    app: Any, importer: FakeImporter
) -> None:
    event = api_event("POST", import_path(), {"organization_id": ORG})
    event["body"] = '{"contact_name": "Acme"}'  # written for some other API: Zoho's takes none

    answer = Answer(app.resolve(event, LambdaContext()))

    assert answer.status == 400
    assert answer.body == {
        "code": 1100,
        "message": "body: must be empty: the import takes no request body",
    }
    assert importer.calls == []


# --- GET /v1/imports/{kind}/{crm_id} and /v1/imports --------------------------------------------
def test_one_record_is_read_from_the_ledger(app: Any) -> None:
    call(app, "POST", import_path(), {"organization_id": ORG}, {"Prefer": "respond-async"})
    answer = call(app, "GET", f"/v1/imports/account/{CRM}", {"organization_id": ORG})
    assert answer.status == 200 and answer.body["import"]["status"] == "queued"


def test_an_unknown_record_is_a_404_that_says_what_was_looked_for(app: Any) -> None:
    answer = call(app, "GET", "/v1/imports/vendor/42", {"organization_id": ORG})
    assert answer.status == 404
    assert answer.body == {
        "code": 1104,
        "message": f"no import recorded for vendor 42 in organization {ORG}",
    }


def _seed(importer: FakeImporter, count: int) -> None:
    for n in range(count):
        importer.ledger.put(
            ImportRecord(
                organization_id=ORG,
                kind="contact" if n % 2 else "item",
                crm_id=str(1000 + n),
                status=Status.FAILED if n % 3 == 0 else Status.SUCCEEDED,
                created_at=NOW,
                updated_at=NOW,
            )
        )


def test_the_list_pages_through_every_record_with_the_opaque_cursor(
    app: Any, importer: FakeImporter
) -> None:
    _seed(importer, 7)
    seen: list[str] = []
    query = {"organization_id": ORG, "limit": "3"}
    pages = 0
    while True:
        page = call(app, "GET", "/v1/imports", query)
        assert page.status == 200 and len(page.body["imports"]) <= 3
        seen += [r["crm_id"] for r in page.body["imports"]]
        pages += 1
        if page.body["next_cursor"] is None:
            break
        query = {**query, "cursor": page.body["next_cursor"]}
    assert pages == 3 and sorted(seen) == [str(1000 + n) for n in range(7)]


def test_the_list_passes_its_filters_to_the_ledger(app: Any, importer: FakeImporter) -> None:
    _seed(importer, 7)
    answer = call(
        app, "GET", "/v1/imports", {"organization_id": ORG, "status": "failed", "kind": "item"}
    )
    assert {(r["kind"], r["status"]) for r in answer.body["imports"]} == {("item", "failed")}
    assert importer.calls[-1] == ("ledger.list", (ORG, "failed", "item", 50, None))


def test_a_cursor_the_api_did_not_issue_is_a_400(app: Any) -> None:
    answer = call(app, "GET", "/v1/imports", {"organization_id": ORG, "cursor": "bm9wZQ=="})
    assert answer.status == 400
    assert answer.body == {"code": 1100, "message": "cursor: is not a cursor this API returned"}


# --- health, unknown routes, unexpected errors --------------------------------------------------
def test_health_says_ok_and_the_version(app: Any) -> None:
    answer = call(app, "GET", "/v1/health")
    assert answer.status == 200 and answer.body["status"] == "ok"


def test_health_with_a_broken_configuration_is_a_500_that_says_which_variable() -> None:
    class Misconfigured(FakeImporter):
        @property  # type: ignore[override]
        def settings(self) -> Any:
            raise ConfigurationError("invalid configuration: ORGANIZATIONS: field required")

        @settings.setter
        def settings(self, value: Any) -> None:
            pass

    answer = call(api.build_app(Misconfigured()), "GET", "/v1/health")
    assert answer.status == 500
    assert answer.body == {
        "code": 1001,
        "message": "invalid configuration: ORGANIZATIONS: field required",
    }


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/nowhere"), ("DELETE", "/v1/health")])
def test_an_unknown_route_is_a_404_in_our_error_shape(app: Any, method: str, path: str) -> None:
    answer = call(app, method, path)
    assert answer.status == 404
    assert answer.body == {"code": 1104, "message": f"path: no route {method} {path}"}


def test_an_unexpected_error_is_a_500_that_leaks_nothing(
    app: Any, importer: FakeImporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("dynamodb said: secret table detail")

    monkeypatch.setattr(importer, "run", boom)
    answer = call(app, "POST", import_path(), {"organization_id": ORG})
    assert answer.status == 500
    assert answer.body == {"code": 1000, "message": "internal error; the logs have the details"}


# --- the OpenAPI document ------------------------------------------------------------------------
def test_the_openapi_document_is_served_and_valid(app: Any) -> None:
    answer = call(app, "GET", "/v1/openapi.json")
    assert answer.status == 200 and answer.body == DOC
    validate(answer.body)


def test_the_document_lists_every_route_the_stack_deploys_even_from_one_function() -> None:
    deployed = {
        (method.lower(), path)
        for spec in topology.ALL_FUNCTIONS
        for method, path in spec.http_routes
    }
    documented = set()
    for template, operations in DOC["paths"].items():
        # API Gateway has one import resource per kind; the document has one `{kind}` path.
        pattern = re.escape(template).replace(
            r"\{kind\}", r"(account|contact|vendor|item|\{kind\})"
        )
        for method in operations:
            documented |= {(m, p) for m, p in deployed if m == method and re.fullmatch(pattern, p)}
    assert documented == deployed
    assert {(m, t) for t, ops in DOC["paths"].items() for m in ops} == {
        ("post", IMPORT),
        ("get", "/v1/imports/{kind}/{crm_id}"),
        ("get", "/v1/imports"),
        ("get", "/v1/health"),
        ("get", "/v1/openapi.json"),
        ("post", topology.HOOK_PATH),
    }


def test_the_document_says_the_hook_route_takes_no_signature() -> None:
    hook = DOC["paths"][topology.HOOK_PATH]["post"]
    assert hook["security"] == []
    assert DOC["security"] == [{"sigv4": []}]


def test_every_documented_error_has_our_error_body() -> None:
    for operations in DOC["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                schema = response["content"]["application/json"]["schema"]
                name = schema["$ref"].rsplit("/", 1)[-1]
                required = DOC["components"]["schemas"][name]["required"]
                assert {"code", "message"} <= set(required), (status, name)
    assert "HTTPValidationError" not in DOC["components"]["schemas"]
