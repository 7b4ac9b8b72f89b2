"""Zoho Books: the four imports, their errors, re-imports, and the look-ups by CRM id."""

from __future__ import annotations

import re

import pytest
import requests

KINDS = ("account", "contact", "vendor", "item")


@pytest.mark.parametrize("kind", KINDS)
def test_import_answers_the_books_id_as_a_19_digit_string(sandbox, client, kind):
    answer = client.import_(kind, sandbox.crm_ids[kind][0])

    assert answer.status_code == 200
    body = answer.json()
    key = "item_id" if kind == "item" else "contact_id"
    assert body["code"] == 0
    assert body["message"] == "success"
    assert list(body["data"]) == [key]
    books_id = body["data"][key]
    assert re.fullmatch(r"\d{19}", books_id)
    assert f'"{books_id}"' in answer.text  # a JSON string, never a number
    assert client.lookup(kind, sandbox.crm_ids[kind][0])[0][key] == books_id


def test_customer_id_switch_and_created_status(start, client_for):
    sandbox = start(contact_result_key="customer_id", import_status=201)
    client = client_for(sandbox)

    account = client.import_("account", sandbox.crm_ids["account"][0])
    item = client.import_("item", sandbox.crm_ids["item"][0])

    assert account.status_code == 201
    assert list(account.json()["data"]) == ["customer_id"]
    assert list(item.json()["data"]) == ["item_id"]


def test_organization_id_is_required_and_must_be_known(sandbox, client):
    url = f"{sandbox.url}/books/v3/crm/account/{sandbox.crm_ids['account'][0]}/import"
    missing = requests.post(url, headers=client.headers(), timeout=5)
    unknown = client.import_("account", sandbox.crm_ids["account"][0], org="123456")

    assert missing.status_code == 400
    assert missing.json()["code"] == 6042
    assert unknown.status_code == 400
    assert unknown.json() == {
        "code": 6041,
        "message": "This user is not associated with the CompanyID/CompanyName:123456.",
    }


@pytest.mark.parametrize("kind", KINDS)
def test_missing_crm_record_is_refused(sandbox, client, kind):
    answer = client.import_(kind, sandbox.crm_ids["missing"])

    assert answer.status_code == 400
    assert answer.json()["code"] == 1002
    assert sandbox.counters()["books_records"] == {}


def test_with_auto_create_any_well_formed_id_exists_unless_listed_missing(start, client_for):
    client = client_for(start(auto_create_crm_records=True, missing_crm_ids={"42"}))

    assert client.import_("account", "1").status_code == 200
    assert client.import_("account", "9" * 19).status_code == 200
    assert client.import_("account", "42").json()["code"] == 1002
    assert client.lookup("account", "1")[0]["contact_name"] == "CRM Accounts 1"


def test_by_default_only_crm_records_exist(sandbox, client):
    assert client.import_("vendor", sandbox.crm_ids["vendor"][1]).status_code == 200
    assert client.import_("vendor", "1234").json()["code"] == 1002
    # Seeded ids belong to one module: an account id is not a vendor.
    assert client.import_("vendor", sandbox.crm_ids["account"][0]).json()["code"] == 1002


@pytest.mark.parametrize("crm_id", ["abc", "1" * 20, "12x"])
def test_malformed_crm_id_is_400_code_2(client, crm_id):
    answer = client.import_("account", crm_id)

    assert answer.status_code == 400
    assert answer.json() == {"code": 2, "message": "Invalid value passed for crm_account_id"}


@pytest.mark.parametrize(
    ("kind", "module"), [("contact", "Contacts"), ("vendor", "Vendors"), ("item", "Products")]
)
def test_accounts_only_organization_refuses_other_kinds(sandbox, client, kind, module):
    accounts_only = sandbox.organizations[1]

    refused = client.import_(kind, sandbox.crm_ids[kind][0], org=accounts_only)

    assert refused.status_code == 400
    assert refused.json()["code"] == 3010
    assert module in refused.json()["message"]
    assert client.import_("account", sandbox.crm_ids["account"][0], org=accounts_only).ok


