"""Zoho CRM's Records API `GET /crm/v8/{Module}`: fields, order, paging, If-Modified-Since."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime

import pytest

from crm_to_books_cli.sandbox import CrmSettings
from tests.sandbox.crm_helpers import ASCENDING, crm_error

START = datetime(2025, 1, 1, tzinfo=UTC)  # 05:30:00 in the sandbox CRM's default +05:30
INFO_KEYS = {
    "call",
    "per_page",
    "count",
    "page",
    "sort_by",
    "sort_order",
    "more_records",
    "email",
    "next_page_token",
    "previous_page_token",
    "page_token_expiry",
}


@pytest.fixture
def empty(start):
    """A sandbox whose CRM starts with no records, its clock at START."""
    return start(crm=CrmSettings(start_time=START, seed_records=False))


@pytest.fixture
def crm(empty, client_for):
    return client_for(empty)


@pytest.fixture
def one_a_second(empty, clock) -> list[str]:
    """Five accounts created a second apart: their ids, oldest first."""
    created = []
    for n in range(5):
        created.append(empty.crm.create_record("Accounts", Account_Name=f"A{n}")["id"])
        clock.advance(1)
    return created


def _ids(answer) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [record["id"] for record in answer.json()["data"]]


def _walk(client, module="Accounts", since=None, **params) -> tuple[list[str], list[dict]]:
    """Every page through page tokens: the ids in order, and each page's info."""
    ids, infos = [], []
    answer = client.records(module, since=since, **params)
    while True:
        ids += _ids(answer)
        infos.append(answer.json()["info"])
        token = infos[-1]["next_page_token"]
        if token is None:
            return ids, infos
        answer = client.records(module, since=since, page_token=token, **params)


def test_fields_are_required_and_the_answer_has_zohos_shape(sandbox, client):
    missing = client.records()
    answer = client.records(fields="Account_Name,Account_Type")

    assert missing.status_code == 400
    assert missing.json() == crm_error(
        "REQUIRED_PARAM_MISSING", "required param is missing", param_name="fields"
    )
    body = answer.json()
    assert answer.status_code == 200
    assert set(body["info"]) == INFO_KEYS
    assert body["info"]["sort_by"] == "id"
    assert body["info"]["sort_order"] == "desc"  # Zoho's default order: newest id first
    assert body["info"]["more_records"] is False
    assert body["data"][-1] == {
        "id": sandbox.crm_ids["account"][0],
        "Account_Name": "Zylker Inc.",
        "Account_Type": "Customer",
    }
    assert [r["id"] for r in body["data"]] == sorted(sandbox.crm_ids["account"], reverse=True)


def test_times_are_iso_8601_with_the_offset_to_the_second(empty, crm, clock):
    clock.advance(0.9)
    record = empty.crm.create_record("Accounts", Account_Name="Tick")

    answer = crm.records(fields="Created_Time,Modified_Time")

    assert record["Created_Time"] == "2025-01-01T05:30:00+05:30"
    assert answer.json()["data"][0]["Modified_Time"] == "2025-01-01T05:30:00+05:30"
    clock.advance(61)
    updated = empty.crm.update_record("Accounts", record["id"], Account_Type="Reseller")
    assert updated["Modified_Time"] == "2025-01-01T05:31:01+05:30"
    assert updated["Created_Time"] == "2025-01-01T05:30:00+05:30"


@pytest.mark.parametrize(
    ("params", "details"),
    [
        ({"fields": "Account_Name,Nope"}, {"param_name": "fields", "api_name": "Nope"}),
        ({"fields": "Account_Name", "sort_by": "Account_Name"}, {"param_name": "sort_by"}),
        ({"fields": "Account_Name", "sort_order": "up"}, {"param_name": "sort_order"}),
        ({"fields": "Account_Name", "per_page": "201"}, {"param_name": "per_page"}),
        ({"fields": "Account_Name", "per_page": "0"}, {"param_name": "per_page"}),
        ({"fields": "Account_Name", "page": "0"}, {"param_name": "page"}),
        ({"fields": "Account_Name", "ids": "12,x"}, {"param_name": "ids"}),
    ],
)
def test_bad_parameters_are_400_invalid_data_naming_the_parameter(client, params, details):
    answer = client.records(**params)

    assert answer.status_code == 400
    assert answer.json()["code"] == "INVALID_DATA"
    assert details.items() <= answer.json()["details"].items()


def test_at_most_fifty_fields(client):
    fields = ",".join(["Account_Name"] + [f"Custom_{n}" for n in range(50)])

    answer = client.records(fields=fields)

    assert answer.status_code == 400
    assert answer.json()["code"] == "LIMIT_EXCEEDED"
    assert answer.json()["details"] == {"limit": 50, "param_name": "fields"}


