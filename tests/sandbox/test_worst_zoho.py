"""The sandbox as the worst plausible Zoho: single-record reads, look-ups that ignore or refuse
their filter or leave out the CRM ids, imports committed after the client gave up, and token
endpoints failing in ways Zoho does not document."""

from __future__ import annotations

import time

import pytest
import requests

from crm_to_books_cli.sandbox.testing import access_token

CRM = "1234567890123456789"


def test_a_single_record_read_carries_the_crm_ids_even_when_lists_leave_them_out(start, client_for):
    sandbox = start(lookup_rows_without_crm_id=True, auto_create_crm_records=True)  # CRM: 2 kinds
    client = client_for(sandbox)
    contact_id = client.import_("vendor", CRM).json()["data"]["contact_id"]
    item_id = client.import_("item", CRM).json()["data"]["item_id"]

    (listed,) = client.lookup("vendor", CRM)
    contact = client.get(f"/books/v3/contacts/{contact_id}").json()["contact"]
    item = client.get(f"/books/v3/items/{item_id}").json()["item"]

    assert "zcrm_vendor_id" not in listed and listed["contact_id"] == contact_id
    assert contact["zcrm_vendor_id"] == CRM and contact["contact_type"] == "vendor"
    assert item["zcrm_product_id"] == CRM
    missing = client.get("/books/v3/contacts/4600000000000009999")
    assert missing.status_code == 404 and missing.json()["code"] == 1002


def test_a_read_needs_the_read_scope(sandbox, client):
    crm_id = sandbox.crm_ids["account"][0]
    contact_id = client.import_("account", crm_id).json()["data"]["contact_id"]
    granted = client.http.post(
        f"{sandbox.url}/oauth/v2/token",
        data={
            "grant_type": "authorization_code",
            "client_id": sandbox.client_id,
            "client_secret": sandbox.client_secret,
            "code": sandbox.issue_grant_code(scope="ZohoBooks.contacts.CREATE"),
        },
        timeout=5,
    ).json()
    refused = client.get(f"/books/v3/contacts/{contact_id}", token=granted["access_token"])
    assert refused.status_code == 401 and refused.json()["code"] == 57


def test_a_lookup_that_ignores_its_filter_lists_every_record_a_page_at_a_time(start, client_for):
    sandbox = start(lookup_ignores_filter=True)
    client = client_for(sandbox)
    for crm_id in sandbox.crm_ids["account"]:
        client.import_("account", crm_id)

    answer = client.get("/books/v3/contacts", zcrm_account_id="55", per_page="2").json()

    assert len(answer["contacts"]) == 2 and answer["page_context"]["has_more_page"] is True


@pytest.mark.parametrize(("refusal", "code"), [(400, 2), (404, 5)])
def test_a_lookup_can_refuse_its_filter(start, client_for, refusal, code):
    client = client_for(start(lookup_refuses=refusal))
    answer = client.get("/books/v3/contacts", zcrm_contact_id=CRM)
    assert (answer.status_code, answer.json()["code"]) == (refusal, code)
    assert client.get("/books/v3/contacts").status_code == 200  # a list without the filter


def test_a_late_commit_drops_the_answer_and_lands_after_the_wait(zoho_sandbox_factory):
    sandbox = zoho_sandbox_factory()  # real time: the commit lands on its own
    sandbox.set_faults(commit_late_next=1, commit_late_seconds=0.5, scope="imports")
    org = sandbox.organizations[0]
    token = access_token(sandbox)
    crm_id = sandbox.crm_ids["account"][0]

    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(
            f"{sandbox.url}/books/v3/crm/account/{crm_id}/import",
            params={"organization_id": org},
            headers={"Authorization": f"Zoho-oauthtoken {token}"},
            timeout=(2, 0.2),
        )
    assert sandbox.counters()["books_records"].get(org, {}) == {}  # not yet

    deadline = time.monotonic() + 5
    while not sandbox.counters()["books_records"].get(org) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox.counters()["books_records"][org]["account"][crm_id] == 1
    assert sandbox.counters()["late_commits"] == 1


@pytest.mark.parametrize(
    ("answer", "status", "text"),
    [
        ("html_403", 403, "Forbidden"),
        ("html_429", 429, "Too Many Requests"),
        ("unknown_error", 400, "general_error"),
        ("5xx", 500, "Internal Server Error"),
    ],
)
def test_the_token_endpoint_can_fail_in_ways_zoho_does_not_document(
    sandbox, client, answer, status, text
):
    sandbox.set_faults(token_fail_next=1, token_fail_answer=answer)

    failed = client.token_request()

    assert failed.status_code == status and text in failed.text
    assert "access_token" not in failed.text
    assert client.token_request().status_code == 200  # the refresh token is still good
    counted = sandbox.counters()
    assert counted["token_errors_5xx" if answer == "5xx" else "token_errors_other"] == 1
