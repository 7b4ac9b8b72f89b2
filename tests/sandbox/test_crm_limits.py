"""The CRM's authentication, scopes and limits (credits, concurrency, injected faults): its own,
apart from Books'."""

from __future__ import annotations

import threading

import pytest

from crm_to_books_cli.sandbox.testing import access_token_with_scope, wait_until
from tests.sandbox.crm_helpers import crm_error

FIELDS = {"fields": "Account_Name"}


def test_the_authorization_header_must_be_a_live_zoho_oauthtoken(sandbox, client, clock):
    token = client.token
    missing = client.http.get(f"{sandbox.url}/crm/v8/Accounts", params=FIELDS, timeout=5)
    bearer = client.http.get(
        f"{sandbox.url}/crm/v8/Accounts",
        params=FIELDS,
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    unknown = client.records(token="1000.nope.nope", **FIELDS)
    assert client.records(**FIELDS).status_code == 200
    clock.advance(3600)
    expired = client.records(**FIELDS)

    for refused in (missing, bearer):
        assert refused.status_code == 401
        assert refused.json() == crm_error("AUTHENTICATION_FAILURE", "Authentication failed")
    for refused in (unknown, expired):
        assert refused.status_code == 401
        assert refused.json() == crm_error("INVALID_TOKEN", "invalid oauth token")
    assert sandbox.counters()["crm"]["credits_used"] == 1  # refusals cost nothing


def test_a_revoked_connection_s_tokens_are_invalid(sandbox, client):
    token = client.token
    sandbox.revoke_refresh_token()

    assert client.records(token=token, **FIELDS).json()["code"] == "INVALID_TOKEN"


@pytest.mark.parametrize(
    ("scope", "readable"),
    [
        ("ZohoCRM.modules.accounts.READ", {"Accounts"}),
        ("zohocrm.modules.contacts.read,ZohoCRM.modules.vendors.ALL", {"Contacts", "Vendors"}),
        ("ZohoCRM.modules.ALL", {"Accounts", "Contacts", "Vendors", "Products"}),
        ("ZohoCRM.modules.READ", {"Accounts", "Contacts", "Vendors", "Products"}),
        ("ZohoBooks.fullaccess.all", set()),
        ("ZohoCRM.modules.accounts.CREATE", set()),
    ],
)
def test_each_module_needs_a_read_scope(sandbox, client, scope, readable):
    token = access_token_with_scope(sandbox, scope)

    answers = {
        m: client.records(m, token=token, fields="id")
        for m in ("Accounts", "Contacts", "Vendors", "Products")
    }

    assert {m for m, a in answers.items() if a.status_code == 200} == readable
    for module, answer in answers.items():
        if module not in readable:
            assert answer.status_code == 401
            assert answer.json() == crm_error("OAUTH_SCOPE_MISMATCH", "Unauthorized")


def test_the_seeded_connection_reads_every_module_and_manages_channels(sandbox, client):
    assert "ZohoCRM.notifications.ALL" in client.token_request().json()["scope"]
    for module in ("Accounts", "Contacts", "Vendors", "Products"):
        assert client.records(module, fields="id").status_code == 200
    assert client.watch("GET").status_code == 204


@pytest.mark.parametrize(
    ("scope", "allowed"),
    [
        ("ZohoCRM.notifications.READ", {"GET"}),
        ("ZohoCRM.notifications.CREATE", {"POST"}),
        ("ZohoCRM.notifications.WRITE", {"POST", "PUT", "PATCH"}),
        ("ZohoCRM.notifications.UPDATE", {"PUT", "PATCH"}),
        ("ZohoCRM.notifications.DELETE", {"DELETE"}),
        ("ZohoCRM.notifications.ALL", {"GET", "POST", "PUT", "PATCH", "DELETE"}),
        ("ZohoCRM.modules.ALL", set()),
    ],
)
def test_each_notification_method_needs_its_scope(sandbox, client, scope, allowed):
    token = access_token_with_scope(sandbox, scope)

    codes = {
        method: client.watch(method, {"watch": []}, token=token, channel_ids="1").status_code
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
    }

    assert {m for m, code in codes.items() if code != 401} == allowed


def test_credits_run_out_in_a_rolling_window_and_refusals_cost_nothing(sandbox, client, clock):
    sandbox.crm.configure(credits_per_day=3, credit_window_seconds=1000)
    assert client.records(**FIELDS).status_code == 200
    clock.advance(400)
    assert client.records(fields="Nope").status_code == 400  # an error still costs its credit
    assert client.records(**FIELDS).status_code == 200

    refused = [client.records(**FIELDS) for _ in range(2)]
    clock.advance(599)  # the first credit is 999 s old: still in the window
    still = client.records(**FIELDS)
    clock.advance(1)
    again = client.records(**FIELDS)
    after = client.records(**FIELDS)

    for answer in (*refused, still, after):
        assert answer.status_code == 429
        assert answer.json()["code"] == "TOO_MANY_REQUESTS"
        assert answer.json()["status"] == "error"
        assert "Retry-After" not in answer.headers
    assert again.status_code == 200
    counters = sandbox.counters()["crm"]
    assert counters["credits_used"] == 4
    assert counters["credits_in_window"] == 3
    assert counters["responses_429"] == {"credits": 4, "concurrency": 0, "injected": 0}
    assert counters["requests"] == 8


def test_concurrent_calls_past_the_limit_are_429(sandbox, client, client_for):
    sandbox.crm.configure(max_concurrency=2)
    sandbox.crm.set_faults(latency_seconds=30)  # held in flight until the faults change
    token = client.token
    results: list[int] = []
    workers = [
        threading.Thread(
            target=lambda: results.append(
                client_for(sandbox).records(token=token, **FIELDS).status_code
            )
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    wait_until(lambda: sandbox.counters()["crm"]["in_flight"] == 2)

    refused = client.records(**FIELDS)
    books = client.get("/books/v3/contacts")  # Books' limits are its own
    sandbox.crm.clear_faults()
    for worker in workers:
        worker.join(5)

    assert refused.status_code == 429
    assert refused.json()["code"] == "TOO_MANY_REQUESTS"
    assert books.status_code == 200
    assert results == [200, 200]
    counters = sandbox.counters()["crm"]
    assert counters["max_concurrency_seen"] == 3
    assert counters["in_flight"] == 0
    assert counters["responses_429"]["concurrency"] == 1


def test_injected_429s_and_500s_are_exact_and_scoped(sandbox, client):
    sandbox.crm.set_faults(fail_429_next=2, fail_500_next=1, scope="records")

    watch = client.watch("GET")
    statuses = [client.records(**FIELDS).status_code for _ in range(4)]

    assert watch.status_code == 204
    assert statuses == [429, 429, 500, 200]
    counters = sandbox.counters()["crm"]
    assert counters["responses_429"]["injected"] == 2
    assert counters["errors_5xx"] == 1
    assert counters["credits_used"] == 3  # the watch call, the 500 and the 200
    assert sandbox.crm.fault_state()["remaining"] == {
        "fail_429_next": 0,
        "fail_500_next": 0,
        "drop_notifications_next": 0,
    }


def test_an_injected_500_is_zohos_internal_error(sandbox, client):
    sandbox.crm.set_faults(fail_500_next=1)

    answer = client.records(**FIELDS)

    assert answer.status_code == 500
    assert answer.json() == crm_error("INTERNAL_ERROR", "Internal Server Error")


def test_fault_rates_are_seeded_and_reproducible(start, client_for):
    def statuses(seed: int) -> list[int]:
        sandbox = start()
        sandbox.crm.set_faults(fail_429_rate=0.5, seed=seed)
        client = client_for(sandbox)
        return [client.records(**FIELDS).status_code for _ in range(20)]

    first, again, other = statuses(3), statuses(3), statuses(4)

    assert first == again
    assert set(first) == {200, 429}
    assert first != other


def test_crm_and_books_limits_are_separate_budgets(sandbox, client):
    sandbox.set_limits(client.org, requests_per_minute=1)
    sandbox.crm.configure(credits_per_day=1)
    assert client.get("/books/v3/contacts").status_code == 200
    assert client.records(**FIELDS).status_code == 200

    books = client.get("/books/v3/contacts")
    crm = client.records(**FIELDS)

    assert books.json()["code"] == 44
    assert crm.json()["code"] == "TOO_MANY_REQUESTS"
    counters = sandbox.counters()
    assert counters["books_requests"][client.org] == 2
    assert counters["crm"]["requests"] == 2