def test_sorted_by_modified_time_with_page_and_per_page(empty, crm, one_a_second):
    created = one_a_second
    empty.crm.update_record("Accounts", created[0], Account_Type="Customer")  # now the newest

    first = crm.records(per_page="2", **ASCENDING)
    third = crm.records(per_page="2", page="3", **ASCENDING)

    assert _ids(first) == created[1:3]
    assert first.json()["info"]["more_records"] is True
    assert first.json()["info"]["next_page_token"]
    assert _ids(third) == [created[0]]
    assert third.json()["info"]["next_page_token"] is None
    assert third.json()["info"]["more_records"] is False


def test_past_two_thousand_records_only_page_tokens_reach(empty, crm):
    empty.crm.create_records("Accounts", [{} for _ in range(2_450)])
    params = ASCENDING

    tenth = crm.records(page="10", **params)
    eleventh = crm.records(page="11", **params)
    smaller = crm.records(page="21", per_page="100", **params)
    ids, infos = _walk(crm, **params)

    assert len(_ids(tenth)) == 200
    assert tenth.json()["info"]["more_records"] is True
    for refused in (eleventh, smaller):
        assert refused.status_code == 400
        assert refused.json() == crm_error(
            "DISCRETE_PAGINATION_LIMIT_EXCEEDED",
            "You can only get the first 2000 records without using page_token param",
            limit=2000,
        )
    assert len(ids) == len(set(ids)) == 2_450
    assert [info["page"] for info in infos] == list(range(1, 14))
    assert all(info["page_token_expiry"] for info in infos[:-1])
    assert infos[-1]["next_page_token"] is None
    assert infos[-1]["count"] == 50


def test_a_page_token_is_bound_to_its_query_and_expires(empty, crm, clock):
    empty.crm.configure(page_token_lifetime_seconds=600)
    empty.crm.create_records("Accounts", [{} for _ in range(5)])
    params = {"fields": "Account_Name", "per_page": "2"}
    token = crm.records(**params).json()["info"]["next_page_token"]

    altered = [
        crm.records(fields="Account_Name,Account_Type", per_page="2", page_token=token),
        crm.records(fields="Account_Name", per_page="3", page_token=token),
        crm.records(sort_order="asc", page_token=token, **params),
        crm.records(since="2024-01-01T00:00:00+00:00", page_token=token, **params),
        crm.records(page_token="not-a-token", **params),
    ]
    with_page = crm.records(page="2", page_token=token, **params)
    still_good = crm.records(page_token=token, **params)
    clock.advance(600)
    expired = crm.records(page_token=token, **params)

    for answer in altered:
        assert answer.status_code == 400
        assert answer.json()["code"] == "TOKEN_BOUND_DATA_MISMATCH"
    assert with_page.json()["code"] == "AMBIGUITY_DURING_PROCESSING"
    assert still_good.status_code == 200
    assert expired.status_code == 400
    assert expired.json()["code"] == "EXPIRED_VALUE"
    assert expired.json()["details"] == {
        "api_name": "page_token",
        "json_path": "$.query.page_token",
    }


def test_page_tokens_reach_at_most_a_hundred_thousand_records(empty, crm, monkeypatch):
    # Creating 100,000 records to reach Zoho's limit is slow: the same rule at a lower limit.
    monkeypatch.setattr("crm_to_books_cli.sandbox.crm_records.TOKEN_LIMIT", 4)
    empty.crm.create_records("Accounts", [{} for _ in range(7)])
    first = crm.records(fields="Account_Name", per_page="2")
    second = crm.records(
        fields="Account_Name", per_page="2", page_token=first.json()["info"]["next_page_token"]
    )

    third = crm.records(
        fields="Account_Name", per_page="2", page_token=second.json()["info"]["next_page_token"]
    )

    assert second.status_code == 200
    assert third.status_code == 400
    assert third.json()["code"] == "PAGINATION_LIMIT_EXCEEDED"


def test_page_tokens_are_a_cursor_changed_records_come_again_and_none_is_lost(
    empty, crm, one_a_second
):
    created = one_a_second
    params = {**ASCENDING, "per_page": "2"}
    first = crm.records(**params)
    for crm_id in (created[0], created[2]):  # one already read, one not yet
        empty.crm.update_record("Accounts", crm_id, Account_Type="Customer")

    rest = _walk_from(crm, first.json()["info"]["next_page_token"], params)

    assert _ids(first) == created[:2]
    assert rest == [created[3], created[4], created[0], created[2]]


