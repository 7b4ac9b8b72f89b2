"""Zoho Accounts: token grants, error bodies, throttling, the active-token cap, revocation."""

from __future__ import annotations

import pytest
import requests

THROTTLED = {
    "error": "Access Denied",
    "error_description": "You have made too many requests continuously. "
    "Please try again after some time.",
    "status": "failure",
}


@pytest.mark.parametrize("where", ["query", "form"])
def test_refresh_grant_returns_a_bearer_token_for_the_api_domain(sandbox, client, where):
    params = {
        "grant_type": "refresh_token",
        "client_id": sandbox.client_id,
        "client_secret": sandbox.client_secret,
        "refresh_token": sandbox.refresh_token,
    }
    url = f"{sandbox.url}/oauth/v2/token"
    if where == "query":
        answer = requests.post(url, params=params, timeout=5)
    else:
        answer = requests.post(url, data=params, timeout=5)

    assert answer.status_code == 200
    body = answer.json()
    assert body["expires_in"] == 3600
    assert body["api_domain"] == sandbox.url
    assert body["token_type"] == "Bearer"
    assert "refresh_token" not in body
    books = client.get("/books/v3/contacts", token=body["access_token"])
    assert books.status_code == 200


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"refresh_token": "1000.not.a-token"}, "invalid_code"),
        ({"client_id": "1000.SOMEONEELSE"}, "invalid_client"),
        ({"client_secret": "wrong"}, "invalid_client"),
        ({"refresh_token": ""}, "invalid_request"),
        ({"grant_type": ""}, "invalid_request"),
        ({"grant_type": "password"}, "unsupported_grant_type"),
        ({"grant_type": "authorization_code", "code": "1000.never.issued"}, "invalid_code"),
    ],
)
def test_token_errors_come_with_http_200_and_an_error_field(client, params, error):
    answer = client.token_request(**params)

    assert answer.status_code == 200
    assert answer.json() == {"error": error}


def test_token_lifetime_is_configurable_and_expired_tokens_are_refused(start, client_for, clock):
    client = client_for(start(token_lifetime_seconds=120))
    answer = client.token_request()
    assert answer.json()["expires_in"] == 120
    token = answer.json()["access_token"]

    clock.advance(119)
    assert client.get("/books/v3/contacts", token=token).status_code == 200
    clock.advance(1)
    expired = client.get("/books/v3/contacts", token=token)

    assert expired.status_code == 401
    assert expired.json()["code"] == 57


def test_eleventh_request_in_ten_minutes_is_throttled_until_the_window_passes(
    sandbox, client, clock
):
    for _ in range(10):
        assert "access_token" in client.token_request().json()
        clock.advance(1)

    throttled = client.token_request()
    assert throttled.status_code == 400
    assert throttled.json() == THROTTLED
    clock.advance(589)  # 599 s after the first grant: still inside its window
    assert client.token_request().json() == THROTTLED

    clock.advance(1)
    assert "access_token" in client.token_request().json()
    counts = sandbox.counters()["token_requests"]
    assert counts["throttled"] == 2
    assert counts["granted"] == 11
    assert counts["by_refresh_token"][sandbox.refresh_token] == 13


def test_throttle_window_is_configurable_and_per_refresh_token(start, client_for, clock):
    sandbox = start(token_window_seconds=30)
    client = client_for(sandbox)
    code = sandbox.issue_grant_code()
    other_refresh = client.token_request(grant_type="authorization_code", code=code).json()[
        "refresh_token"
    ]
    for _ in range(10):
        client.token_request()

    assert client.token_request().json() == THROTTLED
    assert "access_token" in client.token_request(refresh_token=other_refresh).json()
    clock.advance(30)
    assert "access_token" in client.token_request().json()


def test_issuing_past_the_active_token_cap_invalidates_the_oldest(start, client_for):
    client = client_for(start(max_active_tokens=3))
    tokens = [client.new_token() for _ in range(4)]

    oldest = client.get("/books/v3/contacts", token=tokens[0])
    assert oldest.status_code == 401
    assert oldest.json() == {
        "code": 57,
        "message": "You are not authorized to perform this operation",
    }
    for token in tokens[1:]:
        assert client.get("/books/v3/contacts", token=token).status_code == 200


