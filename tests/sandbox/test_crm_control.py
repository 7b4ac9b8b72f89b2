"""The CRM's controls: `sb.crm` in Python, `/__sandbox/crm/` over HTTP, and CLI flags."""

from __future__ import annotations

import argparse

import pytest
import requests

from crm_to_books_cli.sandbox.cli import add_arguments, build_config


def _get(sandbox, path: str, **params: str) -> requests.Response:
    return requests.get(f"{sandbox.url}/__sandbox/crm/{path}", params=params, timeout=5)


def test_records_are_created_listed_and_updated_over_http(sandbox, client, clock):
    created = client.control(
        "crm/records",
        {"module": "Vendors", "records": [{"id": "42", "Vendor_Name": "Answer Co"}, {}]},
    ).json()["records"]
    clock.advance(2)
    updated = client.control(
        "crm/records/update", {"module": "vendor", "records": [{"id": "42", "Phone": "555"}]}
    ).json()["records"]
    listed = _get(sandbox, "records", module="Vendors").json()["records"]

    assert created[0]["id"] == "42"
    assert created[1]["id"].isdigit() and len(created[1]["id"]) == 19
    assert created[1]["Vendor_Name"]  # a name is made up when none is given
    assert updated[0]["Phone"] == "555"
    assert updated[0]["Modified_Time"] > created[0]["Modified_Time"]
    assert updated[0]["Created_Time"] == created[0]["Created_Time"]
    assert {r["id"] for r in listed} == {*sandbox.crm_ids["vendor"], "42", created[1]["id"]}
    assert sandbox.crm.record("Vendors", "42")["Phone"] == "555"


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("crm/records", {"module": "Leads", "records": [{}]}, 400),
        ("crm/records", {"records": [{}]}, 400),
        ("crm/records", {"module": "Accounts", "records": {}}, 400),
        ("crm/records", {"module": "Accounts", "records": [{"Modified_Time": "x"}]}, 400),
        ("crm/records", {"module": "Accounts", "records": [{"bad name": 1}]}, 400),
        ("crm/records", {"module": "Accounts", "records": [{"id": "3652397000000100001"}]}, 400),
        ("crm/records", {"module": "Accounts", "records": [{"id": "3652397000000999999"}]}, 400),
        ("crm/records", {"module": "Accounts", "records": [{"id": "1" * 20}]}, 400),
        ("crm/records/update", {"module": "Accounts", "records": [{"id": "7"}]}, 404),
        ("crm/faults", {"fail_429_next": -1}, 400),
        ("crm/config", {"utc_offset": "+00:00"}, 400),
        ("crm/config", {"credits_per_day": 0}, 400),
    ],
)
def test_bad_control_calls_say_what_is_wrong(sandbox, client, path, body, status):
    answer = client.control(path, body)

    assert answer.status_code == status
    assert answer.json()["error"]
    assert sandbox.counters()["crm"]["records"]["Accounts"] == 3  # all or nothing


def test_a_failed_batch_creates_nothing(sandbox):
    with pytest.raises(ValueError, match=r"records\[1\]\.id"):
        sandbox.crm.create_records("Accounts", [{"Account_Name": "Fine"}, {"id": "x"}])

    assert len(sandbox.crm.records("Accounts")) == 3


def test_faults_config_and_state_over_http(sandbox, client):
    faults = client.control("crm/faults", {"fail_429_next": 1, "scope": "watch"}).json()
    config = client.control("crm/config", {"credits_per_day": 7}).json()
    state = _get(sandbox, "state").json()

    assert faults["remaining"]["fail_429_next"] == 1
    assert faults["scope"] == "watch"
    assert config["credits_per_day"] == 7
    assert state["counters"]["limits"]["credits_per_day"] == 7
    assert state["faults"]["fail_429_next"] == 1
    assert state["settings"]["utc_offset"] == "+05:30"
    assert client.watch("GET").status_code == 429
    assert client.control("crm/faults", {}).json()["remaining"]["fail_429_next"] == 0


def test_reset_restores_the_seeded_crm(sandbox, client, notify_receiver):
    sandbox.crm.create_record("Accounts")
    sandbox.crm.update_record("Accounts", sandbox.crm_ids["account"][0], Account_Name="Renamed")
    client.watch(
        "POST",
        {
            "watch": [
                {"channel_id": "1", "events": ["Accounts.all"], "notify_url": notify_receiver.url}
            ]
        },
    )
    client.records(fields="Account_Name")

    sandbox.reset()

    counters = sandbox.counters()["crm"]
    assert counters["records"] == {"Accounts": 3, "Contacts": 3, "Vendors": 3, "Products": 3}
    assert (
        sandbox.crm.record("Accounts", sandbox.crm_ids["account"][0])["Account_Name"]
        == "Zylker Inc."
    )
    assert counters["channels"] == 0
    assert counters["credits_used"] == counters["credits_in_window"] == counters["requests"] == 0


def test_no_seeds_when_asked(start):
    from crm_to_books_cli.sandbox import CrmSettings

    sandbox = start(crm=CrmSettings(seed_records=False))

    assert sandbox.counters()["crm"]["records"] == {
        "Accounts": 0,
        "Contacts": 0,
        "Vendors": 0,
        "Products": 0,
    }


def test_configure_refuses_what_is_fixed_at_start(sandbox):
    with pytest.raises(ValueError, match="not changeable at run time: seed_records"):
        sandbox.crm.configure(seed_records=False)
    with pytest.raises(ValueError, match="module must be one of"):
        sandbox.crm.records("Deals")


def test_cli_flags_set_the_crm(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config_file = tmp_path / "sandbox.json"
    config_file.write_text('{"crm": {"utc_offset": "-08:00", "faults": {"seed": 9}}}')

    args = [
        "--config", str(config_file), "--auto-create-crm-records",
        "--crm-credits", "50", "--crm-concurrency", "2", "--crm-faults", '{"fail_429_rate": 0.5}',
    ]  # fmt: skip

    config = build_config(parser.parse_args(args))
    default = build_config(parser.parse_args([]))

    assert config.auto_create_crm_records is True
    assert (config.crm.credits_per_day, config.crm.max_concurrency) == (50, 2)
    assert config.crm.utc_offset == "-08:00"
    assert (config.crm.faults.seed, config.crm.faults.fail_429_rate) == (9, 0.5)
    assert default.auto_create_crm_records is False
    assert default.crm.credits_per_day == 5000