def test_page_numbers_are_live_offsets_a_change_mid_walk_skips_a_record(empty, crm, one_a_second):
    created = one_a_second
    params = {**ASCENDING, "per_page": "2"}
    first = _ids(crm.records(**params))
    empty.crm.update_record("Accounts", created[0], Account_Type="Customer")

    second = _ids(crm.records(page="2", **params))

    assert first == created[:2]
    assert second == created[3:5]  # created[2] slid onto page 1: a reader by pages misses it


def _walk_from(client, token, params) -> list[str]:
    ids = []
    while token is not None:
        answer = client.records(page_token=token, **params)
        ids += _ids(answer)
        token = answer.json()["info"]["next_page_token"]
    return ids


def test_if_modified_since_is_strictly_after_and_ties_are_the_norm(empty, crm, clock):
    tied = [r["id"] for r in empty.crm.create_records("Accounts", [{} for _ in range(20)])]
    at = empty.crm.record("Accounts", tied[0])["Modified_Time"]
    clock.advance(1)
    later = empty.crm.create_record("Accounts")["id"]
    params = {"fields": "Modified_Time", "sort_by": "Modified_Time", "sort_order": "asc"}

    since_before = crm.records(since="2025-01-01T05:29:59+05:30", **params)
    since_tie = crm.records(since=at, **params)
    same_instant_in_utc = crm.records(since="2025-01-01T00:00:00Z", **params)

    assert _ids(since_before)[-1] == later
    assert set(_ids(since_before)[:-1]) == set(tied)
    assert _ids(since_tie) == [later]  # the tied records are not "modified since" their time
    assert _ids(same_instant_in_utc) == [later]
    order = _ids(since_before)[:-1]
    assert order != sorted(order) and order != sorted(order, reverse=True)  # no id order in ties
    assert order == sorted(tied, key=lambda i: (zlib.crc32(i.encode()), int(i)))


def test_nothing_to_answer_is_204_and_nothing_changed_is_304(start, client_for):
    empty = start(crm=CrmSettings(start_time=START, seed_records=False))
    client = client_for(empty)

    none_at_all = client.records(fields="Account_Name")
    empty.crm.create_record("Accounts")
    unchanged = client.records(fields="Account_Name", since="2025-01-01T06:00:00+05:30")
    past_the_end = client.records(fields="Account_Name", page="2")
    empty.crm.configure(not_modified_status=204)
    unchanged_204 = client.records(fields="Account_Name", since="2025-01-01T06:00:00+05:30")

    assert (none_at_all.status_code, none_at_all.content) == (204, b"")
    assert (unchanged.status_code, unchanged.content) == (304, b"")
    assert past_the_end.status_code == 204
    assert unchanged_204.status_code == 204


@pytest.mark.parametrize("since", ["yesterday", "2025-01-01T00:00:00", "2025-13-01T00:00:00Z"])
def test_if_modified_since_must_be_a_date_time_with_an_offset(client, since):
    answer = client.records(fields="Account_Name", since=since)

    assert answer.status_code == 400
    assert answer.json()["details"] == {"header_name": "If-Modified-Since"}


def test_ids_filter_and_a_single_record(sandbox, client):
    wanted = sandbox.crm_ids["contact"][:2]

    listed = client.records("Contacts", fields="Full_Name", ids=",".join(wanted))
    one = client.crm("GET", f"Contacts/{wanted[0]}")
    picked = client.crm("GET", f"Contacts/{wanted[0]}", params={"fields": "Email"})
    absent = client.crm("GET", f"Contacts/{sandbox.crm_ids['missing']}")

    assert set(_ids(listed)) == set(wanted)
    record = one.json()["data"][0]
    assert record["Full_Name"] == "Patricia Boyle"
    assert {"id", "First_Name", "Last_Name", "Email", "Created_Time", "Modified_Time"} <= set(
        record
    )
    assert picked.json()["data"] == [{"id": wanted[0], "Email": "patricia@example.com"}]
    assert absent.status_code == 204


def test_unknown_module_other_version_and_writes_are_refused(client):
    leads = client.records("Leads", fields="Last_Name")
    v2 = client.http.get(
        f"{client.sb.url}/crm/v2/Accounts",
        params={"fields": "Account_Name"},
        headers=client.headers(),
    )
    post = client.crm("POST", "Accounts", json={"data": [{"Account_Name": "X"}]})

    assert leads.status_code == 400
    assert leads.json() == crm_error(
        "INVALID_MODULE", "the module name given seems to be invalid", resource_path_index=0
    )
    assert v2.status_code == 404
    assert v2.json()["code"] == "INVALID_URL_PATTERN"
    assert post.status_code == 400
    assert post.json()["code"] == "INVALID_REQUEST_METHOD"
