"""Zoho Accounts: the token endpoint, access tokens, grant codes, revocation, throttling."""

from __future__ import annotations

import secrets
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from crm_to_books_cli.sandbox.state import JSON, Reply, Shared, books_error

THROTTLED = Reply(
    400,
    {
        "error": "Access Denied",
        "error_description": "You have made too many requests continuously. "
        "Please try again after some time.",
        "status": "failure",
    },
)
# Zoho answers most token errors with HTTP 200 and an `error` field.
INVALID_CODE = Reply(200, {"error": "invalid_code"})
INVALID_CLIENT = Reply(200, {"error": "invalid_client"})
INVALID_REQUEST = Reply(200, {"error": "invalid_request"})
UNSUPPORTED_GRANT = Reply(200, {"error": "unsupported_grant_type"})
BAD_AUTH_HEADER = books_error(401, 14, "Invalid value passed for Authorization")
NOT_AUTHORIZED = books_error(401, 57, "You are not authorized to perform this operation")

_REQUIRED = {
    "refresh_token": ("client_id", "client_secret", "refresh_token"),
    "authorization_code": ("client_id", "client_secret", "code"),
}


@dataclass(eq=False)
class AccessToken:
    token: str
    refresh_token: str
    scopes: frozenset[str]
    expires_at: float
    valid: bool = True


@dataclass(eq=False)
class _RefreshToken:
    token: str
    scopes: frozenset[str]
    revoked: bool = False
    granted: deque[float] = field(default_factory=deque)  # grants inside the throttle window
    active: deque[AccessToken] = field(default_factory=deque)  # oldest first


@dataclass(frozen=True)
class _GrantCode:
    scopes: frozenset[str]
    expires_at: float


def parse_scopes(scope: str) -> frozenset[str]:
    return frozenset(s.strip() for s in scope.replace(" ", ",").split(",") if s.strip())


def scope_allows(granted: Iterable[str], required: str) -> bool:
    """`ZohoBooks.contacts.CREATE` is granted by itself, `ZohoBooks.contacts.ALL` or
    `ZohoBooks.fullaccess.all` (Zoho compares scopes without regard to case)."""
    service, module, _ = required.lower().split(".")
    wanted = {required.lower(), f"{service}.{module}.all", f"{service}.fullaccess.all"}
    return not wanted.isdisjoint(scope.lower() for scope in granted)


def _new_token() -> str:
    return f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"


