"""Zoho CRM's Notification API (`/crm/v8/actions/watch`) and the notifications it POSTs."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import pytest

from crm_to_books_cli.sandbox import CrmSettings
from crm_to_books_cli.sandbox.testing import NotifyReceiver

START = datetime(2025, 1, 1, tzinfo=UTC)  # 05:30:00 in the CRM's +05:30
CHANNEL = "1000000068001"
TOKEN = "TOKEN_FOR_VERIFICATION_OF_1000000068001"


@pytest.fixture
def crm_sandbox(start):
    """The CRM's clock at START; access tokens outlive the channels (a day)."""
    return start(crm=CrmSettings(start_time=START), token_lifetime_seconds=86400)


@pytest.fixture
def crm(crm_sandbox, client_for):
    return client_for(crm_sandbox)


def channel(url: str, events=("Accounts.create",), **extra) -> dict:
    return {
        "channel_id": CHANNEL,
        "events": list(events),
        "notify_url": url,
        "token": TOKEN,
        **extra,
    }


def enable(client, *channels) -> dict:
    answer = client.watch("POST", {"watch": list(channels)})
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_enable_answers_201_with_one_event_entry_per_module(crm_sandbox, crm, notify_receiver):
    body = enable(
        crm,
        channel(
            notify_receiver.url,
            ("Accounts.create", "Contacts.edit", "Accounts.edit"),
            channel_expiry="2025-01-01T07:30:00+05:30",
        ),
    )

    [entry] = body["watch"]
    assert entry["code"] == "SUCCESS"
    assert entry["status"] == "success"
    assert entry["message"] == "Successfully subscribed for actions-watch of the given module"
    events = {e["resource_name"]: e for e in entry["details"]["events"]}
    assert set(events) == {"Accounts", "Contacts"}
    assert events["Accounts"] == {
        "channel_expiry": "2025-01-01T07:30:00+05:30",
        "resource_uri": f"{crm_sandbox.url}/crm/v8/Accounts",
        "resource_id": events["Accounts"]["resource_id"],
        "resource_name": "Accounts",
        "channel_id": CHANNEL,
    }
    assert events["Accounts"]["resource_id"].isdigit()


@pytest.mark.parametrize(
    ("expiry", "kept"),
    [
        (None, "2025-01-01T06:30:00+05:30"),  # none given: one hour
        ("2025-01-02T05:00:00+05:30", "2025-01-02T05:00:00+05:30"),  # within a day
        ("2025-01-02T05:30:01+05:30", "2025-01-01T06:30:00+05:30"),  # past a day: one hour
        ("2025-01-08T00:00:00Z", "2025-01-01T06:30:00+05:30"),  # a week (v4+): still one hour
    ],
)
def test_a_channel_lives_at_most_a_day_and_too_late_silently_means_an_hour(
    crm, notify_receiver, expiry, kept
):
    extra = {"channel_expiry": expiry} if expiry else {}

    body = enable(crm, channel(notify_receiver.url, **extra))

    assert body["watch"][0]["details"]["events"][0]["channel_expiry"] == kept


def test_the_longest_life_is_a_setting(crm_sandbox, crm, notify_receiver):
    crm_sandbox.crm.configure(channel_max_seconds=7 * 86400)

    body = enable(crm, channel(notify_receiver.url, channel_expiry="2025-01-08T00:00:00Z"))

    assert body["watch"][0]["details"]["events"][0]["channel_expiry"] == "2025-01-08T05:30:00+05:30"


@pytest.mark.parametrize(
    ("change", "code", "api_name"),
    [
        ({"notify_url": None}, "MANDATORY_NOT_FOUND", "notify_url"),
        ({"channel_id": None}, "MANDATORY_NOT_FOUND", "channel_id"),
        ({"events": []}, "MANDATORY_NOT_FOUND", "events"),
        ({"channel_id": "abc"}, "INVALID_DATA", "channel_id"),
        ({"channel_id": "9" * 20}, "INVALID_DATA", "channel_id"),
        ({"token": "t" * 51}, "INVALID_DATA", "token"),
        ({"events": ["Leads.create"]}, "INVALID_DATA", "events"),
        ({"events": ["Accounts.update"]}, "INVALID_DATA", "events"),
        ({"notify_url": "https://example.com/hook"}, "INVALID_DATA", "notify_url"),
        ({"notify_url": "ftp://127.0.0.1/x"}, "INVALID_DATA", "notify_url"),
        ({"channel_expiry": "2024-12-31T00:00:00Z"}, "INVALID_DATA", "channel_expiry"),
        ({"channel_expiry": "tomorrow"}, "INVALID_DATA", "channel_expiry"),
        ({"return_affected_field_values": "yes"}, "INVALID_DATA", "return_affected_field_values"),
        ({"notification_condition": []}, "INVALID_DATA", "notification_condition"),
    ],
)
def test_a_bad_channel_is_refused_naming_the_key(crm, notify_receiver, change, code, api_name):
    item = {k: v for k, v in {**channel(notify_receiver.url), **change}.items() if v is not None}

    answer = crm.watch("POST", {"watch": [item]})

    assert answer.status_code == 400
    [entry] = answer.json()["watch"]
    assert (entry["code"], entry["status"]) == (code, "error")
    assert entry["details"]["api_name"] == api_name
    assert entry["details"]["json_path"] == f"$.watch[0].{api_name}"
    assert crm.watch("GET").status_code == 204  # nothing was enabled


