"""Zoho access tokens shared by every container of every function.

Zoho allows 10 token requests per refresh token per 10 minutes and keeps only a bounded number
of access tokens alive, so a refresh per container is a bug at scale. Order of look-up: this
process's memory, then the shared cache (state table), then one refresh per connection at a
time, guarded by a lease (a conditional write) that outlives the slowest token request the
configured timeouts allow; the others keep using the still-valid token or wait for the new one.
Every token request is written to the connection's budget log before it is sent, so it counts
whatever happens to its lease.

What a refusal means:
- the token endpoint's documented refusals (`invalid_code`, `invalid_client`) mark the
  connection broken until its secret changes; anything else it answers is transient, retried
  with back-off, never spun on;
- a 401 from Books: the token may have died (Zoho evicts the oldest of a refresh token's
  access tokens, at any age): drop it, refresh once, retry once; but at most one such refresh
  per connection per `FRESH_TOKEN_SECONDS`. A 401 on the token refreshed for a 401 means a
  scope (or organization access) is missing: that scope is marked missing on the connection
  for `SCOPE_RECHECK_SECONDS` (or until the secret changes), the imports that need it park,
  the others go on. So 401s alone never spend more than one token request per connection per
  `FRESH_TOKEN_SECONDS`.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, NoReturn

from botocore.exceptions import ClientError

from crm_to_books import dynamo
from crm_to_books.clients import LazyClient
from crm_to_books.errors import ConnectionBroken
from crm_to_books.observability import logger, metrics
from crm_to_books.settings import Settings
from crm_to_books.topology import METRIC_TOKEN_REFRESH_FAILED, METRIC_TOKEN_REFRESHED
from crm_to_books.zoho import AccessToken, Credentials, TokenError, ZohoClient

ZOHO_TOKEN_WINDOW = 600.0  # Zoho: 10 token requests per refresh token per 10 minutes
OWN_TOKEN_BUDGET = 8  # we stop short of Zoho's 10, leaving room for an operator's own calls
MIN_USABLE_SECONDS = 60.0  # never hand out a token that could expire mid-call
SECRET_RECHECK_SECONDS = 60.0
FRESH_TOKEN_SECONDS = 300.0  # 401s spend at most one token request per connection per this
SCOPE_RECHECK_SECONDS = 1800.0  # a scope marked missing is tried again after this
TRANSIENT_BACKOFF = (30.0, 60.0, 120.0, 300.0, 600.0)  # waits after unexplained refusals

SecretLoader = Callable[[str, bool], dict[str, Any]]


class TokenUnavailable(Exception):
    """No token now (Zoho throttling, Zoho down, another refresh under way): retry later."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """What the shared state says of a connection, read without asking Zoho anything."""

    broken: bool = False
    throttled_until: float = 0.0
    missing_scopes: dict[str, float] = field(default_factory=dict)  # scope -> marked until

    def usable(self, now: float) -> bool:
        return not self.broken and self.throttled_until <= now

    def missing(self, scope: str, now: float) -> float | None:
        until = self.missing_scopes.get(scope, 0.0)
        return until if until > now else None


def fingerprint(secret_value: str) -> str:
    return hashlib.sha256(secret_value.encode()).hexdigest()[:16]


def refresh_lease_seconds(settings: Settings) -> float:
    """Longer than the slowest token request: urllib3 tries to connect 3 times (with 0.2 s and
    0.4 s back-off), then the answer may take the read timeout."""
    return 3 * settings.zoho_connect_timeout + 0.6 + settings.zoho_read_timeout + 10.0


@cache
def _secrets_provider() -> Any:
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    from crm_to_books import aws

    return SecretsProvider(boto3_client=aws.client("secretsmanager"))


def powertools_secret_loader(secret_id: str, force: bool) -> dict[str, Any]:
    """The connection secret, cached for 5 minutes (Powertools parameters)."""
    value = _secrets_provider().get(secret_id, transform="json", max_age=300, force_fetch=force)
    return value if isinstance(value, dict) else {}


class TokenProvider:
    def __init__(
        self,
        settings: Settings,
        zoho: ZohoClient,
        client: Any = None,
        load_secret: SecretLoader = powertools_secret_loader,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._settings = settings
        self._zoho = zoho
        self._client = client
        self._load_secret = load_secret
        self._clock = clock
        self._sleep = sleep
        self._owner = uuid.uuid4().hex
        self._lease = refresh_lease_seconds(settings)
        self._memory: dict[str, AccessToken] = {}
        self._seen: dict[str, ConnectionState] = {}  # as of this process's last read
        self._secret_checked: dict[str, float] = {}
        self.refreshes = 0  # this process's token requests, for tests and benchmarks
        # A batch's organizations are imported at once in threads sharing this provider: per
        # connection, one thread at a time finds or refreshes a token, and the others then take
        # it from memory, instead of each reading the shared item, losing the refresh lease to
        # the first and polling until its token appears. Other connections do not wait.
        self._locks: dict[str, threading.RLock] = {}  # per connection (`_lock_of`)
        self._locking = threading.Lock()

    client = LazyClient("dynamodb")

    # --- public -----------------------------------------------------------------------------
    def get(self, connection: str) -> AccessToken:
        """A usable access token. Raises ConnectionBroken or TokenUnavailable."""
        token = self._memory.get(connection)
        if token and token.valid_for(self._clock()) > MIN_USABLE_SECONDS:
            return token
        with self._lock_of(connection):
            return self._get(connection)

    def _get(self, connection: str) -> AccessToken:
        token = self._memory.get(connection)  # another thread may have found one meanwhile
        if token and token.valid_for(self._clock()) > MIN_USABLE_SECONDS:
            return token
        deadline = self._clock() + self._settings.token_wait_seconds
        while True:
            now = self._clock()
            item = self._read(connection)
            self._raise_if_unusable(connection, item, now)
            shared = _token_of(item)
            if shared and shared.valid_for(now) > self._settings.token_refresh_margin_seconds:
                self._memory[connection] = shared
                return shared
            if self._take_lease(connection, now):
                return self._refresh_holding_lease(connection)
            if shared and shared.valid_for(now) > MIN_USABLE_SECONDS:
                self._memory[connection] = shared  # still good while another caller refreshes
                return shared
            if now >= deadline:
                raise TokenUnavailable("another caller is refreshing the token", retry_after=5)
            self._sleep(0.2)

    def missing_scope(self, connection: str, scope: str) -> float | None:
        """Until when `scope` is marked missing on the connection (as this process last read
        it), or None."""
        state = self._seen.get(connection)
        return state.missing(scope, self._clock()) if state else None

    def after_401(self, connection: str, token: AccessToken) -> AccessToken | None:
        """Books refused `token` (401). A token to retry with once, or None when the refusal
        means a missing scope: a token refreshed for a 401 within `FRESH_TOKEN_SECONDS` was
        refused again. At most one token request per connection per that time is spent on
        401s, whatever their cause (a token Zoho evicted young, a scope no token will carry)."""
        with self._lock_of(connection):
            return self._after_401(connection, token)

    def _after_401(self, connection: str, token: AccessToken) -> AccessToken | None:
        now = self._clock()
        held = self._memory.get(connection)
        if held and held.value != token.value and held.valid_for(now) > MIN_USABLE_SECONDS:
            return held  # another thread replaced it meanwhile: no new request
        self._memory.pop(connection, None)
        item = self._read(connection)
        self._raise_if_unusable(connection, item, now)  # a broken connection is no scope's fault
        shared = _token_of(item)
        if shared and shared.value != token.value and shared.valid_for(now) > MIN_USABLE_SECONDS:
            self._memory[connection] = shared  # someone replaced it already: no new request
            return shared
        try:
            self.client.update_item(
                TableName=self._settings.state_table,
                Key=_key(connection),
                UpdateExpression="SET refreshed_for_401 = :now",
                ConditionExpression="attribute_not_exists(refreshed_for_401) OR "
                "refreshed_for_401 < :then",
                ExpressionAttributeValues=dynamo.dump_values(
                    {":now": now, ":then": now - FRESH_TOKEN_SECONDS}
                ),
            )
        except ClientError as exc:
            if not dynamo.condition_failed(exc):
                raise
            fresh = _token_of(self._read(connection))
            if fresh and fresh.value != token.value and fresh.valid_for(now) > MIN_USABLE_SECONDS:
                self._memory[connection] = fresh
                return fresh
            return None  # a 401 refresh was spent moments ago: this token will not do better
        self.invalidate(connection, token)
        return self.get(connection)

    def _lock_of(self, connection: str) -> threading.RLock:
        with self._locking:
            return self._locks.setdefault(connection, threading.RLock())

    def mark_missing(self, connection: str, scope: str) -> float:
        """A fresh token was refused: `scope` is missing. Marked for everyone until it is
        rechecked, or the secret changes (`crm-to-books connect`). Returns the recheck time."""
        with self._lock_of(connection):  # another lane's `scope_works` would undo it here
            return self._mark_missing(connection, scope)

    def _mark_missing(self, connection: str, scope: str) -> float:
        now = self._clock()
        until = now + SCOPE_RECHECK_SECONDS
        try:
            fp = fingerprint(self._credentials(connection).refresh_token)
        except TokenError:
            fp = ""
        self._set_missing(connection, scope, {"until": until, "fingerprint": fp})
        seen = self._seen.get(connection, ConnectionState())
        self._seen[connection] = ConnectionState(
            seen.broken, seen.throttled_until, {**seen.missing_scopes, scope: until}
        )
        metrics.add_metric(name="ZohoScopeMissing", unit="Count", value=1)
        logger.warning(
            "Zoho refused a fresh access token: a scope is missing",
            extra={"connection": connection, "scope": scope},
        )
        return until

    def scope_works(self, connection: str, scope: str) -> None:
        """A call needing `scope` succeeded: drop a mark this process has seen for it."""
        with self._lock_of(connection):
            self._scope_works(connection, scope)

    def _scope_works(self, connection: str, scope: str) -> None:
        seen = self._seen.get(connection)
        if not seen or scope not in seen.missing_scopes:
            return
        self._set_missing(connection, scope, None)
        self._seen[connection] = ConnectionState(
            seen.broken,
            seen.throttled_until,
            {s: t for s, t in seen.missing_scopes.items() if s != scope},
        )

    def state(self, connection: str) -> ConnectionState:
        """The connection's shared state, read now. Reads no secret and asks Zoho nothing."""
        return self._state_of(connection, self._read(connection))

    def keep_fresh(self, connection: str, ahead_seconds: float) -> dict[str, str]:
        """The token keeper's job: refresh if the token expires within `ahead_seconds`. A broken
        connection's secret is read again on every run, and so are the scope marks' secrets:
        this is where a connection heals after `crm-to-books connect`."""
        self._secret_checked.pop(connection, None)
        now = self._clock()
        item = self._read(connection)
        healed = self._heal(connection, item)
        try:
            self._raise_if_unusable(connection, item, now)
        except ConnectionBroken as exc:
            return {"connection": connection, "status": "broken", "detail": exc.reason}
        except TokenUnavailable as exc:
            return {"connection": connection, "status": "throttled", "detail": exc.message}
        shared = _token_of(item)
        scopes = self._state_of(connection, item).missing_scopes
        if scopes:
            listed = ", ".join(sorted(scopes))
            extra = f"; missing scopes: {listed} (run `crm-to-books connect`)"
        else:
            extra = "; healed after a new refresh token" if healed else ""
        if shared and shared.valid_for(now) > ahead_seconds:
            return {
                "connection": connection,
                "status": "fresh",
                "detail": f"valid for {int(shared.valid_for(now))} s{extra}",
            }
        if not self._take_lease(connection, now):
            return {
                "connection": connection,
                "status": "fresh",
                "detail": f"another caller is refreshing it{extra}",
            }
        try:
            token = self._refresh_holding_lease(connection, ahead_seconds)
        except ConnectionBroken as exc:
            return {"connection": connection, "status": "broken", "detail": exc.reason}
        except TokenUnavailable as exc:
            return {"connection": connection, "status": "throttled", "detail": exc.message}
        return {
            "connection": connection,
            "status": "refreshed",
            "detail": f"valid for {int(token.valid_for(self._clock()))} s{extra}",
        }

    # --- internals --------------------------------------------------------------------------
    def _read(self, connection: str) -> dict[str, Any]:
        answer = self.client.get_item(
            TableName=self._settings.state_table, Key=_key(connection), ConsistentRead=True
        )
        item = dynamo.load(answer.get("Item")) or {}
        self._seen[connection] = self._state_of(connection, item)
        return item

    @staticmethod
    def _state_of(connection: str, item: dict[str, Any]) -> ConnectionState:
        marks = item.get("missing_scopes") or {}
        return ConnectionState(
            broken=bool(item.get("broken")),
            throttled_until=max(
                float(item.get("throttled_until") or 0), float(item.get("refresh_after") or 0)
            ),
            missing_scopes={
                scope: float(mark.get("until") or 0)
                for scope, mark in marks.items()
                if isinstance(mark, dict)
            },
        )

    def _set_missing(self, connection: str, scope: str, mark: dict[str, Any] | None) -> None:
        key = _key(connection)
        table = self._settings.state_table
        if mark is None:
            try:
                self.client.update_item(
                    TableName=table,
                    Key=key,
                    UpdateExpression="REMOVE missing_scopes.#s",
                    ConditionExpression="attribute_exists(missing_scopes)",
                    ExpressionAttributeNames={"#s": scope},
                )
            except ClientError as exc:
                if not dynamo.condition_failed(exc):
                    raise
            return
        try:  # the map exists (the common case once a connection has met a missing scope)
            self.client.update_item(
                TableName=table,
                Key=key,
                UpdateExpression="SET missing_scopes.#s = :mark",
                ConditionExpression="attribute_exists(missing_scopes)",
                ExpressionAttributeNames={"#s": scope},
                ExpressionAttributeValues=dynamo.dump_values({":mark": mark}),
            )
        except ClientError as exc:
            if not dynamo.condition_failed(exc):
                raise
            self.client.update_item(
                TableName=table,
                Key=key,
                UpdateExpression="SET missing_scopes = :marks",
                ConditionExpression="attribute_not_exists(missing_scopes)",
                ExpressionAttributeValues=dynamo.dump_values({":marks": {scope: mark}}),
            )

    def _heal(self, connection: str, item: dict[str, Any]) -> bool:
        """After `crm-to-books connect` replaced the refresh token: the shared access token it
        did not issue is dropped (its scopes are the old token's), and scope marks made with the
        old one are cleared. True if anything was healed."""
        try:
            fp = fingerprint(self._credentials(connection, force=True).refresh_token)
        except TokenError:
            return False
        issued_by = item.get("refresh_fingerprint")
        healed = False
        if item.get("access_token") and issued_by and issued_by != fp:
            self.invalidate(connection, _token_of(item) or AccessToken("", "", 0))
            for name in ("access_token", "api_domain", "expires_at"):
                item.pop(name, None)
            healed = True
        marks = item.get("missing_scopes") or {}
        stale = [
            scope
            for scope, mark in marks.items()
            if isinstance(mark, dict) and mark.get("fingerprint") != fp
        ]
        for scope in stale:
            self._set_missing(connection, scope, None)
            marks.pop(scope, None)
        if healed or stale:
            logger.info(
                "connection healed: new refresh token found",
                extra={"connection": connection, "scopes_to_check_again": stale},
            )
        return healed or bool(stale)

    def _raise_if_unusable(self, connection: str, item: dict[str, Any], now: float) -> None:
        if item.get("broken"):
            if not self._secret_changed(connection, item, now):
                raise ConnectionBroken(connection, str(item.get("broken_reason") or "refused"))
            if self._clear_broken(connection, item):
                for name in ("broken", "throttled_until", "refresh_after", "failures"):
                    item.pop(name, None)  # cleared with it: the old token's blocks
            else:  # someone else cleared it first, and may have met a new block since
                fresh = self._read(connection)
                item.clear()
                item.update(fresh)
                return self._raise_if_unusable(connection, item, now)
        throttled_until = float(item.get("throttled_until") or 0)
        if throttled_until > now:
            raise TokenUnavailable(
                "Zoho's token limit (10 per 10 minutes) is reached for this connection",
                retry_after=throttled_until - now,
            )
        refresh_after = float(item.get("refresh_after") or 0)
        if refresh_after > now and not _token_of(item):
            raise TokenUnavailable(
                f"Zoho's token endpoint failed: {item.get('last_failure') or 'no answer'}",
                retry_after=refresh_after - now,
            )

    def _secret_changed(self, connection: str, item: dict[str, Any], now: float) -> bool:
        """An operator replaced the refresh token (crm-to-books connect): the connection heals."""
        if now - self._secret_checked.get(connection, 0) < SECRET_RECHECK_SECONDS:
            return False
        self._secret_checked[connection] = now
        try:
            creds = self._credentials(connection, force=True)
        except TokenError:
            return False
        return fingerprint(creds.refresh_token) != item.get("broken_fingerprint")

    def _clear_broken(self, connection: str, item: dict[str, Any]) -> bool:
        try:
            self.client.update_item(
                TableName=self._settings.state_table,
                Key=_key(connection),
                UpdateExpression=(
                    "REMOVE broken, broken_reason, broken_fingerprint, throttled_until, "
                    "refresh_after, failures"
                ),
                ConditionExpression="broken_fingerprint = :f",
                ExpressionAttributeValues=dynamo.dump_values(
                    {":f": item.get("broken_fingerprint", "")}
                ),
            )
        except ClientError as exc:
            if not dynamo.condition_failed(exc):
                raise
            return False
        logger.info(
            "connection repaired: new refresh token found", extra={"connection": connection}
        )
        return True

    def _take_lease(self, connection: str, now: float) -> bool:
        try:
            self.client.update_item(
                TableName=self._settings.state_table,
                Key=_key(connection),
                UpdateExpression="SET lease_owner = :o, lease_until = :u",
                ConditionExpression="attribute_not_exists(lease_until) OR lease_until < :now",
                ExpressionAttributeValues=dynamo.dump_values(
                    {":o": self._owner, ":u": now + self._lease, ":now": now}
                ),
            )
        except ClientError as exc:
            if dynamo.condition_failed(exc):
                return False
            raise
        return True

    def invalidate(self, connection: str, token: AccessToken) -> None:
        """Zoho refused this token (401): drop it here, and from the shared cache if it is
        still the shared one."""
        self._memory.pop(connection, None)
        try:
            self.client.update_item(
                TableName=self._settings.state_table,
                Key=_key(connection),
                UpdateExpression="REMOVE access_token, api_domain, expires_at",
                ConditionExpression="access_token = :t",
                ExpressionAttributeValues=dynamo.dump_values({":t": token.value}),
            )
        except ClientError as exc:
            if not dynamo.condition_failed(exc):
                raise  # a newer token is already there: keep it

    def _credentials(self, connection: str, force: bool = False) -> Credentials:
        secret_id = self._settings.connections[connection]
        try:
            secret = self._load_secret(secret_id, force)
        except TokenError:
            raise
        except Exception as exc:  # the secret store's own error text names no secret value
            raise TokenError(
                "unavailable", f"connection secret unreadable ({type(exc).__name__})", 30
            ) from None
        return Credentials.from_secret(secret)

    def _refresh_holding_lease(
        self, connection: str, fresh_enough: float | None = None
    ) -> AccessToken:
        """Read again under the lease: the caller that held it before may have just refreshed
        (both read "no token", it refreshed and let go, we took the lease). Then use its token;
        otherwise refresh from what is there now, so the refresh log is never stale. If it
        marked the connection broken or throttled meanwhile, give the lease back and say so:
        Zoho is not asked again with a refused refresh token or inside its block."""
        item = self._read(connection)
        try:
            self._raise_if_unusable(connection, item, self._clock())
        except (ConnectionBroken, TokenUnavailable):
            self._finish(connection, {})
            raise
        shared = _token_of(item)
        wanted = (
            self._settings.token_refresh_margin_seconds if fresh_enough is None else fresh_enough
        )
        if shared and shared.valid_for(self._clock()) > wanted:
            self._finish(connection, {})
            self._memory[connection] = shared
            return shared
        return self._refresh(connection, item)

    def _refresh(self, connection: str, item: dict[str, Any]) -> AccessToken:
        """Called holding the lease. Always gives the lease back."""
        now = self._clock()
        recent = _recent(item, now)
        if len(recent) >= OWN_TOKEN_BUDGET:
            until = min(recent) + ZOHO_TOKEN_WINDOW
            self._finish(connection, {"throttled_until": until})
            raise TokenUnavailable(
                "token refresh budget for this 10-minute window is spent", retry_after=until - now
            )
        creds: Credentials | None = None
        try:
            creds = self._credentials(connection, force=bool(item.get("broken_fingerprint")))
            if not self._count_request(connection, [*recent, now]):
                raise TokenUnavailable("another caller took over the token refresh", 2)
            self.refreshes += 1
            token = self._zoho.refresh(creds)
        except TokenError as exc:
            self._refused(connection, item, exc, creds, now)
        self._finish(
            connection,
            {
                "access_token": token.value,
                "api_domain": token.api_domain,
                "expires_at": token.expires_at,
                "refresh_fingerprint": fingerprint(creds.refresh_token),
            },
            removes=("refresh_after", "failures", "last_failure"),
        )
        self._memory[connection] = token
        metrics.add_metric(name=METRIC_TOKEN_REFRESHED, unit="Count", value=1)
        logger.info(
            "access token refreshed",
            extra={"connection": connection, "expires_in": int(token.valid_for(now))},
        )
        return token

    def _refused(
        self,
        connection: str,
        item: dict[str, Any],
        exc: TokenError,
        creds: Credentials | None,
        now: float,
    ) -> NoReturn:
        metrics.add_metric(name=METRIC_TOKEN_REFRESH_FAILED, unit="Count", value=1)
        logger.warning(
            "token refresh failed",
            extra={
                "connection": connection,
                "reason": exc.reason,
                "http_status": exc.http_status,
                "answer_excerpt": exc.excerpt,
            },
        )
        if exc.broken:
            self._finish(
                connection,
                {
                    "broken": True,
                    "broken_reason": exc.message,
                    "broken_fingerprint": fingerprint(creds.refresh_token) if creds else "",
                },
            )
            raise ConnectionBroken(connection, exc.message) from None
        if exc.reason == "throttled":
            self._finish(connection, {"throttled_until": now + exc.retry_after})
            raise TokenUnavailable(exc.message, retry_after=exc.retry_after) from None
        failures = int(item.get("failures") or 0)
        wait = max(exc.retry_after, TRANSIENT_BACKOFF[min(failures, len(TRANSIENT_BACKOFF) - 1)])
        self._finish(
            connection,
            {"refresh_after": now + wait, "failures": failures + 1, "last_failure": exc.message},
        )
        raise TokenUnavailable(exc.message, retry_after=wait) from None

    def _count_request(self, connection: str, recent: list[float]) -> bool:
        """Write the request into the budget log before sending it, still holding the lease:
        a request sent is counted, whatever happens to its lease afterwards."""
        try:
            self.client.update_item(
                TableName=self._settings.state_table,
                Key=_key(connection),
                UpdateExpression="SET refreshes = :r",
                ConditionExpression="lease_owner = :me",
                ExpressionAttributeValues=dynamo.dump_values({":r": recent, ":me": self._owner}),
            )
        except ClientError as exc:
            if dynamo.condition_failed(exc):
                return False
            raise
        return True

    def _finish(
        self, connection: str, changes: dict[str, Any], removes: tuple[str, ...] = ()
    ) -> None:
        """Give the lease back with `changes`. If it was lost meanwhile (our request outlived
        it), a token we got is still stored, unless the shared one lasts longer."""
        names = {f"#{k}": k for k in [*changes, *removes]}
        sets = ", ".join(f"#{k} = :{k}" for k in changes)
        drop = ", ".join(["lease_owner", "lease_until", *(f"#{k}" for k in removes)])
        request: dict[str, Any] = {
            "TableName": self._settings.state_table,
            "Key": _key(connection),
            "UpdateExpression": (f"SET {sets} " if sets else "") + f"REMOVE {drop}",
            "ConditionExpression": "lease_owner = :me",
            "ExpressionAttributeValues": dynamo.dump_values(
                {**{f":{k}": v for k, v in changes.items()}, ":me": self._owner}
            ),
        }
        if names:
            request["ExpressionAttributeNames"] = names
        try:
            self.client.update_item(**request)
        except ClientError as exc:
            if not dynamo.condition_failed(exc):
                raise
            logger.warning(
                "token lease lost before the refresh finished", extra={"connection": connection}
            )
            if "access_token" in changes:
                self._store_if_newer(connection, changes)

    def _store_if_newer(self, connection: str, token: dict[str, Any]) -> None:
        try:
            self.client.update_item(
                TableName=self._settings.state_table,
                Key=_key(connection),
                UpdateExpression="SET access_token = :a, api_domain = :d, expires_at = :e, "
                "refresh_fingerprint = :f",
                ConditionExpression="attribute_not_exists(expires_at) OR expires_at < :e",
                ExpressionAttributeValues=dynamo.dump_values(
                    {
                        ":a": token["access_token"],
                        ":d": token["api_domain"],
                        ":e": token["expires_at"],
                        ":f": token["refresh_fingerprint"],
                    }
                ),
            )
        except ClientError as exc:
            if not dynamo.condition_failed(exc):
                raise


def _recent(item: dict[str, Any], now: float) -> list[float]:
    return [float(t) for t in item.get("refreshes", []) if float(t) > now - ZOHO_TOKEN_WINDOW]


def _key(connection: str) -> dict[str, Any]:
    return {"pk": {"S": f"token#{connection}"}}


def _token_of(item: dict[str, Any]) -> AccessToken | None:
    if not item.get("access_token") or not item.get("expires_at"):
        return None
    return AccessToken(
        str(item["access_token"]),
        str(item["api_domain"]),
        float(item["expires_at"]),
    )
