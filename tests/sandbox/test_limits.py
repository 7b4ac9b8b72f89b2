"""Per-organization Books limits: per minute (44), per day (45), concurrent (1070)."""

from __future__ import annotations

import threading

import pytest

from crm_to_books_cli.sandbox.testing import wait_until


def _rate_headers(answer) -> tuple[str, str, str]:
    h = answer.headers
    return h["X-Rate-Limit-Limit"], h["X-Rate-Limit-Remaining"], h["X-Rate-Limit-Reset"]


def test_per_minute_limit_is_429_code_44_with_rate_headers(sandbox, client, clock):
    sandbox.set_limits(client.org, requests_per_minute=3)
    answers = []
    for _ in range(3):
        answers.append(client.get("/books/v3/contacts"))
        clock.advance(10)

    crm_id = client.new_id()
    refused = client.import_("account", crm_id)

    assert [_rate_headers(a)[1] for a in answers] == ["2", "1", "0"]
    assert refused.status_code == 429
    assert refused.json()["code"] == 44
    assert _rate_headers(refused) == ("3", "0", "30")  # the oldest request leaves in 30 s
    assert "Retry-After" not in refused.headers
    assert sandbox.counters()["books_records"] == {}
    clock.advance(30)
    assert client.import_("account", crm_id).status_code == 200
    assert sandbox.counters()["responses_429"] == {"44": 1, "45": 0, "1070": 0}


def test_rate_window_is_configurable(start, client_for, clock):
    sandbox = start(rate_window_seconds=2)
    client = client_for(sandbox)
    sandbox.set_limits(client.org, requests_per_minute=1)

    assert client.get("/books/v3/contacts").status_code == 200
    assert client.get("/books/v3/contacts").status_code == 429
    clock.advance(2)
    assert client.get("/books/v3/contacts").status_code == 200


def test_every_books_answer_for_a_known_organization_carries_rate_headers(sandbox, client):
    answers = [
        client.get("/books/v3/contacts"),
        client.import_("account", sandbox.crm_ids["missing"]),
        client.get("/books/v3/contacts", token="1000.dead.token"),
    ]

    for answer in answers:
        assert _rate_headers(answer)[0] == "100"


def test_daily_limit_is_429_code_45_until_the_day_turns(start, client_for, clock):
    sandbox = start(day_seconds=1000)
    client = client_for(sandbox)
    sandbox.set_limits(client.org, daily_limit=2)
    client.get("/books/v3/contacts")
    client.get("/books/v3/contacts")

    clock.advance(60)  # a fresh minute does not help
    refused = client.get("/books/v3/contacts")

    assert refused.status_code == 429
    assert refused.json()["code"] == 45
    clock.advance(940)
    assert client.get("/books/v3/contacts").status_code == 200
    assert sandbox.counters()["responses_429"]["45"] == 1


def test_reset_restores_the_daily_allowance(sandbox, client):
    sandbox.set_limits(client.org, daily_limit=1)
    client.get("/books/v3/contacts")
    assert client.get("/books/v3/contacts").status_code == 429

    sandbox.reset()

    assert client.get("/books/v3/contacts").status_code == 200


def test_concurrency_limit_is_429_code_1070(sandbox, client, client_for):
    sandbox.set_limits(client.org, max_concurrency=2)
    sandbox.set_faults(latency_seconds=30)  # holds requests in flight until the faults change
    results: list[int] = []
    token = client.token
    workers = [
        threading.Thread(
            target=lambda: results.append(
                client_for(sandbox).get("/books/v3/contacts", token=token).status_code
            )
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    wait_until(lambda: sandbox.counters()["in_flight"][client.org] == 2)

    refused = client.import_("account", client.new_id())
    sandbox.clear_faults()
    for worker in workers:
        worker.join(5)

    assert refused.status_code == 429
    assert refused.json()["code"] == 1070
    assert results == [200, 200]
    counters = sandbox.counters()
    assert counters["max_concurrency_seen"][client.org] == 3
    assert counters["in_flight"][client.org] == 0
    assert counters["responses_429"]["1070"] == 1


def test_limits_are_per_organization(sandbox, client):
    first, second = sandbox.organizations
    sandbox.set_limits(first, requests_per_minute=1)
    client.get("/books/v3/contacts", organization_id=first)

    assert client.get("/books/v3/contacts", organization_id=first).status_code == 429
    assert client.get("/books/v3/contacts", organization_id=second).status_code == 200
    assert sandbox.counters()["books_requests"] == {first: 2, second: 1}


def test_max_requests_in_window_counts_every_request_that_reached_the_organization(
    sandbox, client, clock
):
    for step in (0, 10, 10, 50, 5):  # at 0, 10, 20, 70, 75 seconds
        clock.advance(step)
        client.get("/books/v3/contacts")

    assert sandbox.counters()["max_requests_in_window"][client.org] == 3
    assert sandbox.counters(window_seconds=10)["max_requests_in_window"][client.org] == 2
    state = client.control("state?window=100").json()
    assert state["counters"]["max_requests_in_window"][client.org] == 5


@pytest.mark.parametrize("limit", ["requests_per_minute", "daily_limit", "max_concurrency"])
def test_limits_must_be_positive(sandbox, limit):
    with pytest.raises(ValueError, match=limit):
        sandbox.set_limits(sandbox.organizations[0], **{limit: 0})