def test_a_token_of_fifty_characters_is_fine_and_a_mixed_request_is_207(crm, notify_receiver):
    good = channel(notify_receiver.url, token="t" * 50)
    bad = {**channel(notify_receiver.url), "channel_id": "x"}

    answer = crm.watch("POST", {"watch": [good, bad]})

    assert answer.status_code == 207
    assert [e["status"] for e in answer.json()["watch"]] == ["success", "error"]
    assert answer.json()["watch"][1]["details"]["json_path"] == "$.watch[1].channel_id"


@pytest.mark.parametrize(
    "body", [None, {}, {"watch": "x"}, {"watch": []}, {"watch": [{}] * 51}, {"watch": [1]}]
)
def test_a_bad_body_is_400(crm, body):
    assert crm.watch("POST", body).status_code == 400


def test_a_body_that_is_not_json_is_400(crm):
    answer = crm.crm("POST", "actions/watch", data=b"{nope")

    assert answer.status_code == 400
    assert answer.json()["code"] == "INVALID_DATA"


def test_get_lists_active_channels_per_module_or_204(crm_sandbox, crm, notify_receiver):
    assert crm.watch("GET").status_code == 204
    url = f"{notify_receiver.url}?key1=val1"
    enable(crm, channel(url, ("Accounts.all", "Products.create")))

    listed = crm.watch("GET").json()
    products = crm.watch("GET", module="Products").json()

    assert listed["info"] == {"per_page": 200, "count": 2, "page": 1, "more_records": False}
    accounts = next(w for w in listed["watch"] if w["resource_name"] == "Accounts")
    assert accounts == {
        "notify_on_related_action": True,
        "channel_expiry": "2025-01-01T06:30:00+05:30",
        "return_affected_field_values": False,
        "resource_uri": f"{crm_sandbox.url}/crm/v8/Accounts",
        "resource_id": accounts["resource_id"],
        "notify_url": url,
        "resource_name": "Accounts",
        "fields": None,
        "notification_condition": None,
        "channel_id": CHANNEL,
        "events": ["Accounts.create", "Accounts.delete", "Accounts.edit"],
        "token": TOKEN,
    }
    assert [w["resource_name"] for w in products["watch"]] == ["Products"]
    assert crm.watch("GET", channel_id="42").status_code == 204


def test_a_create_is_notified_in_zohos_format(crm_sandbox, crm, notify_receiver, clock):
    enable(crm, channel(f"{notify_receiver.url}?key1=val1&key2=val2"))
    clock.advance(5.25)

    record = crm_sandbox.crm.create_record("Accounts", Account_Name="Notified Ltd")
    [received] = notify_receiver.wait_for(1)
    crm_sandbox.crm.wait_for_notifications()

    assert received == {
        "server_time": int((START.timestamp() + 5.25) * 1000),
        "query_params": {"key1": "val1", "key2": "val2"},
        "module": "Accounts",
        "resource_uri": f"{crm_sandbox.url}/crm/v8/Accounts",
        "ids": [record["id"]],
        "affected_fields": [],
        "operation": "insert",
        "channel_id": CHANNEL,
        "token": TOKEN,
    }
    request = notify_receiver.received[0]
    assert request["query"] == {"key1": "val1", "key2": "val2"}
    assert request["headers"]["Content-Type"] == "application/json"
    assert crm_sandbox.crm.notifications() == [
        {
            "channel_id": CHANNEL,
            "module": "Accounts",
            "operation": "insert",
            "ids": [record["id"]],
            "notify_url": notify_receiver.url,
            "outcome": "delivered",
            "status": 200,
            "error": None,
        }
    ]
    assert crm_sandbox.counters()["crm"]["notifications"]["delivered"] == 1


def test_an_update_names_the_changed_fields_and_their_values_when_asked(
    crm_sandbox, crm, notify_receiver
):
    crm_id = crm_sandbox.crm_ids["account"][0]
    enable(crm, channel(notify_receiver.url, ("Accounts.edit",), return_affected_field_values=True))

    crm_sandbox.crm.update_record(
        "Accounts", crm_id, Account_Type="Reseller", Account_Name="Zylker Inc."
    )
    [received] = notify_receiver.wait_for(1)

    assert received["operation"] == "update"
    assert received["ids"] == [crm_id]
    assert received["affected_fields"] == [{crm_id: ["Account_Type"]}]  # the name did not change
    assert received["affected_values"] == [
        {"record_id": crm_id, "values": {"Account_Type": "Reseller"}}
    ]


