"""Zoho Accounts (OAuth), Zoho Books (CRM import) and Zoho CRM (records, notification
channels) over HTTP, with answers classified.

Classification follows DESIGN.md: HTTP status first, Zoho's code second, and Zoho's code and
message are kept. No secret ever goes into an exception, a log line or a returned value's repr.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from crm_to_books.entities import Entity

# Accounts server -> API domain, per data centre (Zoho's multi-DC list).
DATA_CENTRES: dict[str, tuple[str, str]] = {
    "us": ("https://accounts.zoho.com", "https://www.zohoapis.com"),
    "eu": ("https://accounts.zoho.eu", "https://www.zohoapis.eu"),
    "in": ("https://accounts.zoho.in", "https://www.zohoapis.in"),
    "au": ("https://accounts.zoho.com.au", "https://www.zohoapis.com.au"),
    "jp": ("https://accounts.zoho.jp", "https://www.zohoapis.jp"),
    "ca": ("https://accounts.zohocloud.ca", "https://www.zohoapis.ca"),
    "cn": ("https://accounts.zoho.com.cn", "https://www.zohoapis.com.cn"),
    "sa": ("https://accounts.zoho.sa", "https://www.zohoapis.sa"),
    "uk": ("https://accounts.zoho.uk", "https://www.zohoapis.uk"),
    "ae": ("https://accounts.zoho.ae", "https://www.zohoapis.ae"),
}
ACCOUNTS_TO_API = dict(DATA_CENTRES.values())
MAX_MESSAGE = 300


class Category(StrEnum):
    SUCCESS = "success"
    PERMANENT = "permanent"
    AUTH = "auth"
    RATE_MINUTE = "rate_minute"
    RATE_DAILY = "rate_daily"
    RATE_CONCURRENCY = "rate_concurrency"
    UNKNOWN = "unknown_outcome"  # the request may have taken effect: look up before retrying
    NOT_SENT = "not_sent"  # the request never reached Zoho: safe to retry

    @property
    def rate_limited(self) -> bool:
        return self in {Category.RATE_MINUTE, Category.RATE_DAILY, Category.RATE_CONCURRENCY}


@dataclass(frozen=True, slots=True)
class RateHeaders:
    limit: int | None = None
    remaining: int | None = None
    reset: int | None = None


@dataclass(frozen=True, slots=True)
class ZohoAnswer:
    category: Category
    http_status: int | None
    zoho_code: int | None
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    rate: RateHeaders = field(default_factory=RateHeaders)
    elapsed: float = 0.0


@dataclass(frozen=True, slots=True)
class CrmAnswer:
    """One Zoho CRM answer as it came: `http_status` None when none came (`sent` False: the
    request never left). `code` is Zoho's error code (`TOO_MANY_REQUESTS`,
    `OAUTH_SCOPE_MISMATCH`, ...) for an error body, else empty."""

    http_status: int | None
    body: dict[str, Any]
    code: str
    message: str
    sent: bool = True

    @property
    def nothing(self) -> bool:
        """204 (no records) or 304 (none changed since If-Modified-Since)."""
        return self.http_status in (204, 304)


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str = field(repr=False)
    api_domain: str
    expires_at: float

    def valid_for(self, now: float) -> float:
        return self.expires_at - now


@dataclass(frozen=True, slots=True)
class Credentials:
    client_id: str
    client_secret: str = field(repr=False)
    refresh_token: str = field(repr=False)
    accounts_url: str = "https://accounts.zoho.com"

    @classmethod
    def from_secret(cls, secret: dict[str, Any]) -> Credentials:
        missing = [k for k in ("client_id", "client_secret", "refresh_token") if not secret.get(k)]
        if missing:
            raise TokenError("invalid_secret", f"connection secret lacks {', '.join(missing)}")
        return cls(
            client_id=str(secret["client_id"]),
            client_secret=str(secret["client_secret"]),
            refresh_token=str(secret["refresh_token"]),
            accounts_url=str(secret.get("accounts_url") or "https://accounts.zoho.com").rstrip("/"),
        )


class TokenError(Exception):
    """The token endpoint refused or failed. `reason` is one of:

    invalid_code (refresh token revoked or wrong), invalid_client, invalid_secret: the
    connection is broken until an operator fixes it (only Zoho's documented answers, and a
    secret that lacks a field, mean that); throttled: Zoho's 10-per-10-minutes limit;
    unavailable: anything else (5xx, 403 or HTML pages, an unknown `error`, a timeout), which
    is transient and retried with back-off. `http_status` and `excerpt` (a short, redacted
    piece of the answer) are for the log line.
    """

    BROKEN = frozenset({"invalid_code", "invalid_client", "invalid_secret"})

    def __init__(
        self,
        reason: str,
        message: str,
        retry_after: float = 0.0,
        *,
        http_status: int | None = None,
        excerpt: str = "",
    ) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.http_status = http_status
        self.excerpt = excerpt

    @property
    def broken(self) -> bool:
        return self.reason in self.BROKEN


def _session() -> requests.Session:
    session = requests.Session()
    # Retry only failures to connect: the request never left, so even an import POST is safe.
    # Anything after sending is the caller's call (an import may have happened).
    retry = Retry(total=2, connect=2, read=0, status=0, other=0, backoff_factor=0.2)
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=16)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _stringify_ids(data: dict[str, Any]) -> dict[str, Any]:
    """Ids stay strings end to end: a 19-digit number overflows JavaScript callers."""
    return {
        k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in data.items()
    }


class ZohoClient:
    """Talks to Zoho Accounts and Zoho Books. One per process; thread-safe like requests."""

    def __init__(
        self,
        session: requests.Session | None = None,
        connect_timeout: float = 3.05,
        read_timeout: float = 20.0,
        clock: Any = time.time,
    ) -> None:
        self._session = session or _session()
        self._timeout = (connect_timeout, read_timeout)
        self._clock = clock

    # --- Accounts -------------------------------------------------------------------------
    def refresh(self, creds: Credentials) -> AccessToken:
        """Exchange the refresh token for an access token. Raises TokenError."""
        body = self._token_request(
            creds.accounts_url,
            {
                "grant_type": "refresh_token",
                "client_id": creds.client_id,
                "client_secret": creds.client_secret,
                "refresh_token": creds.refresh_token,
            },
        )
        api_domain = str(body.get("api_domain") or _api_domain_for(creds.accounts_url)).rstrip("/")
        return AccessToken(str(body["access_token"]), api_domain, self._clock() + _expires_in(body))

    def exchange_grant_code(
        self, accounts_url: str, client_id: str, client_secret: str, code: str
    ) -> tuple[str, AccessToken]:
        """Self-client grant code -> (refresh token, access token). Raises TokenError."""
        body = self._token_request(
            accounts_url.rstrip("/"),
            {
                "grant_type": "authorization_code",
                "client_id": client_id,
                "client_secret": client_secret,
                "code": code,
            },
        )
        if not body.get("refresh_token"):
            raise TokenError("invalid_code", "Zoho returned no refresh token for that grant code")
        api_domain = str(body.get("api_domain") or _api_domain_for(accounts_url)).rstrip("/")
        token = AccessToken(
            str(body["access_token"]), api_domain, self._clock() + _expires_in(body)
        )
        return str(body["refresh_token"]), token

    def _token_request(self, accounts_url: str, form: dict[str, str]) -> dict[str, Any]:
        url = f"{accounts_url}/oauth/v2/token"
        try:
            response = self._session.post(url, data=form, timeout=self._timeout)
        except requests.RequestException as exc:
            # The exception text may carry the URL but never the form (which holds secrets).
            raise TokenError(
                "unavailable", f"token endpoint unreachable ({type(exc).__name__})", retry_after=30
            ) from None
        body = _json(response)
        if body.get("access_token"):
            return body
        status = response.status_code
        error = str(body.get("error") or "")
        description = str(body.get("error_description") or "")
        excerpt = _excerpt(response.text, form)
        if error in {"invalid_code", "invalid_client"}:  # Zoho's documented refusals, any status
            meaning = {
                "invalid_code": "the refresh token (or grant code) is revoked, expired or wrong",
                "invalid_client": "the client id or client secret is wrong for this data centre",
            }[error]
            raise TokenError(error, meaning, http_status=status, excerpt=excerpt)
        if status == 429 or error == "Access Denied" or "too many requests" in description.lower():
            raise TokenError(
                "throttled",
                "Zoho limits token requests to 10 per 10 minutes",
                retry_after=600,
                http_status=status,
                excerpt=excerpt,
            )
        # Anything else is not known to be the refresh token's fault: a gateway page, a 403 from
        # a proxy, a 5xx, an error Zoho has not documented. Transient: retried with back-off.
        said = f" ({_clip(error or description)})" if error or description else ""
        raise TokenError(
            "unavailable",
            f"token endpoint answered HTTP {status}{said}",
            retry_after=30,
            http_status=status,
            excerpt=excerpt,
        )

    # --- Books ----------------------------------------------------------------------------
    def import_record(
        self, token: AccessToken, entity: Entity, organization_id: str, crm_id: str
    ) -> ZohoAnswer:
        url = f"{token.api_domain}{entity.import_path(crm_id)}"
        return self._books("POST", url, token, {"organization_id": organization_id})

    def list_by_crm_id(
        self, token: AccessToken, entity: Entity, organization_id: str, crm_id: str
    ) -> ZohoAnswer:
        """Books records filtered by the CRM id: SUCCESS with Zoho's body as `data` (the rows
        are proven, or not, by `lookup.py`), other categories as for imports."""
        url = f"{token.api_domain}{entity.list_path}"
        params = {"organization_id": organization_id, entity.crm_id_field: crm_id}
        return self._books("GET", url, token, params, keep_body=True)

    def read_record(
        self, token: AccessToken, entity: Entity, organization_id: str, books_id: str
    ) -> ZohoAnswer:
        """One Books record by its id (`GET /contacts/{id}`, `/items/{id}`), body as `data`."""
        url = f"{token.api_domain}{entity.read_path(books_id)}"
        return self._books("GET", url, token, {"organization_id": organization_id}, keep_body=True)

    def _books(
        self,
        method: str,
        url: str,
        token: AccessToken,
        params: dict[str, str],
        keep_body: bool = False,
    ) -> ZohoAnswer:
        headers = {"Authorization": f"Zoho-oauthtoken {token.value}", "Accept": "application/json"}
        started = time.perf_counter()
        try:
            response = self._session.request(
                method, url, params=params, headers=headers, timeout=self._timeout
            )
        except requests.RequestException as exc:
            # Never sent (connect timeout, refused, bad URL): safe to retry as is. Anything else
            # (read timeout, reset after sending): it may have happened, so look up first.
            sent = not (
                isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.InvalidURL)
                or (isinstance(exc, requests.exceptions.ConnectionError) and _never_connected(exc))
            )
            return ZohoAnswer(
                Category.UNKNOWN if sent else Category.NOT_SENT,
                None,
                None,
                _describe_exc(exc),
                elapsed=time.perf_counter() - started,
            )
        return classify(response, time.perf_counter() - started, keep_body=keep_body)

    # --- CRM ------------------------------------------------------------------------------
    def crm_records(
        self,
        token: AccessToken,
        module: str,
        fields: Sequence[str],
        *,
        modified_since: str | None = None,
        page_token: str | None = None,
        page: int | None = None,
        per_page: int = 200,
    ) -> CrmAnswer:
        """Zoho CRM Records API, oldest change first: `GET /crm/v8/{module}`. 204 and 304
        (nothing changed since `modified_since`) are answers with an empty body."""
        params: dict[str, str] = {
            "fields": ",".join(fields),
            "sort_by": "Modified_Time",
            "sort_order": "asc",
            "per_page": str(per_page),
        }
        if page_token:
            params["page_token"] = page_token
        elif page:
            params["page"] = str(page)
        headers = {"If-Modified-Since": modified_since} if modified_since else {}
        return self._crm("GET", token, f"/crm/v8/{module}", params=params, headers=headers)

    def crm_watch(
        self,
        token: AccessToken,
        method: str,
        *,
        channels: Sequence[Mapping[str, Any]] = (),
        params: Mapping[str, str] | None = None,
    ) -> CrmAnswer:
        """Zoho CRM Notification API, `/crm/v8/actions/watch`: POST enables channels, PATCH
        changes them, GET lists them, DELETE (`channel_ids`) disables them."""
        body = {"watch": [dict(c) for c in channels]} if channels else None
        return self._crm(method, token, "/crm/v8/actions/watch", params=params, body=body)

    def _crm(
        self,
        method: str,
        token: AccessToken,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> CrmAnswer:
        sent_headers = {
            "Authorization": f"Zoho-oauthtoken {token.value}",
            "Accept": "application/json",
            **(headers or {}),
        }
        try:
            response = self._session.request(
                method,
                f"{token.api_domain}{path}",
                params=dict(params or {}),
                headers=sent_headers,
                json=body,
                timeout=self._timeout,
            )
        except requests.RequestException as exc:
            never = isinstance(exc, requests.exceptions.ConnectTimeout) or (
                isinstance(exc, requests.exceptions.ConnectionError) and _never_connected(exc)
            )
            return CrmAnswer(None, {}, "", _describe_exc(exc), sent=not never)
        answer = _json(response)
        code = str(answer.get("code") or "") if answer.get("status") == "error" else ""
        message = _clip(str(answer.get("message") or response.reason or ""))
        return CrmAnswer(response.status_code, answer, code, message)


def classify(
    response: requests.Response, elapsed: float = 0.0, keep_body: bool = False
) -> ZohoAnswer:
    """HTTP status first, Zoho's code second."""
    status = response.status_code
    body = _json(response)
    code = _int(body.get("code"))
    message = _clip(str(body.get("message") or response.reason or f"HTTP {status}"))
    rate = RateHeaders(
        _int(response.headers.get("X-Rate-Limit-Limit")),
        _int(response.headers.get("X-Rate-Limit-Remaining")),
        _int(response.headers.get("X-Rate-Limit-Reset")),
    )
    if 200 <= status < 300:
        if code in (0, None) and body:
            data = body.get("data")
            payload = (
                data
                if isinstance(data, dict) and not keep_body
                else {k: v for k, v in body.items() if k not in {"code", "message"}}
            )
            return ZohoAnswer(
                Category.SUCCESS, status, 0, message, _stringify_ids(payload), rate, elapsed
            )
        if not body:
            return ZohoAnswer(
                Category.UNKNOWN,
                status,
                None,
                "unreadable success body",
                rate=rate,
                elapsed=elapsed,
            )
        return ZohoAnswer(Category.PERMANENT, status, code, message, rate=rate, elapsed=elapsed)
    if status == 401:
        category = Category.AUTH
    elif status == 429:
        category = {45: Category.RATE_DAILY, 1070: Category.RATE_CONCURRENCY}.get(
            code or 0, Category.RATE_MINUTE
        )
    elif status >= 500 or status == 408:
        category = Category.UNKNOWN
    else:
        category = Category.PERMANENT
    return ZohoAnswer(category, status, code, message, rate=rate, elapsed=elapsed)


