"""Every Zoho CRM call goes through here: one call at a time per CRM organization, a shared
back-off after a 429, the connection's shared access token, and answers turned into outcomes.

Zoho CRM's limits (API credits per day, calls in flight per organization) are its own, apart
from Books': nothing here touches the Books rate limiter. A connection's refresh token belongs
to one CRM organization, so the lease is per connection: the state table's `crm#{connection}`
item holds who is calling (`lease_owner`, `lease_until`) and, after a 429, until when nobody
calls (`throttled_until`, growing with each 429 in a row). A lease outlives the slowest call
the timeouts allow, so a caller that died mid-call only delays the next one.

Zoho answers a CRM 429 with `TOO_MANY_REQUESTS` or `RATE_LIMIT_EXCEEDED` depending on the API:
it is classified by the HTTP status alone.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from crm_to_books import dynamo
from crm_to_books.clients import LazyClient
from crm_to_books.errors import ConnectionBroken
from crm_to_books.observability import logger
from crm_to_books.settings import Settings
from crm_to_books.tokens import TokenProvider, TokenUnavailable, refresh_lease_seconds
from crm_to_books.zoho import AccessToken, CrmAnswer, ZohoClient

BACKOFF_SECONDS = (2.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0)  # after 1, 2, ... 429s in a row
POLL_SECONDS = 0.2  # how often a caller looks again for a free lease
UNAVAILABLE_TRIES = 2  # a 5xx or no answer is asked again this often (CRM reads and watch
# writes are idempotent: the same channel id subscribed again replaces itself)
SCOPE_MISMATCH = "OAUTH_SCOPE_MISMATCH"


class CrmProblem(Exception):
    """A CRM call did not succeed. `reason` (rate_limited, busy, scope_missing, unavailable,
    connection_broken, refused) says what; `message` is for a person (never a secret)."""

    def __init__(self, reason: str, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


def crm_scope(module: str) -> str:
    """The read scope a CRM module's records need (Zoho: `ZohoCRM.modules.{module}.READ`)."""
    return f"ZohoCRM.modules.{module.lower()}.READ"


NOTIFICATIONS_SCOPE = "ZohoCRM.notifications.ALL"


def scope_advice(connection: str, scope: str) -> str:
    return (
        f"the connection {connection!r} lacks the Zoho CRM scope {scope}: run `crm-to-books "
        f"connect --connection {connection} ...` with a grant code that includes it (connect "
        "asks for the CRM scopes); imports into Books go on meanwhile"
    )