def test_only_channels_watching_the_event_are_notified(crm_sandbox, crm, notify_receiver):
    with NotifyReceiver() as every, NotifyReceiver() as contacts:
        enable(
            crm,
            channel(notify_receiver.url, ("Accounts.create",)),
            {**channel(every.url, ("Accounts.all",)), "channel_id": "2"},
            {**channel(contacts.url, ("Contacts.all",)), "channel_id": "3"},
        )

        crm_sandbox.crm.update_record("Accounts", crm_sandbox.crm_ids["account"][1], Phone="1")
        crm_sandbox.crm.create_record("Contacts", Last_Name="Lovelace")
        crm_sandbox.crm.wait_for_notifications()

        assert notify_receiver.bodies == []
        assert [b["operation"] for b in every.bodies] == ["update"]
        assert [(b["module"], b["operation"]) for b in contacts.bodies] == [("Contacts", "insert")]


def test_a_bulk_change_sends_notifications_of_at_most_a_hundred_ids(
    crm_sandbox, crm, notify_receiver
):
    enable(crm, channel(notify_receiver.url))

    created = crm_sandbox.crm.create_records("Accounts", [{} for _ in range(250)])
    bodies = notify_receiver.wait_for(3)

    assert [len(b["ids"]) for b in bodies] == [100, 100, 50]
    assert [i for b in bodies for i in b["ids"]] == [r["id"] for r in created]


def test_a_failed_delivery_is_counted_and_never_retried(crm_sandbox, crm):
    with NotifyReceiver(status=500) as failing:
        enable(crm, channel(failing.url))

        crm_sandbox.crm.create_record("Accounts")
        crm_sandbox.crm.wait_for_notifications()
        crm_sandbox.crm.create_record("Accounts")
        crm_sandbox.crm.wait_for_notifications()

        assert len(failing.received) == 2  # one POST per change, none again
    counts = crm_sandbox.counters()["crm"]["notifications"]
    assert (counts["sent"], counts["delivered"], counts["failed"]) == (2, 0, 2)
    assert [n["status"] for n in crm_sandbox.crm.notifications()] == [500, 500]


def test_a_slow_or_absent_receiver_is_a_failed_delivery(crm_sandbox, crm):
    crm_sandbox.crm.configure(notify_timeout_seconds=0.3)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        absent = f"http://127.0.0.1:{closed.getsockname()[1]}/gone"
    with NotifyReceiver(delay=5) as slow:
        enable(crm, channel(slow.url), {**channel(absent), "channel_id": "2"})

        crm_sandbox.crm.create_record("Accounts")
        crm_sandbox.crm.wait_for_notifications(timeout=5)

    outcomes = {
        n["channel_id"]: (n["outcome"], n["error"]) for n in crm_sandbox.crm.notifications()
    }
    assert outcomes == {CHANNEL: ("failed", "ReadTimeout"), "2": ("failed", "ConnectionError")}


def test_an_expired_channel_receives_nothing_and_must_be_enabled_again(
    crm_sandbox, crm, notify_receiver, clock
):
    enable(crm, channel(notify_receiver.url))  # one hour
    clock.advance(3599)
    crm_sandbox.crm.create_record("Accounts")
    notify_receiver.wait_for(1)
    clock.advance(1)

    crm_sandbox.crm.create_record("Accounts")
    crm_sandbox.crm.wait_for_notifications()
    renewed = crm.watch("PATCH", {"watch": [channel(notify_receiver.url)]})

    assert len(notify_receiver.received) == 1
    assert crm.watch("GET").status_code == 204
    assert renewed.status_code == 400
    assert renewed.json()["watch"][0]["details"]["api_name"] == "channel_id"
    assert crm_sandbox.counters()["crm"]["channels"] == 0
    enable(crm, channel(notify_receiver.url))
    crm_sandbox.crm.create_record("Accounts")
    notify_receiver.wait_for(2)


