"""The control API under /__sandbox/, as another process (the local stack, e2e tests) uses it."""

from __future__ import annotations

import pytest


def test_state_has_counters_config_and_faults_but_no_secrets(sandbox, client):
    crm_id = client.new_id()
    client.import_("account", crm_id)

    state = client.control("state").json()

    assert state["url"] == sandbox.url
    assert state["counters"]["imports"] == {client.org: {"account": {crm_id: 1}}}
    assert state["counters"]["token_requests"]["granted"] == 1
    assert state["config"]["reimport"] == "return_existing"
    assert "client_secret" not in state["config"]
    assert "refresh_token" not in state["config"]
    assert sandbox.client_secret not in str(state)
    assert state["faults"]["remaining"]["fail_5xx_next"] == 0


def test_faults_set_and_cleared_over_http(client):
    answer = client.control("faults", {"fail_5xx_next": 1, "fail_5xx_status": 502})
    assert answer.json()["remaining"]["fail_5xx_next"] == 1
    crm_id = client.new_id()
    assert client.import_("account", crm_id).status_code == 502

    client.control("faults", {"fail_5xx_rate": 1.0})
    assert client.control("faults", {}).json()["fail_5xx_rate"] == 0
    assert client.import_("account", crm_id).status_code == 200


@pytest.mark.parametrize(
    "body", [{"no_such_knob": 1}, {"fail_5xx_rate": "often"}, {"fail_5xx_status": 418}]
)
def test_bad_fault_knobs_are_400(client, body):
    answer = client.control("faults", body)

    assert answer.status_code == 400
    assert "error" in answer.json()


def test_limits_over_http(sandbox, client):
    answer = client.control("limits", {"organization_id": client.org, "requests_per_minute": 1})
    assert answer.json()["requests_per_minute"] == 1
    client.get("/books/v3/contacts")
    assert client.get("/books/v3/contacts").json()["code"] == 44

    assert client.control("limits", {"organization_id": "1", "daily_limit": 5}).status_code == 404
    assert client.control("limits", {"daily_limit": 5}).status_code == 400
    assert client.control("limits", {"organization_id": client.org, "x": 1}).status_code == 400


def test_revoke_and_restore_over_http(sandbox, client):
    token = client.token
    assert client.control("revoke").json() == {"revoked": True}
    assert client.token_request().json() == {"error": "invalid_code"}
    assert client.get("/books/v3/contacts", token=token).status_code == 401

    assert client.control("restore", {"refresh_token": sandbox.refresh_token}).ok
    assert "access_token" in client.token_request().json()
    assert client.control("revoke", {"refresh_token": "1000.unknown"}).status_code == 404


def test_grant_code_over_http(client):
    code = client.control("grant-code", {"scope": "ZohoBooks.contacts.CREATE"}).json()["code"]

    answer = client.token_request(grant_type="authorization_code", code=code).json()

    assert "refresh_token" in answer
    assert (
        client.import_("account", client.new_id(), token=answer["access_token"]).status_code == 200
    )


def test_reset_over_http_returns_to_the_seeded_state(sandbox, client):
    crm_id = client.new_id()
    client.import_("account", crm_id)
    client.control("faults", {"fail_5xx_next": 1})
    client.import_("account", client.new_id())

    assert client.control("reset").json() == {"reset": True}

    counters = sandbox.counters()
    assert counters["imports"] == {}
    assert counters["books_records"] == {}
    assert counters["errors_5xx"] == 0
    assert counters["token_requests"]["total"] == 0
    assert client.lookup("account", crm_id) == []
    assert client.get("/books/v3/contacts").status_code == 200  # issued tokens still work


def test_config_changes_behaviour_at_run_time_but_not_seeds(sandbox, client):
    answer = client.control("config", {"reimport": "duplicate"})
    assert answer.json()["reimport"] == "duplicate"
    crm_id = client.new_id()
    client.import_("account", crm_id)
    client.import_("account", crm_id)
    assert sandbox.counters()["duplicates"] == 1

    assert client.control("config", {"client_id": "someone"}).status_code == 400
    assert client.control("config", {"reimport": "sometimes"}).status_code == 400


def test_unknown_control_endpoint_and_bad_json(sandbox, client):
    assert client.control("nothing").status_code == 404
    assert client.http.get(f"{sandbox.url}/__sandbox/reset", timeout=5).status_code == 404
    bad = client.http.post(f"{sandbox.url}/__sandbox/faults", data=b"{nope", timeout=5)
    assert bad.status_code == 400
    assert (
        client.http.post(f"{sandbox.url}/__sandbox/faults", json=[1], timeout=5).status_code == 400
    )