def test_default_active_token_cap_is_twenty(start, client_for):
    sandbox = start(token_requests_per_window=100)
    client = client_for(sandbox)
    tokens = [client.new_token() for _ in range(21)]

    assert client.get("/books/v3/contacts", token=tokens[0]).status_code == 401
    assert client.get("/books/v3/contacts", token=tokens[1]).status_code == 200
    assert sandbox.counters()["active_access_tokens"][sandbox.refresh_token] == 20


def test_revoke_kills_the_refresh_token_and_its_access_tokens_and_restore_undoes_it(
    sandbox, client
):
    token = client.token

    sandbox.revoke_refresh_token()
    assert client.token_request().json() == {"error": "invalid_code"}
    assert client.get("/books/v3/contacts", token=token).json()["code"] == 57

    sandbox.restore_refresh_token()
    fresh = client.new_token()
    assert client.get("/books/v3/contacts", token=fresh).status_code == 200
    assert client.get("/books/v3/contacts", token=token).status_code == 401


def test_grant_code_gives_a_new_refresh_token_that_works_like_the_seeded_one(sandbox, client):
    code = sandbox.issue_grant_code(scope="ZohoBooks.contacts.ALL,ZohoBooks.settings.ALL")

    answer = client.token_request(grant_type="authorization_code", code=code)

    assert answer.status_code == 200
    body = answer.json()
    assert {"access_token", "refresh_token", "api_domain", "expires_in"} <= set(body)
    assert body["refresh_token"] != sandbox.refresh_token
    account = sandbox.crm_ids["account"][0]
    assert client.import_("account", account, token=body["access_token"]).status_code == 200
    refreshed = client.new_token(refresh_token=body["refresh_token"])
    assert client.import_("item", sandbox.crm_ids["item"][0], token=refreshed).status_code == 200
    assert sandbox.counters()["token_requests"]["by_refresh_token"][body["refresh_token"]] == 2


def test_grant_code_is_single_use_and_expires(sandbox, client, clock):
    code = sandbox.issue_grant_code()
    assert "access_token" in client.token_request(grant_type="authorization_code", code=code).json()
    reused = client.token_request(grant_type="authorization_code", code=code)
    assert reused.json() == {"error": "invalid_code"}

    late = sandbox.issue_grant_code()
    clock.advance(180)
    expired = client.token_request(grant_type="authorization_code", code=late)
    assert expired.json() == {"error": "invalid_code"}


def test_a_token_without_the_required_scope_is_refused_with_code_57(sandbox, client):
    code = sandbox.issue_grant_code(scope="ZohoBooks.contacts.CREATE")
    token = client.token_request(grant_type="authorization_code", code=code).json()["access_token"]

    assert client.import_("account", sandbox.crm_ids["account"][0], token=token).status_code == 200
    item = client.import_("item", sandbox.crm_ids["item"][0], token=token)
    assert item.status_code == 401
    assert item.json()["code"] == 57
    assert client.get("/books/v3/contacts", token=token).json()["code"] == 57  # READ missing


@pytest.mark.parametrize(
    "header", [None, "", "Zoho-oauthtoken", "Zoho-oauthtoken ", "Basic dXNlcjpwYXNz", "token"]
)
def test_missing_or_malformed_authorization_header_is_401_code_14(sandbox, client, header):
    headers = {} if header is None else {"Authorization": header}
    answer = requests.get(
        f"{sandbox.url}/books/v3/contacts",
        params={"organization_id": client.org},
        headers=headers,
        timeout=5,
    )

    assert answer.status_code == 401
    assert answer.json() == {"code": 14, "message": "Invalid value passed for Authorization"}


def test_unknown_access_token_is_401_code_57_and_bearer_scheme_is_accepted(sandbox, client):
    url = f"{sandbox.url}/books/v3/contacts?organization_id={client.org}"
    unknown = requests.get(url, headers={"Authorization": "Zoho-oauthtoken 1000.x.y"}, timeout=5)
    bearer = requests.get(url, headers={"Authorization": f"Bearer {client.token}"}, timeout=5)

    assert (unknown.status_code, unknown.json()["code"]) == (401, 57)
    assert bearer.status_code == 200