class Accounts:
    def __init__(self, shared: Shared) -> None:
        self._s = shared
        self._refresh: dict[str, _RefreshToken] = {}
        self._access: dict[str, AccessToken] = {}
        self._codes: dict[str, _GrantCode] = {}
        self._counts: Counter[str] = Counter()
        self._by_refresh_token: Counter[str] = Counter()
        config = shared.config
        self._add_refresh_token(config.refresh_token, parse_scopes(config.refresh_token_scope))

    # -- the token endpoint ------------------------------------------------------------------

    def token(self, params: Mapping[str, str]) -> Reply:
        with self._s.lock:
            self._counts["total"] += 1
            reply = self._token(params)
            if "access_token" in reply.body:
                self._counts["granted"] += 1
            elif reply is THROTTLED:
                self._counts["throttled"] += 1
            else:
                self._counts["rejected"] += 1
            return reply

    def _token(self, params: Mapping[str, str]) -> Reply:
        grant_type = params.get("grant_type", "")
        if grant_type not in _REQUIRED:
            return UNSUPPORTED_GRANT if grant_type else INVALID_REQUEST
        if not all(params.get(name) for name in _REQUIRED[grant_type]):
            return INVALID_REQUEST
        config = self._s.config
        if not (
            secrets.compare_digest(params["client_id"], config.client_id)
            and secrets.compare_digest(params["client_secret"], config.client_secret)
        ):
            return INVALID_CLIENT
        now = self._s.clock()
        if grant_type == "authorization_code":
            code = self._codes.pop(params["code"], None)  # single use, even when expired
            if code is None or code.expires_at <= now:
                return INVALID_CODE
            refresh = self._add_refresh_token(_new_token(), code.scopes)
            return self._grant(refresh, now, {"refresh_token": refresh.token})
        refresh_or_none = self._refresh.get(params["refresh_token"])
        if refresh_or_none is None or refresh_or_none.revoked:
            return INVALID_CODE
        return self._grant(refresh_or_none, now)

    def _grant(self, refresh: _RefreshToken, now: float, extra: JSON | None = None) -> Reply:
        config = self._s.config
        self._by_refresh_token[refresh.token] += 1
        window_start = now - config.token_window_seconds
        while refresh.granted and refresh.granted[0] <= window_start:
            refresh.granted.popleft()
        if len(refresh.granted) >= config.token_requests_per_window:
            return THROTTLED
        refresh.granted.append(now)
        self._drop_dead(refresh, now)
        while len(refresh.active) >= config.max_active_tokens:
            self._invalidate(refresh.active.popleft())
        access = AccessToken(
            _new_token(), refresh.token, refresh.scopes, now + config.token_lifetime_seconds
        )
        refresh.active.append(access)
        self._access[access.token] = access
        body: JSON = {
            "access_token": access.token,
            "scope": ",".join(sorted(refresh.scopes)),
            "api_domain": self._s.url,
            "token_type": "Bearer",
            "expires_in": config.token_lifetime_seconds,
            **(extra or {}),
        }
        return Reply(200, body)

    # -- Books authentication ----------------------------------------------------------------

    def authenticate(self, header: str | None) -> AccessToken | Reply:
        scheme, _, token = (header or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() not in ("zoho-oauthtoken", "bearer") or not token:
            return BAD_AUTH_HEADER
        with self._s.lock:
            access = self._access.get(token)
            if access is None or not access.valid or access.expires_at <= self._s.clock():
                return NOT_AUTHORIZED
            return access

    # -- controls ----------------------------------------------------------------------------

    def set_revoked(self, token: str | None, revoked: bool) -> None:
        with self._s.lock:
            refresh = self._refresh.get(token or self._s.config.refresh_token)
            if refresh is None:
                raise KeyError("unknown refresh token")
            refresh.revoked = revoked
            if revoked:
                while refresh.active:
                    self._invalidate(refresh.active.popleft())

    def issue_grant_code(self, scope: str) -> str:
        with self._s.lock:
            code = _new_token()
            expires_at = self._s.clock() + self._s.config.grant_code_lifetime_seconds
            self._codes[code] = _GrantCode(parse_scopes(scope), expires_at)
            return code

    def reset(self) -> None:
        """Counters and throttle windows start afresh; issued tokens stay as they are."""
        with self._s.lock:
            self._counts.clear()
            self._by_refresh_token.clear()
            for refresh in self._refresh.values():
                refresh.granted.clear()

    def counters(self) -> JSON:
        with self._s.lock:
            now = self._s.clock()
            for refresh in self._refresh.values():
                self._drop_dead(refresh, now)
            return {
                "token_requests": {
                    "total": self._counts["total"],
                    "granted": self._counts["granted"],
                    "throttled": self._counts["throttled"],
                    "rejected": self._counts["rejected"],
                    "by_refresh_token": dict(self._by_refresh_token),
                },
                "active_access_tokens": {t: len(r.active) for t, r in self._refresh.items()},
            }

    # -- internals ---------------------------------------------------------------------------

    def _add_refresh_token(self, token: str, scopes: frozenset[str]) -> _RefreshToken:
        refresh = _RefreshToken(token, scopes)
        self._refresh[token] = refresh
        return refresh

    def _drop_dead(self, refresh: _RefreshToken, now: float) -> None:
        alive = [a for a in refresh.active if a.valid and a.expires_at > now]
        for access in refresh.active:
            if access.expires_at <= now:
                self._access.pop(access.token, None)
        refresh.active = deque(alive)

    def _invalidate(self, access: AccessToken) -> None:
        access.valid = False
        self._access.pop(access.token, None)
