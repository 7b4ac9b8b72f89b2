"""Pure pieces of the engine: entities, settings, request parsing, Zoho answer classification."""

from __future__ import annotations

import json

import pytest
import requests

from crm_to_books.entities import ENTITIES, KINDS, get_entity
from crm_to_books.errors import ConfigurationError, InvalidRequest, UnknownOrganization
from crm_to_books.limiter import STAMP_MODULUS, next_utc_midnight, stamp, unstamp
from crm_to_books.models import ImportRequest
from crm_to_books.settings import Settings
from crm_to_books.zoho import (
    DATA_CENTRES,
    AccessToken,
    Category,
    Credentials,
    _expires_in,
    accounts_url_for,
    classify,
)

ENV = {
    "LEDGER_TABLE": "crm-to-books-ledger",
    "STATE_TABLE": "crm-to-books-state",
    "ORGANIZATIONS": json.dumps({"700100200": {"requests_per_minute": 50}}),
    "CONNECTIONS": json.dumps({"default": "crm-to-books/connections/default"}),
}


def answer(status: int, body: object, headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    response.headers.update(headers or {})
    return response


def test_the_entities_table_holds_the_four_kinds_and_their_zoho_paths() -> None:
    assert KINDS == ("account", "contact", "vendor", "item")
    assert get_entity("vendor").import_path("123") == "/books/v3/crm/vendor/123/import"
    assert get_entity("item").crm_id_field == "zcrm_product_id"
    assert get_entity("item").read_path("9") == "/books/v3/items/9"
    assert get_entity("vendor").list_path == "/books/v3/contacts"
    assert get_entity("item").scope == "ZohoBooks.settings.CREATE"
    assert {e.scope for k, e in ENTITIES.items() if k != "item"} == {"ZohoBooks.contacts.CREATE"}
    with pytest.raises(KeyError, match="expected one of account, contact, vendor, item"):
        get_entity("invoice")


def test_books_ids_are_strings_and_customer_id_is_accepted() -> None:
    account = get_entity("account")
    assert account.books_id({"contact_id": 4600000000000000001}) == "4600000000000000001"
    assert account.books_id({"customer_id": "42"}) == "42"
    assert get_entity("item").books_id({"contact_id": "1"}) is None


def test_settings_come_from_the_environment_with_defaults() -> None:
    settings = Settings.from_env(ENV)
    org = settings.organization("700100200")
    assert (org.requests_per_minute, org.max_concurrency, org.daily_limit) == (50, 10, 1000)
    assert settings.rate_window_seconds == 60
    assert Settings.from_env(settings.to_env()) == settings
    with pytest.raises(UnknownOrganization, match="organization_id: 1 is not configured"):
        settings.organization("1")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ORGANIZATIONS": "{not json"}, "ORGANIZATIONS: not valid JSON"),
        ({"ORGANIZATIONS": json.dumps({"12a": {}})}, "ORGANIZATIONS.12a"),
        ({"ORGANIZATIONS": json.dumps({"1": {"connection": "eu"}})}, "connections with no secret"),
        ({"IMPORT_KIND": "invoice"}, "IMPORT_KIND: Value error, must be one of"),
        ({"RATE_WINDOW_SECONDS": "0"}, "RATE_WINDOW_SECONDS"),
        ({"LEDGER_TABLE": None}, "LEDGER_TABLE: Field required"),
    ],
)
def test_bad_configuration_fails_at_cold_start_naming_the_variable(
    change: dict[str, str | None], message: str
) -> None:
    env = {k: v for k, v in {**ENV, **change}.items() if v is not None}
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "invoice"}, "kind: must be one of account, contact, vendor, item"),
        ({"crm_id": ""}, "crm_id: is required"),
        ({"crm_id": "12345678901234567890"}, "crm_id: must be a string of 1 to 19 digits"),
        ({"crm_id": "12/../3"}, "crm_id: must be a string of 1 to 19 digits"),
        ({"organization_id": 2**60}, "organization_id: must be sent as a string"),
        ({"organization_id": True}, "organization_id: must be a string of 1 to 19 digits"),
        ({"source": "ftp"}, "source:"),
    ],
)
def test_a_bad_request_names_the_field_and_the_reason(
    fields: dict[str, object], message: str
) -> None:
    base: dict[str, object] = {"kind": "account", "organization_id": "1", "crm_id": "2"}
    with pytest.raises(InvalidRequest, match=message):
        ImportRequest.parse(**{**base, **fields})


def test_a_request_keeps_ids_as_strings() -> None:
    req = ImportRequest.parse(kind="item", organization_id=700, crm_id="3652397000000400001")
    assert req.key == ("700", "item", "3652397000000400001")