class CrmGate:
    def __init__(
        self,
        settings: Settings,
        tokens: TokenProvider,
        zoho: ZohoClient,
        client: Any = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._settings = settings
        self._tokens = tokens
        self._zoho = zoho
        self._client = client
        self._clock = clock
        self._sleep = sleep
        self._owner = uuid.uuid4().hex
        self._lease = refresh_lease_seconds(settings)
        self.calls = 0  # CRM calls this process made, for tests and benchmarks

    client = LazyClient("dynamodb")

    def call(
        self,
        connection: str,
        scope: str,
        request: Callable[[AccessToken], CrmAnswer],
        deadline: float,
    ) -> CrmAnswer:
        """`request` with the connection's token, alone on its CRM organization. Returns a 2xx
        (204 and 304 included) or a 4xx other than 401/429; raises CrmProblem otherwise,
        waiting out 429s and the others' calls while `deadline` (our clock) allows."""
        if self._tokens.missing_scope(connection, scope) is not None:
            raise CrmProblem("scope_missing", scope_advice(connection, scope))
        unavailable = 0
        while True:
            throttles = self._acquire(connection, deadline)
            answer: CrmAnswer | None = None
            try:
                answer = self._send(connection, scope, request)
            finally:
                throttled = answer is not None and answer.http_status == 429
                wait = self._release(connection, throttles if throttled else None)
            assert answer is not None  # _send returned (it raised otherwise)
            if throttled:
                if self._clock() + wait > deadline:
                    raise CrmProblem(
                        "rate_limited",
                        f"Zoho CRM answered 429 ({answer.code or 'TOO_MANY_REQUESTS'}: "
                        f"{answer.message}); backing off {wait:.0f} s",
                        retry_after=wait,
                    )
                continue  # _acquire waits for the back-off to pass
            if answer.http_status is None or answer.http_status >= 500:
                unavailable += 1
                if unavailable >= UNAVAILABLE_TRIES or self._clock() + 2 > deadline:
                    said = f"HTTP {answer.http_status}" if answer.http_status else answer.message
                    raise CrmProblem("unavailable", f"Zoho CRM did not answer ({said})", 60)
                self._sleep(random.uniform(0.5, 1.5))
                continue
            if answer.http_status < 400:
                self._tokens.scope_works(connection, scope)
            return answer

    # --- the call, with its token -------------------------------------------------------------
    def _send(
        self, connection: str, scope: str, request: Callable[[AccessToken], CrmAnswer]
    ) -> CrmAnswer:
        token = self._token(connection)
        answer = self._counted(request, token)
        if answer.http_status != 401:
            return answer
        if answer.code == SCOPE_MISMATCH:
            self._tokens.mark_missing(connection, scope)
            raise CrmProblem("scope_missing", scope_advice(connection, scope))
        # INVALID_TOKEN, AUTHENTICATION_FAILURE: Zoho may have evicted the token; one new one.
        fresh = self._tokens.after_401(connection, token)
        if fresh is None:
            raise CrmProblem(
                "unavailable",
                f"Zoho CRM refused a fresh access token ({answer.code}: {answer.message})",
                300,
            )
        answer = self._counted(request, fresh)
        if answer.http_status == 401:
            if answer.code == SCOPE_MISMATCH:
                self._tokens.mark_missing(connection, scope)
            raise CrmProblem("scope_missing", scope_advice(connection, scope))
        return answer

    def _counted(
        self, request: Callable[[AccessToken], CrmAnswer], token: AccessToken
    ) -> CrmAnswer:
        self.calls += 1
        return request(token)

    def _token(self, connection: str) -> AccessToken:
        try:
            return self._tokens.get(connection)
        except ConnectionBroken as exc:
            raise CrmProblem("connection_broken", exc.message) from None
        except TokenUnavailable as exc:
            raise CrmProblem("unavailable", exc.message, exc.retry_after) from None

    # --- the lease ------------------------------------------------------------------------------
    def _acquire(self, connection: str, deadline: float) -> int:
        """Take the lease (waiting while `deadline` allows); the 429s in a row so far."""
        while True:
            now = self._clock()
            try:
                taken = self.client.update_item(
                    TableName=self._settings.state_table,
                    Key=_key(connection),
                    UpdateExpression="SET lease_owner = :me, lease_until = :until",
                    ConditionExpression=(
                        "(attribute_not_exists(lease_until) OR lease_until < :now) AND "
                        "(attribute_not_exists(throttled_until) OR throttled_until <= :now)"
                    ),
                    ExpressionAttributeValues=dynamo.dump_values(
                        {":me": self._owner, ":until": now + self._lease, ":now": now}
                    ),
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
                return int((dynamo.load(taken.get("Attributes")) or {}).get("throttles") or 0)
            except ClientError as exc:
                if not dynamo.condition_failed(exc):
                    raise
                held = dynamo.old_item(exc) or {}
            throttled_until = float(held.get("throttled_until") or 0)
            # A holder gives the lease back as its call ends (`lease_until` only bounds one that
            # died): look again soon. A back-off is waited out whole.
            wait = max(throttled_until - now, POLL_SECONDS * random.uniform(0.5, 1.5))
            if now + wait > deadline:
                throttled = throttled_until > now
                raise CrmProblem(
                    "rate_limited" if throttled else "busy",
                    "Zoho CRM is backing off after a 429"
                    if throttled
                    else "another caller is using this CRM organization",
                    retry_after=max(wait, 1.0),
                )
            self._sleep(min(wait, 5.0))

    def _release(self, connection: str, throttles: int | None) -> float:
        """Give the lease back. After a 429 (`throttles`: those in a row before it), everyone
        waits the back-off, set in the same write: returned."""
        values: dict[str, Any] = {":me": self._owner}
        wait = 0.0
        if throttles is None:
            update = "REMOVE lease_owner, lease_until, throttles, throttled_until"
        else:
            wait = BACKOFF_SECONDS[min(throttles, len(BACKOFF_SECONDS) - 1)]
            update = "SET throttles = :n, throttled_until = :until REMOVE lease_owner, lease_until"
            values |= {":n": throttles + 1, ":until": self._clock() + wait}
            logger.warning(
                "Zoho CRM answered 429: backing off",
                extra={"connection": connection, "seconds": wait, "in_a_row": throttles + 1},
            )
        try:
            self.client.update_item(
                TableName=self._settings.state_table,
                Key=_key(connection),
                UpdateExpression=update,
                ConditionExpression="lease_owner = :me",
                ExpressionAttributeValues=dynamo.dump_values(values),
            )
        except ClientError as exc:
            if not dynamo.condition_failed(exc):
                raise
            logger.warning("CRM lease lost during a call", extra={"connection": connection})
        return wait


def _key(connection: str) -> dict[str, Any]:
    return {"pk": {"S": f"crm#{connection}"}}