def _excerpt(text: str, form: dict[str, str], limit: int = 160) -> str:
    """A short, single-line piece of an answer for the log, with every value we sent (which
    holds secrets) blanked out, should the server have echoed any of it back."""
    piece = " ".join(text[: limit * 4].split())
    for value in form.values():
        if value:
            piece = piece.replace(value, "[redacted]")
    return piece[:limit]


def _expires_in(body: dict[str, Any]) -> float:
    # Older answers gave milliseconds in expires_in and seconds in expires_in_sec.
    seconds = _int(body.get("expires_in_sec"))
    if seconds is None:
        seconds = _int(body.get("expires_in")) or 3600
        if seconds > 86_400:
            seconds //= 1000
    return float(max(60, min(seconds, 86_400)))


def _api_domain_for(accounts_url: str) -> str:
    return ACCOUNTS_TO_API.get(accounts_url.rstrip("/"), "https://www.zohoapis.com")


def accounts_url_for(data_centre: str) -> str:
    """`us`, `eu`, ... or an accounts URL (the sandbox's, a Zoho-compatible server)."""
    if data_centre in DATA_CENTRES:
        return DATA_CENTRES[data_centre][0]
    parts = urlsplit(data_centre)
    if parts.scheme in {"http", "https"} and parts.netloc:
        return data_centre.rstrip("/")
    raise ValueError(
        f"data centre must be one of {', '.join(DATA_CENTRES)} or an accounts URL, "
        f"got {data_centre!r}"
    )


def _never_connected(exc: Exception) -> bool:
    text = repr(exc)
    return any(
        marker in text
        for marker in (
            "NewConnectionError",
            "Connection refused",
            "NameResolutionError",
            "Failed to resolve",
        )
    )


def _describe_exc(exc: Exception) -> str:
    # Never the exception's own text: urllib3 puts the URL (and so query strings) in it.
    kinds = {
        requests.exceptions.ConnectTimeout: "connection to Zoho timed out",
        requests.exceptions.ReadTimeout: "Zoho did not answer in time",
    }
    for kind, text in kinds.items():
        if isinstance(exc, kind):
            return text
    if isinstance(exc, requests.exceptions.ConnectionError):
        return (
            "connection to Zoho failed" if _never_connected(exc) else "connection to Zoho dropped"
        )
    return f"request to Zoho failed ({type(exc).__name__})"