@pytest.mark.parametrize(
    ("status", "body", "category"),
    [
        (200, {"code": 0, "message": "success", "data": {"contact_id": 1}}, Category.SUCCESS),
        (201, {"code": 0, "message": "success", "data": {"item_id": "9"}}, Category.SUCCESS),
        (200, {"code": 1002, "message": "Record not found"}, Category.PERMANENT),
        (400, {"code": 1002, "message": "CRM record does not exist"}, Category.PERMANENT),
        (404, {"code": 5, "message": "Invalid URL Passed"}, Category.PERMANENT),
        (401, {"code": 57, "message": "You are not authorized"}, Category.AUTH),
        (401, {"code": 14, "message": "Invalid value passed for authtoken"}, Category.AUTH),
        (429, {"code": 44, "message": "too many requests"}, Category.RATE_MINUTE),
        (429, {"code": 45, "message": "daily limit"}, Category.RATE_DAILY),
        (429, {"code": 1070, "message": "concurrency"}, Category.RATE_CONCURRENCY),
        (500, {"code": 500, "message": "internal"}, Category.UNKNOWN),
        (503, {}, Category.UNKNOWN),
    ],
)
def test_zoho_answers_are_classified_by_status_first_then_code(
    status: int, body: dict[str, object], category: Category
) -> None:
    got = classify(answer(status, body, {"X-Rate-Limit-Remaining": "7"}))
    assert got.category is category
    assert got.rate.remaining == 7
    if category is Category.SUCCESS:
        assert all(isinstance(v, str) for v in got.data.values())
    elif body:
        assert got.zoho_code == body["code"] and got.message == body["message"]


def test_token_lifetimes_are_parsed_defensively() -> None:
    assert _expires_in({"expires_in": 3600}) == 3600
    assert _expires_in({"expires_in": 3600000, "expires_in_sec": 3600}) == 3600
    assert _expires_in({"expires_in": 3600000}) == 3600


def test_every_data_centre_has_an_accounts_server_and_an_api_domain() -> None:
    # Zoho's multi-DC list: US, EU, IN, AU, JP, CA, CN, SA, UK, and the UAE.
    assert set(DATA_CENTRES) == {"us", "eu", "in", "au", "jp", "ca", "cn", "sa", "uk", "ae"}
    assert DATA_CENTRES["uk"] == ("https://accounts.zoho.uk", "https://www.zohoapis.uk")
    assert accounts_url_for("eu") == "https://accounts.zoho.eu"
    assert accounts_url_for("ca") == "https://accounts.zohocloud.ca"
    assert accounts_url_for("http://127.0.0.1:8088/") == "http://127.0.0.1:8088"
    with pytest.raises(ValueError, match="data centre must be one of"):
        accounts_url_for("mars")


def test_secrets_never_show_in_reprs() -> None:
    creds = Credentials("id", "the-client-secret", "the-refresh-token")
    token = AccessToken("the-access-token", "https://www.zohoapis.com", 0)
    assert "the-" not in repr(creds) + repr(token)


def test_the_daily_cap_resets_at_the_next_utc_midnight() -> None:
    assert next_utc_midnight(86400 * 3 + 5) == 86400 * 4


@pytest.mark.parametrize(
    ("moment", "now"),
    [
        (1_795_629_840.381, 1_795_629_841.0),  # a call that just finished
        (1_795_629_900.5, 1_795_629_841.0),  # a lease a minute ahead
        (1_795_629_841.0 + 1_800, 1_795_629_841.0),  # a clock half an hour ahead of ours
        (1_795_629_841.0 - 5 * 86_400, 1_795_629_841.0),  # days old: still read as the past
    ],
)
def test_limiter_stamps_read_back_as_the_same_time_rounded_up_to_a_centisecond(
    moment: float, now: float
) -> None:
    got = unstamp(stamp(moment), now)
    assert moment <= got < moment + 0.01 + 1e-9
    assert stamp(got) == stamp(moment)  # rewriting a stamp never moves it


def test_limiter_stamps_read_back_across_the_wrap_of_their_modulus() -> None:
    wrap = (STAMP_MODULUS * 50) / 100  # an instant where the stored value wraps to 0
    before, after = wrap - 30, wrap + 20
    assert stamp(before) > stamp(after)  # stored values wrapped...
    assert unstamp(stamp(before), after) == pytest.approx(before)  # ...times did not
    assert unstamp(stamp(after), after) == pytest.approx(after)


def test_limiter_reads_epoch_seconds_written_before_compact_stamps() -> None:
    assert unstamp(1_795_629_840.38, 1_795_629_841.0) == 1_795_629_840.38


def test_the_limiter_item_stays_under_1_kb_at_zohos_limit_with_10_in_flight() -> None:
    from bench.cost import item_size, limiter_at_limit

    item = {"pk": {"S": "limiter#700100200"}, "day": {"S": "2026-11-25"}, "day_count": {"N": "999"}}
    assert item_size(limiter_at_limit(item)) < 1024
