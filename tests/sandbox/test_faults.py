"""Fault injection: latency, 5xx, reset before handling, hang or drop after the commit."""

from __future__ import annotations

import time

import pytest
import requests
from pydantic import ValidationError

from crm_to_books_cli.sandbox import Faults


def _lookup_on_a_new_connection(client, kind, crm_id):
    """The failed request's connection is unusable: look up on a fresh one."""
    client.http.close()
    client.http = requests.Session()
    return client.lookup(kind, crm_id)


def test_fail_5xx_next_fails_exactly_that_many_and_nothing_is_imported(sandbox, client):
    sandbox.set_faults(fail_5xx_next=2)

    crm_id = client.new_id()
    answers = [client.import_("account", crm_id) for _ in range(3)]

    assert [a.status_code for a in answers] == [500, 500, 200]
    assert answers[0].json()["code"] == 500
    counters = sandbox.counters()
    assert counters["errors_5xx"] == 2
    assert counters["imports"][client.org]["account"][crm_id] == 1


def test_5xx_status_is_configurable_and_the_edge_answers_html(sandbox, client):
    sandbox.set_faults(fail_5xx_next=1, fail_5xx_status=503)

    answer = client.import_("account", client.new_id())

    assert answer.status_code == 503
    assert answer.headers["Content-Type"].startswith("text/html")
    assert "Service Unavailable" in answer.text


def test_5xx_after_commit_fails_the_answer_but_the_record_exists(sandbox, client):
    sandbox.set_faults(fail_5xx_next=1, fail_5xx_after_commit=True)

    crm_id = client.new_id("contact")
    assert client.import_("contact", crm_id).status_code == 500
    assert len(client.lookup("contact", crm_id)) == 1


def test_fail_5xx_rate_is_seeded_and_reproducible(start, client_for):
    def statuses(seed: int) -> list[int]:
        sandbox = start()
        client = client_for(sandbox)
        sandbox.set_faults(fail_5xx_rate=0.5, seed=seed)
        return [client.get("/books/v3/contacts").status_code for _ in range(20)]

    first, again, other = statuses(7), statuses(7), statuses(8)

    assert first == again
    assert {200, 500} == set(first)
    assert first != other


def test_fail_5xx_rate_one_fails_every_request(sandbox, client):
    sandbox.set_faults(fail_5xx_rate=1.0)

    assert {client.get("/books/v3/contacts").status_code for _ in range(5)} == {500}


def test_reset_before_handling_aborts_the_connection_and_nothing_happens(sandbox, client):
    sandbox.set_faults(reset_before_next=1)

    crm_id = client.new_id()
    with pytest.raises(requests.ConnectionError):
        client.import_("account", crm_id)

    assert client.lookup("account", crm_id) == []
    counters = sandbox.counters()
    assert counters["resets"] == 1
    assert counters["imports"] == {}
    assert counters["books_requests"][client.org] == 1  # the look-up only


def test_hang_after_commit_times_the_client_out_but_the_record_exists(sandbox, client):
    sandbox.set_faults(hang_after_commit_next=1, hang_seconds=30)

    crm_id = client.new_id("vendor")
    with pytest.raises(requests.ReadTimeout):
        client.import_("vendor", crm_id, timeout=0.3)

    found = _lookup_on_a_new_connection(client, "vendor", crm_id)
    assert len(found) == 1
    counters = sandbox.counters()
    assert counters["hangs"] == 1
    assert counters["in_flight"][client.org] == 0  # the hang does not hold a slot


@pytest.mark.parametrize("knobs", [{"hang_seconds": 0}, {"drop_after_commit": True}])
def test_drop_after_commit_resets_the_connection_but_the_record_exists(sandbox, client, knobs):
    sandbox.set_faults(hang_after_commit_next=1, **knobs)

    crm_id = client.new_id("item")
    with pytest.raises(requests.ConnectionError):
        client.import_("item", crm_id)

    assert len(_lookup_on_a_new_connection(client, "item", crm_id)) == 1
    assert sandbox.counters()["drops"] == 1


def test_latency_with_seeded_jitter(sandbox, client):
    sandbox.set_faults(latency_seconds=0.2, latency_jitter_seconds=0.1)

    started = time.monotonic()
    assert client.get("/books/v3/contacts").status_code == 200
    elapsed = time.monotonic() - started

    assert 0.2 <= elapsed < 2


def test_scope_imports_leaves_lookups_alone(sandbox, client):
    sandbox.set_faults(fail_5xx_rate=1.0, scope="imports")

    assert client.get("/books/v3/contacts").status_code == 200
    assert client.import_("account", client.new_id()).status_code == 500


def test_kind_scopes_faults_to_one_kind(sandbox, client):
    sandbox.set_faults(fail_5xx_rate=1.0, kind="item")

    account, item = client.new_id("account"), client.new_id("item")
    assert client.import_("account", account).status_code == 200
    assert client.lookup("account", account)
    assert client.import_("item", item).status_code == 500
    assert client.get("/books/v3/items", zcrm_product_id=item).status_code == 500


def test_crm_id_scopes_faults_to_the_imports_of_one_record(sandbox, client):
    first, second = client.new_id(), client.new_id()
    sandbox.set_faults(fail_5xx_next=1, crm_id=second)

    assert client.import_("account", first).status_code == 200
    assert client.lookup("account", second) == []  # a look-up of it is left alone
    assert client.import_("account", second).status_code == 500
    assert client.import_("account", second).status_code == 200  # the one fault was spent


def test_faults_do_not_touch_the_token_endpoint_except_token_fail(sandbox, client):
    sandbox.set_faults(fail_5xx_rate=1.0, token_fail_next=1)

    failed = client.token_request()
    assert failed.status_code == 500
    assert "access_token" in client.token_request().json()
    assert sandbox.counters()["token_errors_5xx"] == 1


def test_faults_from_the_start_config(start, client_for):
    client = client_for(start(faults=Faults(fail_5xx_next=1)))

    crm_id = client.new_id()
    assert client.import_("account", crm_id).status_code == 500
    assert client.import_("account", crm_id).status_code == 200


def test_set_faults_replaces_every_knob_and_rejects_unknown_ones(sandbox, client):
    sandbox.set_faults(fail_5xx_next=5)
    sandbox.set_faults(latency_seconds=0)

    assert client.get("/books/v3/contacts").status_code == 200
    with pytest.raises(ValidationError):
        sandbox.set_faults(fail_everything=True)
    with pytest.raises(ValidationError):
        sandbox.set_faults(fail_5xx_rate=2)


def test_clear_faults(sandbox, client):
    sandbox.set_faults(fail_5xx_rate=1.0)
    sandbox.clear_faults()

    assert client.get("/books/v3/contacts").status_code == 200
    assert sandbox.fault_state()["fail_5xx_rate"] == 0