def test_reimport_returns_the_existing_record_by_default(sandbox, client):
    crm_id = sandbox.crm_ids["contact"][0]

    first = client.import_("contact", crm_id).json()["data"]["contact_id"]
    second = client.import_("contact", crm_id).json()["data"]["contact_id"]

    assert first == second
    counters = sandbox.counters()
    assert counters["imports"][client.org]["contact"][crm_id] == 2
    assert counters["books_records"][client.org]["contact"][crm_id] == 1
    assert counters["duplicates"] == 0


def test_reimport_error_mode(start, client_for):
    sandbox = start(reimport="error")
    client = client_for(sandbox)
    crm_id = sandbox.crm_ids["account"][0]

    assert client.import_("account", crm_id).status_code == 200
    again = client.import_("account", crm_id)

    assert again.status_code == 400
    assert again.json()["code"] == 1001
    assert sandbox.counters()["imports"][client.org]["account"][crm_id] == 1


def test_reimport_duplicate_mode_creates_and_counts_duplicates(start, client_for):
    sandbox = start(reimport="duplicate")
    client = client_for(sandbox)
    crm_id = sandbox.crm_ids["account"][0]

    first = client.import_("account", crm_id).json()["data"]["contact_id"]
    second = client.import_("account", crm_id).json()["data"]["contact_id"]
    client.import_("account", crm_id)
    client.import_("account", sandbox.crm_ids["account"][1])

    assert first != second
    assert len(client.lookup("account", crm_id)) == 3
    counters = sandbox.counters()
    assert counters["books_records"][client.org]["account"][crm_id] == 3
    assert counters["duplicates"] == 1


def test_lookups_match_only_records_of_their_kind_and_organization(start, client_for):
    sandbox = start(auto_create_crm_records=True)  # so one id can be in every module
    client = client_for(sandbox)
    crm_id = "1234567890123456789"
    books_ids = {kind: client.import_(kind, crm_id).json()["data"] for kind in KINDS}

    for kind in KINDS:
        found = client.lookup(kind, crm_id)
        key = "item_id" if kind == "item" else "contact_id"
        assert [record[key] for record in found] == [books_ids[kind][key]]
    vendor = client.lookup("vendor", crm_id)[0]
    assert vendor["zcrm_vendor_id"] == crm_id
    assert vendor["contact_type"] == "vendor"
    assert client.lookup("item", crm_id)[0]["zcrm_product_id"] == crm_id
    assert client.lookup("account", "55") == []
    assert client.lookup("account", crm_id, org=sandbox.organizations[1]) == []


def test_lookup_answer_has_zoho_shape_and_pages(sandbox, client):
    for crm_id in sandbox.crm_ids["account"]:
        client.import_("account", crm_id)

    first = client.get("/books/v3/contacts", per_page="2").json()
    second = client.get("/books/v3/contacts", per_page="2", page="2").json()

    assert (first["code"], first["message"]) == (0, "success")
    assert len(first["contacts"]) == 2
    assert first["page_context"]["has_more_page"] is True
    assert len(second["contacts"]) == 1
    assert second["page_context"]["has_more_page"] is False
    assert first["contacts"][0]["contact_name"] == "Zylker Inc."


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/books/v3/invoices", 404, 5),
        ("POST", "/books/v3/crm/lead/1/import", 404, 5),
        ("GET", "/nothing/here", 404, 5),
        ("GET", "/books/v3/crm/account/1/import", 405, 37),
        ("POST", "/books/v3/contacts", 405, 37),
    ],
)
def test_unknown_paths_and_methods(sandbox, client, method, path, status, code):
    answer = requests.request(
        method,
        f"{sandbox.url}{path}",
        params={"organization_id": client.org},
        headers=client.headers(),
        timeout=5,
    )

    assert answer.status_code == status
    assert answer.json()["code"] == code
    if status == 404:
        assert answer.json()["message"] == "Invalid URL Passed"
