"""Per-organization rate limiter shared by every function and container (DynamoDB).

One item per organization holds the calls in flight (leases with an expiry, so a killed
container cannot hold a slot forever), a sliding log of finished calls stamped with the time
they *finished*, the day's count and a park time. A call counts against the window from its
permit until one window after it finished: Zoho sees it arrive somewhere in between, so no
delay between permit and arrival can put more than the limit in any span Zoho measures.
Every change is a conditional write on a version number, so concurrent containers never both
take the last slot. A permit is needed for every Zoho Books call, look-ups included.

Guarantees: at most `requests_per_minute` calls started in any `window` span, at most
`max_concurrency` in flight, at most `daily_limit` per UTC day.

Times in the item are compact, so that at Zoho's 100 calls a minute with 10 in flight it stays
under 1 KB (one write unit instead of two, on every write of every import): whole centiseconds,
rounded up (a call never counts for less than it did), modulo 10^8 (about 11.6 days), read back
as the latest such time not more than an hour ahead of this container's clock. 8 digits, not 13.
An item last acquired before yesterday (UTC) is read as empty: nothing in it can still count,
and its stamps could have wrapped. A lease that ran out (its container died mid-call) counts on
as a call that finished when the lease ended: Zoho counts it from whenever it arrived.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from crm_to_books import dynamo
from crm_to_books.settings import Organization

MAX_CONTENTION_RETRIES = 12
STAMP_MODULUS = 10**8  # centiseconds: about 11.6 days
STAMP_AHEAD = 3_600 * 100  # a stamp up to an hour ahead of this clock is read as the future
LEASE_ID_LENGTH = 8  # hex: unique enough among one organization's calls in flight


def stamp(t: float) -> int:
    """A time as stored in the limiter item."""
    return math.ceil(round(t * 100, 6)) % STAMP_MODULUS


def unstamp(value: float, now: float) -> float:
    """A stored time back in epoch seconds (an epoch-seconds value is read as it is)."""
    if value >= STAMP_MODULUS:
        return float(value)
    ahead = math.floor(now * 100) + STAMP_AHEAD
    return (ahead - (ahead - int(value)) % STAMP_MODULUS) / 100


@dataclass(frozen=True, slots=True)
class Permit:
    organization_id: str
    lease_id: str


@dataclass(frozen=True, slots=True)
class Denied:
    retry_after: float
    reason: str  # per_minute, concurrency, daily, blocked, contention
    until: float  # epoch seconds

    @property
    def parks(self) -> bool:
        """Long waits are parked in the ledger instead of held by a queue message."""
        return self.reason == "daily"


class RateLimiter:
    def __init__(
        self,
        table_name: str,
        window_seconds: float = 60.0,
        lease_seconds: float = 40.0,
        client: Any = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._table = table_name
        self._window = window_seconds
        self._lease = lease_seconds
        self._client = client
        self._clock = clock
        self._sleep = sleep
        self._known: dict[str, dict[str, Any]] = {}  # last item seen per organization
        self._releasing: dict[str, float] = {}  # lease id -> finish stamp, until written

    @property
    def client(self) -> Any:
        if self._client is None:
            from crm_to_books import aws

            self._client = aws.client("dynamodb")
        return self._client

    @staticmethod
    def key(organization_id: str) -> dict[str, Any]:
        return {"pk": {"S": f"limiter#{organization_id}"}}

    def acquire(self, organization_id: str, org: Organization) -> Permit | Denied:
        for attempt in range(MAX_CONTENTION_RETRIES):
            item = self._known.get(organization_id)
            fresh = item is None
            if item is None:
                item = self._read(organization_id)
            now = self._clock()
            state = _State.of(item, now, self._window)
            denied = state.check(org, now, self._window)
            if denied is not None and not fresh:
                # A snapshot can be stale (others released slots): deny only on a fresh read.
                item = self._read(organization_id)
                state = _State.of(item, now, self._window)
                denied = state.check(org, now, self._window)
            if denied is not None:
                self._known[organization_id] = item
                return denied
            lease_id = uuid.uuid4().hex[:LEASE_ID_LENGTH]
            new = state.taken(organization_id, lease_id, now, now + self._lease)
            try:
                self.client.put_item(
                    TableName=self._table,
                    Item=dynamo.dump(new),
                    ConditionExpression="attribute_not_exists(pk) OR v = :v",
                    ExpressionAttributeValues=dynamo.dump_values({":v": state.version}),
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except ClientError as exc:
                if not dynamo.condition_failed(exc):
                    raise
                # Someone else changed it: start again from what DynamoDB says it is now.
                self._known[organization_id] = dynamo.old_item(exc) or {}
                self._sleep(random.uniform(0, 0.01 * (attempt + 1)))
                continue
            self._known[organization_id] = new
            return Permit(organization_id, lease_id)
        return Denied(0.5, "contention", self._clock() + 0.5)

    def release_update(self, permit: Permit) -> dict[str, Any]:
        """The release as a TransactWriteItems `Update`, to ride along the ledger write."""
        done = stamp(self._clock())
        self._releasing[permit.lease_id] = done
        return {
            "Update": {
                "TableName": self._table,
                "Key": self.key(permit.organization_id),
                "UpdateExpression": "REMOVE inflight.#l "
                "SET calls = list_append(if_not_exists(calls, :none), :done) ADD v :one",
                "ExpressionAttributeNames": {"#l": permit.lease_id},
                "ExpressionAttributeValues": dynamo.dump_values(
                    {":one": 1, ":none": [], ":done": [done]}
                ),
            }
        }

    def released(self, permit: Permit) -> None:
        """The release was written (with the ledger's transaction): bring this container's
        snapshot in step, so its next acquire is one call instead of a failed one and a retry.
        Had anyone else written in between, the version check catches it as usual."""
        done = self._releasing.pop(permit.lease_id, None)
        known = self._known.get(permit.organization_id)
        if done is None or known is None:
            return
        inflight = {k: v for k, v in (known.get("inflight") or {}).items() if k != permit.lease_id}
        self._known[permit.organization_id] = {
            **known,
            "inflight": inflight,
            "calls": [*known.get("calls", []), done],
            "v": int(known.get("v", 0)) + 1,
        }

    def release(self, permit: Permit) -> None:
        update = self.release_update(permit)["Update"]
        update.pop("TableName")
        self.client.update_item(TableName=self._table, **update)
        self._known.pop(permit.organization_id, None)

    def block(self, organization_id: str, until: float, reason: str) -> None:
        """Zoho said stop (429): nobody calls for this organization until `until`."""
        try:
            self.client.update_item(
                TableName=self._table,
                Key=self.key(organization_id),
                UpdateExpression="SET parked_until = :u, park_reason = :r ADD v :one",
                ConditionExpression="attribute_not_exists(parked_until) OR parked_until < :u",
                ExpressionAttributeValues=dynamo.dump_values(
                    {":u": until, ":r": reason, ":one": 1}
                ),
            )
        except ClientError as exc:
            if not dynamo.condition_failed(exc):
                raise  # already blocked for longer: nothing to do
        self._known.pop(organization_id, None)

    def _read(self, organization_id: str) -> dict[str, Any]:
        answer = self.client.get_item(
            TableName=self._table, Key=self.key(organization_id), ConsistentRead=True
        )
        return dynamo.load(answer.get("Item")) or {}

    def snapshot(self, organization_id: str) -> dict[str, Any]:
        """Current usage, for status and benchmarks."""
        now = self._clock()
        state = _State.of(self._read(organization_id), now, self._window)
        return {
            "calls_in_window": len(state.calls),
            "in_flight": len(state.inflight),
            "day": state.day,
            "day_count": state.day_count,
            "parked_until": state.parked_until or None,
        }


def next_utc_midnight(now: float) -> float:
    today = datetime.fromtimestamp(now, UTC).date()
    return datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC).timestamp()


@dataclass(slots=True)
class _State:
    calls: list[float]
    inflight: dict[str, float]
    day: str
    day_count: int
    parked_until: float
    park_reason: str
    version: int

    @classmethod
    def of(cls, item: dict[str, Any], now: float, window: float) -> _State:
        date = datetime.fromtimestamp(now, UTC).date()
        today = date.isoformat()
        same_day = item.get("day") == today
        stale = str(item.get("day") or today) < (date - timedelta(days=1)).isoformat()
        stamps = [] if stale else [unstamp(v, now) for v in item.get("calls", [])]
        leases = (
            {} if stale else {k: unstamp(v, now) for k, v in (item.get("inflight") or {}).items()}
        )
        ended = [t for t in leases.values() if t <= now]  # died mid-call: count it as finished
        return cls(
            calls=[t for t in (*stamps, *ended) if t > now - window],
            inflight={k: t for k, t in leases.items() if t > now},
            day=today,
            day_count=int(item.get("day_count", 0)) if same_day else 0,
            parked_until=float(item.get("parked_until") or 0),
            park_reason=str(item.get("park_reason") or ""),
            version=int(item.get("v", 0)),
        )

    def check(self, org: Organization, now: float, window: float) -> Denied | None:
        if self.parked_until > now:
            reason = "daily" if self.park_reason == "daily" else "blocked"
            return Denied(self.parked_until - now, reason, self.parked_until)
        if self.day_count >= org.daily_limit:
            until = next_utc_midnight(now)
            return Denied(until - now, "daily", until)
        if len(self.calls) + len(self.inflight) >= org.requests_per_minute:
            if not self.calls:  # the whole budget is in flight: wait for calls to finish
                wait = random.uniform(0.2, 1.0)
                return Denied(wait, "per_minute", now + wait)
            # Spread the waiters a little: all pointed at the same instant, they would all
            # collide on this one item when the oldest call leaves the window.
            until = min(self.calls) + window + random.uniform(0, min(1.0, 0.02 * window))
            return Denied(max(until - now, 0.01), "per_minute", until)
        if len(self.inflight) >= org.max_concurrency:
            wait = min(min(self.inflight.values()) - now, random.uniform(0.2, 1.0))
            return Denied(max(wait, 0.05), "concurrency", now + wait)
        return None

    def taken(
        self, organization_id: str, lease_id: str, now: float, lease_until: float
    ) -> dict[str, Any]:
        return {
            "pk": f"limiter#{organization_id}",
            "calls": [stamp(t) for t in self.calls],
            "inflight": {
                **{k: stamp(t) for k, t in self.inflight.items()},
                lease_id: stamp(lease_until),
            },
            "day": self.day,
            "day_count": self.day_count + 1,
            "parked_until": self.parked_until or None,
            "park_reason": self.park_reason or None,
            "v": self.version + 1,
        }
