"""Zoho access tokens shared by every container of every function.

Zoho allows 10 token requests per refresh token per 10 minutes and keeps only a bounded number
of access tokens alive, so a refresh per container is a bug at scale. Order of look-up: this
process's memory, then the shared cache (state table), then one refresh per connection at a
time, guarded by a lease (a conditional write); the others keep using the still-valid token or
wait for the new one. A refused refresh token marks the connection broken until its secret
changes; Zoho's token throttling is waited out, never spun on.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from functools import cache
from typing import Any

from botocore.exceptions import ClientError

from crm_to_books import dynamo
from crm_to_books.errors import ConnectionBroken
from crm_to_books.observability import logger, metrics
from crm_to_books.settings import Settings
from crm_to_books.topology import METRIC_TOKEN_REFRESH_FAILED, METRIC_TOKEN_REFRESHED
from crm_to_books.zoho import AccessToken, Credentials, TokenError, ZohoClient

ZOHO_TOKEN_WINDOW = 600.0  # Zoho: 10 token requests per refresh token per 10 minutes
OWN_TOKEN_BUDGET = 8  # we stop short of Zoho's 10, leaving room for an operator's own calls
LEASE_SECONDS = 15.0
MIN_USABLE_SECONDS = 60.0  # never hand out a token that could expire mid-call
SECRET_RECHECK_SECONDS = 60.0

SecretLoader = Callable[[str, bool], dict[str, Any]]


class TokenUnavailable(Exception):
    """No token now (Zoho throttling, Zoho down, another refresh under way): retry later."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


