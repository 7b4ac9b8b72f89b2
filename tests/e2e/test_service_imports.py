"""The real service on the local stack, driven from outside: every kind through every way in
(HTTP sync and async, SQS, an EventBridge event), each imported exactly once."""

from __future__ import annotations

import json
import random
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from crm_to_books.entities import ENTITIES, KINDS
from crm_to_books_cli.local import LocalStack
from tests.e2e.helpers import THROTTLED_ORG, wait_until

pytestmark = pytest.mark.timeout(60)
TIMEOUT = 30


def new_id() -> str:
    """A fresh 19-digit CRM id (the sandbox creates CRM records for any id on demand)."""
    return str(random.randrange(10**18, 10**19 - 1))


def org(stack: LocalStack) -> str:
    return str(stack.sandbox.organizations[0])  # type: ignore[union-attr]


def record(
    stack: LocalStack, kind: str, crm_id: str, organization_id: str
) -> dict[str, Any] | None:
    response = requests.get(
        f"{stack.api_url}/v1/imports/{kind}/{crm_id}",
        params={"organization_id": organization_id},
        timeout=TIMEOUT,
    )
    return response.json()["import"] if response.status_code == 200 else None


def wait_for_status(
    stack: LocalStack,
    kind: str,
    crm_id: str,
    organization_id: str,
    status: str,
    timeout: float = 20,
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        found = record(stack, kind, crm_id, organization_id)
        return found if found and found["status"] == status else None

    return wait_until(reached, f"{kind} {crm_id} {status}", timeout)


def zoho_imports(stack: LocalStack, organization_id: str, kind: str, crm_id: str) -> int:
    """How many import calls for this record Zoho took (committed)."""
    counters = stack.sandbox.counters()  # type: ignore[union-attr]
    return int(counters["imports"].get(organization_id, {}).get(kind, {}).get(crm_id, 0))


def books_records(stack: LocalStack, organization_id: str, kind: str, crm_id: str) -> int:
    counters = stack.sandbox.counters()  # type: ignore[union-attr]
    return int(counters["books_records"].get(organization_id, {}).get(kind, {}).get(crm_id, 0))


def assert_imported_once(stack: LocalStack, organization_id: str, kind: str, crm_id: str) -> None:
    assert zoho_imports(stack, organization_id, kind, crm_id) == 1
    assert books_records(stack, organization_id, kind, crm_id) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_http_sync_import_answers_the_books_id_and_the_record(
    local_stack: LocalStack, kind: str
) -> None:
    organization_id, crm_id = org(local_stack), new_id()
    url = f"{local_stack.api_url}/v1/crm/{kind}/{crm_id}/import"

    # When a caller imports the record synchronously
    response = requests.post(url, params={"organization_id": organization_id}, timeout=TIMEOUT)

    # Then it gets Zoho's shape with the Books id as a string, plus the import record
    assert response.status_code == 200, response.text
    body = response.json()
    books_key = ENTITIES[kind].books_id_key
    books_id = body["data"][books_key]
    assert isinstance(books_id, str) and books_id.isdigit()
    assert (body["code"], body["message"]) == (0, "success")
    imported = body["import"]
    assert (imported["kind"], imported["crm_id"], imported["organization_id"]) == (
        kind,
        crm_id,
        organization_id,
    )
    assert (imported["status"], imported["books_id"], imported["attempts"]) == (
        "succeeded",
        books_id,
        1,
    )
    assert imported["sources"] == ["http"]

    # And asking again answers from the ledger: same id, no second call to Zoho
    again = requests.post(url, params={"organization_id": organization_id}, timeout=TIMEOUT)
    assert again.status_code == 200
    assert again.json()["data"][books_key] == books_id
    assert_imported_once(local_stack, organization_id, kind, crm_id)


def sync_import_told_to_retry(stack: LocalStack) -> tuple[requests.Response, str]:
    """A synchronous import of a new record, once Zoho's minute is spent for its organization
    (one call a minute): the answer and the record's CRM id. The attempt's new ledger record is
    abandoned (`Ledger.abandon`: a DeleteItem, in the transaction that releases the permit)."""

    def post(crm_id: str) -> requests.Response:
        url = f"{stack.api_url}/v1/crm/account/{crm_id}/import"
        return requests.post(url, params={"organization_id": THROTTLED_ORG}, timeout=TIMEOUT)

    crm_id = new_id()
    answer = post(crm_id)
    if answer.status_code == 200:  # the minute was not spent yet: now it is
        crm_id = new_id()
        answer = post(crm_id)
    return answer, crm_id


def test_a_sync_import_rate_limited_on_a_new_record_answers_429_and_keeps_no_record(
    local_stack: LocalStack,
) -> None:
    answer, crm_id = sync_import_told_to_retry(local_stack)

    assert answer.status_code == 429, answer.text
    assert int(answer.headers["Retry-After"]) >= 1
    assert answer.json()["code"] == 1429 and "import" not in answer.json()
    # The caller retries: nothing of the attempt stays behind
    assert record(local_stack, "account", crm_id, THROTTLED_ORG) is None


def test_http_async_imports_are_queued_then_succeed(local_stack: LocalStack) -> None:
    organization_id = org(local_stack)
    ids = {kind: new_id() for kind in KINDS}

    # When every kind is asked for with `Prefer: respond-async`
    locations = {}
    for kind, crm_id in ids.items():
        response = requests.post(
            f"{local_stack.api_url}/v1/crm/{kind}/{crm_id}/import",
            params={"organization_id": organization_id},
            headers={"Prefer": "respond-async"},
            timeout=TIMEOUT,
        )
        # Then each is accepted, queued, with where to poll
        assert response.status_code == 202, response.text
        assert response.headers["Preference-Applied"] == "respond-async"
        assert response.json()["import"]["status"] == "queued"
        location = urlsplit(response.headers["Location"])
        assert location.path.endswith(f"/v1/imports/{kind}/{crm_id}")
        assert location.query == f"organization_id={organization_id}"
        locations[kind] = location

    # And the queue's worker imports each, once
    for kind, crm_id in ids.items():
        done = wait_for_status(local_stack, kind, crm_id, organization_id, "succeeded")
        assert done["books_id"] and done["attempts"] == 1
        assert_imported_once(local_stack, organization_id, kind, crm_id)


def test_the_async_location_can_be_polled_as_given(local_stack: LocalStack) -> None:
    organization_id, crm_id = org(local_stack), new_id()
    response = requests.post(
        f"{local_stack.api_url}/v1/crm/item/{crm_id}/import",
        params={"organization_id": organization_id},
        headers={"Prefer": "respond-async"},
        timeout=TIMEOUT,
    )
    location = urljoin(local_stack.api_url + "/", response.headers["Location"])

    def succeeded() -> bool:
        polled = requests.get(location, timeout=TIMEOUT)
        assert polled.status_code in (200, 404), polled.text
        return polled.status_code == 200 and polled.json()["import"]["status"] == "succeeded"

    wait_until(succeeded, "the Location to say succeeded")


def test_sqs_messages_import_each_kind(local_stack: LocalStack) -> None:
    organization_id = org(local_stack)
    sqs = local_stack.client("sqs")
    ids = {kind: new_id() for kind in KINDS}

    # When each kind's queue gets the documented body
    for kind, crm_id in ids.items():
        body = json.dumps({"organization_id": organization_id, "crm_id": crm_id})
        sqs.send_message(QueueUrl=local_stack.queue_urls[kind], MessageBody=body)

    # Then each is imported once, recorded as coming from SQS
    for kind, crm_id in ids.items():
        done = wait_for_status(local_stack, kind, crm_id, organization_id, "succeeded")
        assert done["sources"] == ["sqs"]
        assert_imported_once(local_stack, organization_id, kind, crm_id)


def test_import_requested_events_on_the_bus_import_each_kind(local_stack: LocalStack) -> None:
    organization_id = org(local_stack)
    ids = {kind: new_id() for kind in KINDS}

    # When another system puts `Import Requested` events on the service's bus
    answer = local_stack.client("events").put_events(
        Entries=[
            {
                "EventBusName": local_stack.names.event_bus,
                "Source": "billing.service",
                "DetailType": "Import Requested",
                "Detail": json.dumps(
                    {"kind": kind, "organization_id": organization_id, "crm_id": crm_id}
                ),
            }
            for kind, crm_id in ids.items()
        ]
    )
    assert answer["FailedEntryCount"] == 0

    # Then the rules route each to its kind's queue and each is imported once
    for kind, crm_id in ids.items():
        done = wait_for_status(local_stack, kind, crm_id, organization_id, "succeeded")
        assert done["sources"] == ["eventbridge"]
        assert_imported_once(local_stack, organization_id, kind, crm_id)