def test_patch_renews_and_changes_only_what_it_names(crm_sandbox, crm, notify_receiver, clock):
    enable(crm, channel(notify_receiver.url, ("Accounts.create", "Contacts.create")))
    clock.advance(3000)

    answer = crm.watch(
        "PATCH",
        {
            "channel_id": CHANNEL,  # the flat form of v8's OAS
            "events": ["Accounts.create", "Accounts.edit"],
            "notify_url": notify_receiver.url,
            "channel_expiry": "2025-01-02T05:00:00+05:30",
        },
    )
    clock.advance(3000)  # past the first hour
    listed = {w["resource_name"]: w for w in crm.watch("GET").json()["watch"]}

    assert answer.status_code == 200
    assert answer.json()["watch"][0]["message"] == "Successfully updated the subscribe details"
    assert listed["Accounts"]["events"] == ["Accounts.create", "Accounts.edit"]
    assert listed["Accounts"]["channel_expiry"] == "2025-01-02T05:00:00+05:30"
    assert listed["Contacts"]["channel_expiry"] == "2025-01-02T05:00:00+05:30"
    assert listed["Contacts"]["events"] == ["Contacts.create"]
    assert listed["Accounts"]["token"] == TOKEN  # not given: kept


def test_patch_with_delete_unwatches_events(crm, notify_receiver):
    enable(crm, channel(notify_receiver.url, ("Accounts.all", "Contacts.create")))

    answer = crm.watch(
        "PATCH",
        {
            "watch": [
                {
                    **channel(notify_receiver.url, ("Accounts.delete", "Contacts.create")),
                    "_delete": True,
                }
            ]
        },
    )

    assert answer.status_code == 200
    listed = crm.watch("GET").json()["watch"]
    assert [(w["resource_name"], w["events"]) for w in listed] == [
        ("Accounts", ["Accounts.create", "Accounts.edit"])
    ]


def test_put_replaces_the_whole_channel(crm_sandbox, crm, notify_receiver):
    enable(crm, channel(notify_receiver.url, ("Accounts.create", "Contacts.create")))

    answer = crm.watch(
        "PUT",
        {
            "watch": [
                {
                    "channel_id": CHANNEL,
                    "events": ["Vendors.edit"],
                    "notify_url": notify_receiver.url,
                }
            ]
        },
    )

    assert answer.status_code == 200
    [listed] = crm.watch("GET").json()["watch"]
    assert (listed["resource_name"], listed["events"], listed["token"]) == (
        "Vendors",
        ["Vendors.edit"],
        None,
    )
    crm_sandbox.crm.update_record("Vendors", crm_sandbox.crm_ids["vendor"][0], Phone="2")
    assert notify_receiver.wait_for(1)[0]["token"] is None


def test_disable_stops_notifications(crm_sandbox, crm, notify_receiver):
    enable(crm, channel(notify_receiver.url, ("Accounts.create", "Contacts.create")))
    unknown = crm.watch("DELETE", channel_ids="77")
    missing = crm.watch("DELETE")

    mixed = crm.watch("DELETE", channel_ids=f"{CHANNEL},78")
    crm_sandbox.crm.create_record("Accounts")
    crm_sandbox.crm.wait_for_notifications()

    assert unknown.status_code == 400
    assert missing.json()["code"] == "REQUIRED_PARAM_MISSING"
    assert mixed.status_code == 207
    done = [e for e in mixed.json()["watch"] if e["status"] == "success"]
    assert {e["details"]["resource_uri"].rsplit("/", 1)[1] for e in done} == {
        "Accounts",
        "Contacts",
    }
    assert done[0]["message"] == "Successfully un-subscribed from actions-watch"
    assert notify_receiver.received == []
    assert crm.watch("GET").status_code == 204


def test_dropped_notifications_are_never_sent(crm_sandbox, crm, notify_receiver):
    enable(crm, channel(notify_receiver.url))
    crm_sandbox.crm.set_faults(drop_notifications_next=1)

    dropped = crm_sandbox.crm.create_record("Accounts")
    sent = crm_sandbox.crm.create_record("Accounts")
    crm_sandbox.crm.wait_for_notifications()

    assert [b["ids"] for b in notify_receiver.bodies] == [[sent["id"]]]
    log = crm_sandbox.crm.notifications()
    assert [(n["ids"], n["outcome"]) for n in log] == [
        ([dropped["id"]], "dropped"),
        ([sent["id"]], "delivered"),
    ]
    assert crm_sandbox.counters()["crm"]["notifications"]["dropped"] == 1


def test_controls_and_counters_never_show_a_channel_token(crm_sandbox, crm, notify_receiver):
    enable(crm, channel(f"{notify_receiver.url}?secret=abc"))
    crm_sandbox.crm.create_record("Accounts")
    crm_sandbox.crm.wait_for_notifications()

    shown = [
        crm_sandbox.crm.channels(),
        crm_sandbox.crm.notifications(),
        crm_sandbox.state(),
        *(
            crm.http.get(f"{crm_sandbox.url}/__sandbox/crm/{path}", timeout=5).json()
            for path in ("channels", "notifications", "state")
        ),
    ]

    assert crm_sandbox.crm.channels()[0]["has_token"] is True
    for answer in shown:
        assert TOKEN not in str(answer)
        assert "secret=abc" not in str(answer)
