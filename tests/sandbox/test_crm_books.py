"""Books imports read the sandbox CRM: only its records import, under their CRM names."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("kind", "fields", "name_key", "name"),
    [
        ("account", {"Account_Name": "Initech"}, "contact_name", "Initech"),
        ("contact", {"First_Name": "Ada", "Last_Name": "Lovelace"}, "contact_name", "Ada Lovelace"),
        ("vendor", {"Vendor_Name": "Globex Supply"}, "contact_name", "Globex Supply"),
        ("item", {"Product_Name": "Widget", "Product_Code": "W-1"}, "name", "Widget"),
    ],
)
def test_a_created_crm_record_imports_under_its_crm_name(client, kind, fields, name_key, name):
    crm_id = client.new_id(kind, **fields)

    answer = client.import_(kind, crm_id)

    assert answer.status_code == 200
    assert client.lookup(kind, crm_id)[0][name_key] == name


def test_seeded_records_import_under_their_seeded_names(sandbox, client):
    client.import_("contact", sandbox.crm_ids["contact"][1])

    assert (
        client.lookup("contact", sandbox.crm_ids["contact"][1])[0]["contact_name"] == "Rajesh Kumar"
    )


def test_an_id_the_crm_does_not_hold_is_zohos_1002_and_nothing_is_created(sandbox, client):
    account = client.new_id("account")

    answers = [
        client.import_("account", "3652397000000100999"),  # well formed, never created
        client.import_("vendor", account),  # an Accounts record is no vendor
        client.import_("contact", sandbox.crm_ids["missing"]),
    ]

    for answer, module in zip(answers, ("Accounts", "Vendors", "Contacts"), strict=True):
        assert answer.status_code == 400
        assert answer.json() == {
            "code": 1002,
            "message": f"The record does not exist in Zoho CRM {module}.",
        }
    assert sandbox.counters()["books_records"] == {}


def test_a_record_imports_once_it_exists(sandbox, client):
    crm_id = "3652397000000777777"
    assert client.import_("account", crm_id).json()["code"] == 1002

    sandbox.crm.create_records("Accounts", [{"id": crm_id, "Account_Name": "Late Arrival"}])

    assert client.import_("account", crm_id).status_code == 200
    assert client.lookup("account", crm_id)[0]["contact_name"] == "Late Arrival"


def test_a_name_changed_in_the_crm_after_the_import_leaves_books_alone(sandbox, client):
    crm_id = client.new_id("account", Account_Name="Before")
    client.import_("account", crm_id)

    sandbox.crm.update_record("Accounts", crm_id, Account_Name="After")

    assert client.lookup("account", crm_id)[0]["contact_name"] == "Before"


def test_missing_crm_ids_hide_even_a_crm_record(start, client_for):
    sandbox = start(missing_crm_ids={"3652397000000100001"})

    answer = client_for(sandbox).import_("account", "3652397000000100001")

    assert answer.json()["code"] == 1002