def fingerprint(secret_value: str) -> str:
    return hashlib.sha256(secret_value.encode()).hexdigest()[:16]


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
        self._memory: dict[str, AccessToken] = {}
        self._secret_checked: dict[str, float] = {}
        self.refreshes = 0  # this process's token requests, for tests and benchmarks

    @property
    def client(self) -> Any:
        if self._client is None:
            from crm_to_books import aws

            self._client = aws.client("dynamodb")
        return self._client

    # --- public -----------------------------------------------------------------------------
    def get(self, connection: str) -> AccessToken:
        """A usable access token. Raises ConnectionBroken or TokenUnavailable."""
        token = self._memory.get(connection)
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

    def invalidate(self, connection: str, token: AccessToken) -> None:
        """Zoho refused this token (401): drop it here and in the shared cache."""
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

    def keep_fresh(self, connection: str, ahead_seconds: float) -> dict[str, str]:
        """The token keeper's job: refresh if the token expires within `ahead_seconds`. A broken
        connection's secret is read again on every run: this is where it heals."""
        self._secret_checked.pop(connection, None)
        now = self._clock()
        item = self._read(connection)
        try:
            self._raise_if_unusable(connection, item, now)
        except ConnectionBroken as exc:
            return {"connection": connection, "status": "broken", "detail": exc.reason}
        except TokenUnavailable as exc:
            return {"connection": connection, "status": "throttled", "detail": exc.message}
        shared = _token_of(item)
        if shared and shared.valid_for(now) > ahead_seconds:
            return {
                "connection": connection,
                "status": "fresh",
                "detail": f"valid for {int(shared.valid_for(now))} s",
            }
        if not self._take_lease(connection, now):
            return {
                "connection": connection,
                "status": "fresh",
                "detail": "another caller is refreshing it",
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
            "detail": f"valid for {int(token.valid_for(self._clock()))} s",
        }

    def usable(self, connection: str) -> bool:
        """Whether imports on this connection can get a token now, by the shared state alone:
        not marked broken, not inside Zoho's token block. Reads no secret and asks Zoho nothing
        (the token keeper, which reads the secrets, heals a connection whose secret changed)."""
        item = self._read(connection)
        return not item.get("broken") and float(item.get("throttled_until") or 0) <= self._clock()

    # --- internals --------------------------------------------------------------------------
    def _read(self, connection: str) -> dict[str, Any]:
        answer = self.client.get_item(
            TableName=self._settings.state_table, Key=_key(connection), ConsistentRead=True
        )
        return dynamo.load(answer.get("Item")) or {}

    def _raise_if_unusable(self, connection: str, item: dict[str, Any], now: float) -> None:
        if item.get("broken"):
            if not self._secret_changed(connection, item, now):
                raise ConnectionBroken(connection, str(item.get("broken_reason") or "refused"))
            if self._clear_broken(connection, item):
                item.pop("broken", None)
                item.pop("throttled_until", None)  # cleared with it: the old token's block
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
                    "REMOVE broken, broken_reason, broken_fingerprint, throttled_until"
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
                    {":o": self._owner, ":u": now + LEASE_SECONDS, ":now": now}
                ),
            )
        except ClientError as exc:
            if dynamo.condition_failed(exc):
                return False
            raise
        return True

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
            self._finish(connection, {}, _recent(item, self._clock()))
            raise
        shared = _token_of(item)
        wanted = (
            self._settings.token_refresh_margin_seconds if fresh_enough is None else fresh_enough
        )
        if shared and shared.valid_for(self._clock()) > wanted:
            self._finish(connection, {}, _recent(item, self._clock()))
            self._memory[connection] = shared
            return shared
        return self._refresh(connection, item)

    def _refresh(self, connection: str, item: dict[str, Any]) -> AccessToken:
        """Called holding the lease. Always gives the lease back."""
        now = self._clock()
        recent = _recent(item, now)
        if len(recent) >= OWN_TOKEN_BUDGET:
            until = min(recent) + ZOHO_TOKEN_WINDOW
            self._finish(connection, {"throttled_until": until}, recent)
            raise TokenUnavailable(
                "token refresh budget for this 10-minute window is spent", retry_after=until - now
            )
        creds: Credentials | None = None
        try:
            creds = self._credentials(connection, force=bool(item.get("broken_fingerprint")))
            self.refreshes += 1
            recent.append(now)
            token = self._zoho.refresh(creds)
        except TokenError as exc:
            metrics.add_metric(name=METRIC_TOKEN_REFRESH_FAILED, unit="Count", value=1)
            logger.warning(
                "token refresh failed", extra={"connection": connection, "reason": exc.reason}
            )
            if exc.broken:
                self._finish(
                    connection,
                    {
                        "broken": True,
                        "broken_reason": exc.message,
                        "broken_fingerprint": fingerprint(creds.refresh_token) if creds else "",
                    },
                    recent,
                )
                raise ConnectionBroken(connection, exc.message) from None
            changes = (
                {"throttled_until": now + exc.retry_after} if exc.reason == "throttled" else {}
            )
            self._finish(connection, changes, recent)
            raise TokenUnavailable(exc.message, retry_after=exc.retry_after or 30) from None
        self._finish(
            connection,
            {
                "access_token": token.value,
                "api_domain": token.api_domain,
                "expires_at": token.expires_at,
            },
            recent,
        )
        self._memory[connection] = token
        metrics.add_metric(name=METRIC_TOKEN_REFRESHED, unit="Count", value=1)
        logger.info(
            "access token refreshed",
            extra={"connection": connection, "expires_in": int(token.valid_for(now))},
        )
        return token

    def _finish(self, connection: str, changes: dict[str, Any], recent: list[float]) -> None:
        sets = {**changes, "refreshes": recent}
        names = {f"#{k}": k for k in sets}
        try:
            self.client.update_item(
                TableName=self._settings.state_table,
                Key=_key(connection),
                UpdateExpression="SET "
                + ", ".join(f"#{k} = :{k}" for k in sets)
                + " REMOVE lease_owner, lease_until",
                ConditionExpression="lease_owner = :me",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=dynamo.dump_values(
                    {**{f":{k}": v for k, v in sets.items()}, ":me": self._owner}
                ),
            )
        except ClientError as exc:
            if not dynamo.condition_failed(exc):
                raise
            logger.warning(
                "token lease lost before the refresh finished", extra={"connection": connection}
            )


def _recent(item: dict[str, Any], now: float) -> list[float]:
    return [float(t) for t in item.get("refreshes", []) if float(t) > now - ZOHO_TOKEN_WINDOW]


def _key(connection: str) -> dict[str, Any]:
    return {"pk": {"S": f"token#{connection}"}}


def _token_of(item: dict[str, Any]) -> AccessToken | None:
    if not item.get("access_token") or not item.get("expires_at"):
        return None
    return AccessToken(
        str(item["access_token"]), str(item["api_domain"]), float(item["expires_at"])
    )
