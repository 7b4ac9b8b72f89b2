"""The status API function against the real ledger in moto: records, pages, the document."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from openapi_spec_validator import validate

from crm_to_books.models import ImportRequest
from crm_to_books.pipeline import Importer
from functions.status_api import handler as status_fn
from tests.functional.conftest import ORG
from tests.support.lambda_events import LambdaContext, api_event

CONTEXT = LambdaContext(function_name="crm-to-books-status-api")
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")


@pytest.fixture
def importer(new_importer: Callable[..., Importer]) -> Importer:
    return new_importer()


def get(importer: Importer, path: str, **query: str) -> tuple[int, dict[str, Any]]:
    answer = status_fn.handler(api_event("GET", path, query), CONTEXT, importer=importer)
    return answer["statusCode"], json.loads(answer["body"])


def test_a_record_is_read_and_an_unknown_one_is_a_clear_404(importer: Importer) -> None:
    importer.run(ImportRequest(kind="vendor", organization_id=ORG, crm_id="8001"))

    status, found = get(importer, "/v1/imports/vendor/8001", organization_id=ORG)
    missing_status, missing = get(importer, "/v1/imports/vendor/8002", organization_id=ORG)

    assert status == 200 and found["import"]["status"] == "succeeded"
    assert found["import"]["books_id"].isdigit()
    assert missing_status == 404
    assert missing == {
        "code": 1104,
        "message": f"no import recorded for vendor 8002 in organization {ORG}",
    }


def test_the_list_pages_through_the_ledger_with_its_cursor(importer: Importer) -> None:
    for n in range(5):
        importer.run(ImportRequest(kind="contact", organization_id=ORG, crm_id=f"810{n}"))
    importer.accept(ImportRequest(kind="item", organization_id=ORG, crm_id="8200"))

    seen: list[tuple[str, str]] = []
    query = {"organization_id": ORG, "limit": "2"}
    while True:
        status, page = get(importer, "/v1/imports", **query)
        assert status == 200 and len(page["imports"]) <= 2
        seen += [(r["kind"], r["crm_id"]) for r in page["imports"]]
        if not page["next_cursor"]:
            break
        query["cursor"] = page["next_cursor"]
    assert sorted(seen) == [*(("contact", f"810{n}") for n in range(5)), ("item", "8200")]

    _, queued = get(importer, "/v1/imports", organization_id=ORG, status="queued")
    _, contacts = get(importer, "/v1/imports", organization_id=ORG, kind="contact", limit="50")
    assert [(r["kind"], r["status"]) for r in queued["imports"]] == [("item", "queued")]
    assert len(contacts["imports"]) == 5


def test_a_tampered_cursor_and_an_unknown_organization_are_refused(importer: Importer) -> None:
    assert get(importer, "/v1/imports", organization_id=ORG, cursor="eyJwayI6IDF9")[1] == {
        "code": 1100,
        "message": "cursor: is not a cursor this API returned",
    }
    status, refused = get(importer, "/v1/imports", organization_id="42")
    assert status == 403 and refused["code"] == 1101


def test_health_and_the_openapi_document(importer: Importer) -> None:
    assert get(importer, "/v1/health") == (200, {"status": "ok", "version": "0.1.0"})
    status, document = get(importer, "/v1/openapi.json")
    assert status == 200
    validate(document)
    assert "/v1/crm/{kind}/{crm_id}/import" in document["paths"]  # served here, listed anyway
