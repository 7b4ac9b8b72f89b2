"""Per-organization rate limiter shared by every function and container (DynamoDB).

One item per organization (nothing shared between organizations) holds *slots*:

- `r{k}`, k < `requests_per_minute`: rate slots. A call takes one for its whole span: the slot
  reads "busy until its lease ends, plus a window" while the call is in flight, and "busy until
  the call finished, plus a window" once it is released. A call counts against the window from
  its permit until one window after it finished: Zoho sees it arrive somewhere in between, so
  no delay between permit and arrival can put more than the limit in any span Zoho measures
  (two of any `limit + 1` calls share a slot, and a slot's next call starts a window after the
  last one finished). A container that died mid-call holds its slot until its lease ended,
  plus a window.
- `c{j}`, j < `max_concurrency`: seats, busy until the call's lease ends or it is released.
- `day` and `day_count` (the UTC day's calls), `parked_until` (Zoho said stop).

A permit is one `UpdateItem` whose condition is about the slot and seat it takes, the day's
count and the park, never about the rest of the item: containers taking different slots at once
do not conflict (a version number on the whole item made every concurrent acquire but one fail,
which under contention cost more calls than the imports themselves). The update returns the
item, so each container keeps a recent view of it; a release (riding in the ledger's
transaction) is an unconditional update of the container's own slot and seat.

Denials say when to come back, never "try again soon": a rate slot's next free time is known
exactly (a finished call's stamp never changes until the slot is taken again), so a denial picks
one of the next slots to free, at random among them (denied containers spread over the slots
instead of colliding on the first), and says a whole number of seconds (queue delays are whole
seconds) that lands at most `AHEAD_SECONDS` before it. A container that comes back then takes a
permit for a slot that frees within `AHEAD_SECONDS` and waits for it in process (`Permit.start_at`),
so a freed slot is used when it frees. A view showing every slot busy proves a denial without a
read: busy rate slots only ever become busy for less, never free, until their time.

A queued caller (one that can carry a `Reservation`) at the limit is given a *turn* instead: a
slot held for it from when it frees. For each queued caller a container told to come back with
no turn, its next release at the limit keeps its slot as a turn for the next queued caller it
sees (`claim`), in the write the release makes anyway: no other container knows the slot is
done, so nobody races for it, and the turn costs no call.

Guarantees (each atomic in DynamoDB's condition): at most `requests_per_minute` calls in any
`window` span that Zoho measures, by arrival, whatever the containers' clocks disagree by up to
`SKEW_SECONDS`; at most `max_concurrency` in flight; at most `daily_limit` per UTC day; nobody
calls while the organization is parked. A dead container's permit counts until its lease ends
(its rate slot one window longer).

Times in the item are compact, so that at Zoho's 100 calls a minute with 10 in flight it stays
under 1 KB (one write unit instead of two, on every write of every import): whole centiseconds,
rounded up (a call never counts for less than it did), modulo 10^8 (about 11.6 days), read back
as the latest such time not more than an hour ahead of this container's clock; a condition
compares them the same way. An item last used before yesterday (UTC) is read as empty (its
stamps could have wrapped) and is written anew.
"""

from __future__ import annotations

import functools
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate

from botocore.exceptions import ClientError

from crm_to_books import dynamo
from crm_to_books.clients import LazyClient
from crm_to_books.settings import Organization

MAX_TRIES = 8  # conditional writes lost to another container taking the same slot or seat
STAMP_MODULUS = 10**8  # centiseconds: about 11.6 days
STAMP_AHEAD = 3_600 * 100  # a stamp up to an hour ahead of this clock is read as the future
RELEASED_HERE = "_released_here"  # in a container's view only: the slots it released since
MAX_HOLD_TRIES = 2  # reservations one acquire may try
AHEAD_SECONDS = 1.0  # a permit may start this far ahead: queue delays come in whole seconds
# Two containers' clocks may disagree by this much: each within 50 ms of the true time (Lambda
# keeps them much closer), and 20 ms for rounding. It costs 0.2% of a 60 s window.
SKEW_SECONDS = 0.12
HOLD_GUESS_SECONDS = 1.0  # a call's permit-to-release time before this container saw one
# A release holds its slot for the next queued import this container sees (`claim`) for a queued
# caller told to wait here this recently; such a turn is given while its slot holds it, less this.
BACKLOG_SECONDS = 30.0
POCKET_MARGIN_SECONDS = 5.0


def _locked[**P, R](
    method: Callable[Concatenate[RateLimiter, P], R],
) -> Callable[Concatenate[RateLimiter, P], R]:
    """One thread at a time per organization in this container's limiter: a batch's
    organizations are imported at once in threads sharing it (one organization's records in one
    thread), and an organization's view and turns are read and changed as one. The method's
    first argument names the organization: its id, or a `Permit`."""

    @functools.wraps(method)
    def locked(self: RateLimiter, /, *args: P.args, **kwargs: P.kwargs) -> R:
        about = args[0] if args else kwargs.get("organization_id", kwargs.get("permit"))
        organization_id = about.organization_id if isinstance(about, Permit) else str(about)
        with self._lock_of(organization_id):
            return method(self, *args, **kwargs)

    return locked


def stamp(t: float) -> int:
    """A time as stored in the limiter item."""
    return math.ceil(round(t * 100, 6)) % STAMP_MODULUS


def unstamp(value: float, now: float) -> float:
    """A stored time back in epoch seconds (an epoch-seconds value is read as it is)."""
    if value >= STAMP_MODULUS:
        return float(value)
    ahead = math.floor(now * 100) + STAMP_AHEAD
    return (ahead - (ahead - int(value)) % STAMP_MODULUS) / 100


def few_free(org: Organization) -> int:
    """Fewer free rate slots than this is a crowded organization: a tenth of the limit, at most
    as many as calls may run at once, at least one."""
    return max(1, min(org.max_concurrency, org.requests_per_minute // 10))


def rate_slot(k: int) -> str:
    return f"r{k}"


def seat(j: int) -> str:
    return f"c{j}"


@dataclass(frozen=True, slots=True)
class Permit:
    organization_id: str
    slot: int  # rate slot r{slot}
    seat: int  # concurrency seat c{seat}
    start_at: float = 0.0  # the call may not start before this (epoch seconds)
    granted_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Denied:
    retry_after: float
    reason: str  # per_minute, concurrency, daily, blocked, contention
    until: float  # epoch seconds

    @property
    def parks(self) -> bool:
        """Long waits are parked in the ledger instead of held by a queue message."""
        return self.reason == "daily"

    @property
    def brief(self) -> bool:
        """Worth a short wait in process: a seat or a lost race. A rate slot that frees within
        `AHEAD_SECONDS` is granted as a permit that starts then, so a per-minute denial is for
        longer, and waiting for it in process would only hold the container."""
        return self.reason in ("concurrency", "contention")


RESERVATION_FORMAT = "r1"
MAX_TURN_STAMP = 10**12  # centiseconds since the epoch: the year 2286


@dataclass(frozen=True, slots=True)
class Reservation:
    """A rate slot held for one caller from `start_at` (a pacer's turn): taken when a denied
    caller can be told exactly when a slot frees, so that it comes back to a slot of its own
    instead of racing other waiters for it. It holds no seat: the seat is taken when the call
    is made (`acquire(..., reservation=...)`). It is the caller's while the slot still holds
    `held` (until `start_at` plus a lease); after that the slot is anyone's again."""

    organization_id: str
    slot: int
    held: int  # the stamp the slot holds for it
    start_at: float  # epoch seconds: its turn

    def encode(self) -> str:
        """As carried by the queue message that comes back for it."""
        return f"{RESERVATION_FORMAT}:{self.slot}:{self.held}:{round(self.start_at * 100)}"

    @classmethod
    def decode(cls, organization_id: str, text: str | None) -> Reservation | None:
        """None for anything but what `encode` wrote (a sender cannot do more with a made-up
        one than lose a conditional write: the slot must hold `held`)."""
        parts = (text or "").split(":")
        if len(parts) != 4 or parts[0] != RESERVATION_FORMAT:
            return None
        try:
            slot, held, start = (int(p) for p in parts[1:])
        except ValueError:
            return None
        if not (0 <= slot < 100_000 and 0 <= held < STAMP_MODULUS and 0 < start < MAX_TURN_STAMP):
            return None  # a turn after year 2286 is made up (and too large a number raises)
        return cls(organization_id, slot, held, start / 100)


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
        # The item as last seen per organization, and when DynamoDB returned it.
        self._known: dict[str, tuple[dict[str, Any], float]] = {}
        self._releasing: dict[Permit, float] = {}  # permit -> its finish, until written
        # Per organization: its limits as last asked with, when a queued caller here last had
        # to wait for a slot (a backlog), and the turns held for the next ones (`claim`).
        self._orgs: dict[str, Organization] = {}
        self._backlog: dict[str, tuple[int, float]] = {}  # queued callers owed a turn, since
        self._pocket: dict[str, list[Reservation]] = {}
        self._turning: dict[Permit, Reservation | None] = {}  # a release's turn, until written
        self._hold = HOLD_GUESS_SECONDS  # how long a call holds its seat, as seen here
        # Per organization, the slot the last denial aimed this container at and the seat it
        # held last: tried first, since others aim elsewhere and sit elsewhere.
        self._mine: dict[str, tuple[int | None, int | None]] = {}
        # Per organization, among how many of the next slots to free a denial picks the one to
        # come back for: as many as run at once, doubled each time this container lost a race
        # (a slot taken first, or denied again when it came back), halved when it won one. Many
        # containers waiting spread over more slots instead of colliding on the first few.
        self._spread: dict[str, int] = {}
        # Per organization, when `crowded` read the item: the next acquire counts that read as
        # its own if it comes within `AHEAD_SECONDS` and the view was not replaced since.
        self._looked: dict[str, float] = {}
        # `_locked`: one lock per organization, made under `_locking`. (`_hold`, an estimate
        # shared by all, may lose an update to two organizations' releases at once: harmless.)
        self._locks: dict[str, threading.RLock] = {}
        self._locking = threading.Lock()

    client = LazyClient("dynamodb")

    def _lock_of(self, organization_id: str) -> threading.RLock:
        with self._locking:
            return self._locks.setdefault(organization_id, threading.RLock())

    @staticmethod
    def key(organization_id: str) -> dict[str, Any]:
        return {"pk": {"S": f"limiter#{organization_id}"}}

    @_locked
    def acquire(
        self,
        organization_id: str,
        org: Organization,
        *,
        reserve: bool = False,
        reservation: Reservation | None = None,
    ) -> Permit | Reservation | Denied:
        """A permit now (or within `AHEAD_SECONDS`: `Permit.start_at`), or why not and when to
        come back. `reserve`: the caller can carry a `Reservation` (a queue message can, an
        HTTP caller cannot): when every rate slot is busy, hold one for it instead of a denial.
        `reservation`: the one the caller carries, taken first if it is still its own."""
        self._orgs[organization_id] = org
        got = self._acquire(organization_id, org, reserve, reservation)
        if reserve and isinstance(got, Denied) and got.reason == "per_minute":
            # A queued caller told to come back with no turn: the next release here at the
            # limit keeps its slot for one such caller (`claim`).
            owed, _ = self._owed(organization_id)
            self._backlog[organization_id] = (owed + 1, self._clock())
        return got

    def _owed(self, organization_id: str) -> tuple[int, float]:
        """Queued callers told to wait here with no turn, not yet kept one for, and when the
        last was told: none once `BACKLOG_SECONDS` have passed since."""
        owed, since = self._backlog.get(organization_id, (0, -math.inf))
        return (owed, since) if since >= self._clock() - BACKLOG_SECONDS else (0, since)

    def _acquire(
        self,
        organization_id: str,
        org: Organization,
        reserve: bool,
        reservation: Reservation | None,
    ) -> Permit | Reservation | Denied:
        if reservation is not None and reservation.organization_id == organization_id:
            took = self._take_reserved(organization_id, org, reservation)
            if took is not None:
                return took
        fresh = False  # the view was read during this acquire
        holds = 0  # reservations tried: racing every waiter for a slot costs more than waiting
        lost = False  # a conditional write for a slot was lost to another container
        for _ in range(MAX_TRIES):
            view, now, read = self._view(organization_id)
            fresh = fresh or read
            mine = self._mine.get(organization_id)
            spread = self._spread.get(organization_id, org.max_concurrency)
            # A caller that can be given a turn does not race for the one or two slots about to
            # free (many containers racing for them cost more calls than the imports): it takes
            # one free now, or, once it lost such a race, holds one of the next to free.
            reach = (-1.0 if lost else 0.0) if reserve else AHEAD_SECONDS
            plan = view.plan(org, now, self._lease, self._hold, mine, spread, reach)
            if isinstance(plan, tuple) and isinstance(plan[0], Denied):
                plan = self._aim(organization_id, org, mine, *plan)
            if isinstance(plan, Denied):
                can_hold = reserve and plan.reason == "per_minute" and holds < MAX_HOLD_TRIES
                if not fresh and not view.proves(plan, now):
                    # Seats free when calls are released, and a view older than a window may
                    # hide released calls whose slots are free: look before saying no. (Not to
                    # find a slot released since the view, to hold: at the limit with queued
                    # imports waiting, releases keep their slots for them (`claim`), and every
                    # waiting caller looking for one cost a read, and a race, per message.)
                    self._known.pop(organization_id)
                    continue
                if not can_hold:
                    return plan
                holds += 1
                held = self._reserve(organization_id, org, view, plan, spread)
                if held is None:  # someone took or held that slot first
                    fresh = True
                    continue
                return held
            slot, chair, start = plan
            try:
                taken = self._take(organization_id, org, view, slot, chair, now, start)
            except ClientError as exc:
                if not dynamo.condition_failed(exc):
                    raise
                # Someone took that slot or seat first: start again from the item as it is now.
                self._known[organization_id] = (dynamo.old_item(exc) or {}, self._clock())
                self._widen(organization_id, org)
                fresh = lost = True
                continue
            self._known[organization_id] = (taken, now)
            self._mine[organization_id] = (None, chair)
            self._spread[organization_id] = max(org.max_concurrency, spread // 2)
            return Permit(organization_id, slot, chair, start_at=start, granted_at=now)
        wait = random.uniform(0.2, 1.0)
        return Denied(wait, "contention", self._clock() + wait)

    def _aim(
        self,
        organization_id: str,
        org: Organization,
        mine: tuple[int | None, int | None] | None,
        denied: Denied,
        aim: int,
    ) -> Denied:
        """Remember the slot a per-minute denial aims this container at."""
        if mine is not None and mine[0] is not None:  # came back and lost its slot
            self._widen(organization_id, org)
        self._mine[organization_id] = (aim, self._mine.get(organization_id, (None, None))[1])
        return denied

    @_locked
    def crowded(self, organization_id: str, org: Organization) -> bool:
        """Whether the organization is at or near its per-minute limit (fewer rate slots free
        than `few_free`) or has every seat taken (as many calls in flight as may run at once),
        as this container saw it, or this container lost a race for a slot lately: a caller
        that can carry a reservation then asks the limiter before writing anything else, since
        it is likely to wait, for a turn or for a seat. A container that never saw the
        item reads it (one `GetItem`, which the acquire that follows would make anyway, and
        which counts as read for it): a cold container at a crowded organization then waits
        without writing the ledger."""
        self._orgs[organization_id] = org
        known = self._known.get(organization_id)
        if known is None:
            known = self._known[organization_id] = (self._read(organization_id), self._clock())
            self._looked[organization_id] = known[1]
        item, seen = known
        now = self._clock()
        # A view older than a window says nothing of now: as crowded as it was when read (a
        # container back from a long wait for its turn finds the organization as it left it).
        at = now if now - seen < self._window else seen
        cap, rpm = org.max_concurrency, org.requests_per_minute
        busy = sum(1 for k, t in _View.stamps(item, at).items() if k < rpm and t > at)
        seated = sum(1 for j, t in _View.stamps(item, at, "c").items() if j < cap and t > at)
        lost = self._spread.get(organization_id, cap) > cap
        return lost or rpm - busy < few_free(org) or seated >= cap

    def _reserve(
        self, organization_id: str, org: Organization, view: _View, denied: Denied, spread: int
    ) -> Reservation | Denied | None:
        """Hold a slot from when it frees: one conditional write. `denied` if no slot can be
        held (each in flight or held already); None if the write lost to someone who took or
        held that slot since this view (the item as it is now is known then)."""
        now = self._clock()
        turn = view.reservable(org, now, max(org.max_concurrency, spread))
        if turn is None:  # back when a call is released: its slot can be held then
            return view.when_released(org, now, max(org.max_concurrency, spread)) or denied
        slot, free_at = turn
        held = stamp(free_at + self._lease + self._window + SKEW_SECONDS)
        if not self._update(organization_id, now, view.hold(org, slot, held, now)):
            self._widen(organization_id, org)
            return None
        spread = self._spread.get(organization_id, org.max_concurrency)
        self._spread[organization_id] = max(org.max_concurrency, spread // 2)
        self._mine[organization_id] = (None, self._mine.get(organization_id, (None, None))[1])
        return Reservation(organization_id, slot, held, free_at)

    def _update(self, organization_id: str, now: float, update: dict[str, Any]) -> bool:
        """One conditional `UpdateItem` of the item; this container's view becomes the item as
        DynamoDB returns it, after the write or, when the condition failed (False), as it is."""
        try:
            answer = self.client.update_item(
                TableName=self._table,
                Key=self.key(organization_id),
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **update,
            )
        except ClientError as exc:
            if not dynamo.condition_failed(exc):
                raise
            self._known[organization_id] = (dynamo.old_item(exc) or {}, self._clock())
            return False
        self._known[organization_id] = (dynamo.load(answer.get("Attributes")) or {}, now)
        return True

    def _view(self, organization_id: str) -> tuple[_View, float, bool]:
        """The item as this container last saw it (read if it never did), now, and whether it
        was read just now (here, or by `crowded` within `AHEAD_SECONDS` before)."""
        read = organization_id not in self._known
        if read:
            self._known[organization_id] = (self._read(organization_id), self._clock())
        item, seen = self._known[organization_id]
        now = self._clock()
        looked = self._looked.pop(organization_id, None)
        read = read or (looked == seen and now - seen <= AHEAD_SECONDS)
        return _View.of(item, now, self._window, seen, self._lease, self._hold), now, read

    def _take_reserved(
        self, organization_id: str, org: Organization, reservation: Reservation
    ) -> Permit | Denied | None:
        """The reserved slot with a seat, if the slot still holds the reservation; None if it
        does not (it lapsed: the caller asks as anyone does)."""
        fresh = False
        for _ in range(MAX_TRIES):
            view, now, read = self._view(organization_id)
            fresh = fresh or read
            if view.renew:  # an item to be written anew holds no reservation
                if fresh:
                    return None
                self._known.pop(organization_id)
                continue
            stop = view.stops(org, now)
            if stop is not None:  # a park and the day's count only grow: a view proves them
                return stop
            seats = [j for j in range(org.max_concurrency) if view.seats.get(j, 0.0) <= now]
            if not seats:
                if not fresh:  # a seat may have freed since this view: look first
                    self._known.pop(organization_id)
                    continue
                leases = [t for j, t in view.seats.items() if j < org.max_concurrency]
                wait = max(min(min(leases) - self._lease + self._hold - now, 1.0), 0.05)
                return Denied(wait, "concurrency", now + wait)
            sat = self._mine.get(organization_id, (None, None))[1]
            # Its own seat, if free: those holding turns come one after the other, each to a
            # seat its slot names, instead of colliding on a few.
            named = reservation.slot % org.max_concurrency
            chair = next((j for j in (named, sat) if j in seats), random.choice(seats))
            start = max(now, reservation.start_at)
            take = view.take(
                org,
                reservation.slot,
                chair,
                now,
                start,
                self._lease,
                self._window,
                held=reservation.held,
            )
            if not self._update(organization_id, now, take):
                fresh = True
                old = self._known[organization_id][0]
                if old.get(rate_slot(reservation.slot)) != reservation.held:
                    return None  # no longer held for it
                continue  # a seat taken first, a new day, a park: again from the item as it is
            self._mine[organization_id] = (None, chair)
            return Permit(organization_id, reservation.slot, chair, start_at=start, granted_at=now)
        wait = random.uniform(0.2, 1.0)
        return Denied(wait, "contention", self._clock() + wait)

    def _widen(self, organization_id: str, org: Organization) -> None:
        spread = self._spread.get(organization_id, org.max_concurrency)
        self._spread[organization_id] = min(org.requests_per_minute, 2 * spread)

    def _take(
        self,
        organization_id: str,
        org: Organization,
        view: _View,
        slot: int,
        chair: int,
        now: float,
        start: float,
    ) -> dict[str, Any]:
        """One conditional write; the item as it is after it."""
        if view.renew:
            item, condition = view.renewal(
                organization_id, slot, chair, start, self._lease, self._window
            )
            self.client.put_item(
                TableName=self._table,
                Item=dynamo.dump(item),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **condition,
            )
            return {k: v for k, v in item.items() if v is not None}
        answer = self.client.update_item(
            TableName=self._table,
            Key=self.key(organization_id),
            ReturnValues="ALL_NEW",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
            **view.take(org, slot, chair, now, start, self._lease, self._window),
        )
        return dynamo.load(answer.get("Attributes")) or {}

    @_locked
    def claim(self, organization_id: str, org: Organization) -> Reservation | None:
        """A turn this container's own release held for the next queued import it would see
        waiting at the organization (`release_update`), soonest first, if one is still good,
        no rate slot is free now and the organization is neither parked nor out of calls for
        the day (as this container saw it): a turn given out this way costs no write, and no
        other container races for its slot."""
        now = self._clock()
        pocket = self._pocket.get(organization_id) or []
        while pocket and now >= pocket[0].start_at + self._lease - POCKET_MARGIN_SECONDS:
            pocket.pop(0)  # its slot no longer holds it (or soon will not): anyone's
        if not pocket or not self._at_limit(organization_id, org, now):
            return None  # a slot may be free: the caller takes it (`acquire`), not a later turn
        item, seen = self._known[organization_id]  # known: `_at_limit` saw it
        view = _View.of(item, now, self._window, seen, self._lease, self._hold)
        if view.stops(org, now) is not None:
            return None  # parked, or the day spent, as last seen: `acquire` says so, not a turn
        return pocket.pop(0)

    @_locked
    def stopped(self, organization_id: str, org: Organization) -> Denied | None:
        """Why nobody may call for the organization now, as this container last saw it (no
        read): Zoho said stop, or the day's calls are spent. A park and the day's count only
        grow, so a view of any age proves it (`_View.proves`); None when this container never
        saw the item, or saw no such stop."""
        known = self._known.get(organization_id)
        if known is None:
            return None
        item, seen = known
        now = self._clock()
        return _View.of(item, now, self._window, seen, self._lease, self._hold).stops(org, now)

    @_locked
    def release_update(self, permit: Permit) -> dict[str, Any]:
        """The release as a TransactWriteItems `Update`, to ride along the ledger write."""
        now = self._clock()
        self._releasing[permit] = now
        free = math.ceil(round((now + self._window + SKEW_SECONDS) * 100, 6)) / 100
        org = self._orgs.get(permit.organization_id)
        owed, since = self._owed(permit.organization_id)
        turn = None
        if (
            org is not None
            and owed > 0
            and self._at_limit(permit.organization_id, org, now, permit.slot)
        ):
            # Queued imports told to wait here with no turn, and no slot to spare: the slot is
            # held for the next one this container sees, from when it frees, instead of freed
            # for all to race (one such turn for each caller told to wait).
            held = stamp(free + self._lease + self._window + SKEW_SECONDS)
            turn = Reservation(permit.organization_id, permit.slot, held, free)
            self._backlog[permit.organization_id] = (owed - 1, since)
        self._turning[permit] = turn
        return {
            "Update": {
                "TableName": self._table,
                "Key": self.key(permit.organization_id),
                "UpdateExpression": "SET #r = :free REMOVE #c",
                "ExpressionAttributeNames": {"#r": rate_slot(permit.slot), "#c": seat(permit.seat)},
                "ExpressionAttributeValues": dynamo.dump_values(
                    {":free": turn.held if turn is not None else stamp(free)}
                ),
            }
        }

    def _at_limit(
        self, organization_id: str, org: Organization, now: float, besides: int | None = None
    ) -> bool:
        """No rate slot free (but `besides`) in this container's view, if younger than a
        window: such a view proves it. A slot busy in it counts still (a call in flight then
        ends later, so it counts until at least a window after the view; a done or held slot's
        time is exact), and slots taken by others since count too."""
        known = self._known.get(organization_id)
        if known is None or now - known[1] >= self._window:
            return False
        stamps = _View.stamps(known[0], now)
        rpm = org.requests_per_minute
        return all(stamps.get(k, 0.0) > now for k in range(rpm) if k != besides)

    @_locked
    def released(self, permit: Permit) -> None:
        """The release was written (with the ledger's transaction): bring this container's
        view in step, so that its next acquire knows its own slot and seat are free (or its
        slot held for the turn it keeps for the next queued import, `claim`)."""
        done = self._releasing.pop(permit, None)
        turn = self._turning.pop(permit, None)
        if done is None:
            return
        if turn is not None:
            pocket = self._pocket.setdefault(permit.organization_id, [])
            pocket.append(turn)
            pocket.sort(key=lambda t: t.start_at)
        start = max(permit.start_at, permit.granted_at)
        if start:
            self._hold = 0.8 * self._hold + 0.2 * max(done - start, 0.0)
        known = self._known.get(permit.organization_id)
        if known is None:
            return
        item, seen = known
        updated = {k: v for k, v in item.items() if k != seat(permit.seat)}
        if turn is not None:
            updated[rate_slot(permit.slot)] = turn.held
        else:
            updated[rate_slot(permit.slot)] = stamp(done + self._window + SKEW_SECONDS)
            # Its time is exact though written after the view was read (not a call in flight).
            updated[RELEASED_HERE] = {*item.get(RELEASED_HERE, ()), permit.slot}
        self._known[permit.organization_id] = (updated, seen)

    @_locked
    def release(self, permit: Permit) -> None:
        update = self.release_update(permit)["Update"]
        update.pop("TableName")
        try:
            self.client.update_item(TableName=self._table, **update)
        except Exception:
            self._releasing.pop(permit, None)  # not written: no view to update, no turn kept
            self._turning.pop(permit, None)
            raise
        self.released(permit)

    @_locked
    def block(self, organization_id: str, until: float, reason: str) -> None:
        """Zoho said stop (429): nobody calls for this organization until `until` (by any
        container's clock)."""
        until += SKEW_SECONDS
        try:
            self.client.update_item(
                TableName=self._table,
                Key=self.key(organization_id),
                UpdateExpression="SET parked_until = :u, park_reason = :r",
                ConditionExpression="attribute_not_exists(parked_until) OR parked_until < :u",
                ExpressionAttributeValues=dynamo.dump_values({":u": until, ":r": reason}),
            )
        except ClientError as exc:
            if not dynamo.condition_failed(exc):
                raise
            self._known.pop(organization_id, None)  # already blocked for longer: look again
            return
        known = self._known.get(organization_id)
        if known is not None:  # the park as written: the lane's next imports park together
            item, seen = known
            self._known[organization_id] = (
                {**item, "parked_until": until, "park_reason": reason},
                seen,
            )

    def _read(self, organization_id: str) -> dict[str, Any]:
        answer = self.client.get_item(
            TableName=self._table, Key=self.key(organization_id), ConsistentRead=True
        )
        return dynamo.load(answer.get("Item")) or {}

    def snapshot(self, organization_id: str) -> dict[str, Any]:
        """Current usage, for status and benchmarks."""
        now = self._clock()
        view = _View.of(self._read(organization_id), now, self._window, now, self._lease, 0.0)
        return {
            "calls_in_window": sum(1 for t in view.slots.values() if t > now),
            "in_flight": sum(1 for t in view.seats.values() if t > now),
            "day": view.today,
            "day_count": view.day_count,
            "parked_until": view.parked_until or None,
        }


def next_utc_midnight(now: float) -> float:
    today = datetime.fromtimestamp(now, UTC).date()
    return datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC).timestamp()


def _days(now: float) -> tuple[str, str]:
    date = datetime.fromtimestamp(now, UTC).date()
    return date.isoformat(), (date - timedelta(days=1)).isoformat()


@dataclass(slots=True)
class _View:
    """The item as one container sees it at `now`: when each slot and seat is free."""

    slots: dict[int, float]  # rate slot -> free from (epoch seconds)
    seats: dict[int, float]  # seat -> free from (its lease's end)
    today: str
    day: str | None  # the day the item counts, as stored
    day_count: int
    parked_until: float
    park_reason: str
    renew: bool  # to be written anew: absent, last used before yesterday, or of the old layout
    raw: dict[str, Any]
    seen: float  # when DynamoDB returned it
    window: float
    expected: dict[int, float]  # rate slot -> when it should be free (a call in flight: a guess)
    done: frozenset[int]  # rate slots whose call was released (their time is exact)
    own: frozenset[int]  # ... of which this container released since the view was read

    @staticmethod
    def stamps(item: dict[str, Any], now: float, kind: str = "r") -> dict[int, float]:
        """The rate slots (`kind` "r") or seats ("c") of an item in the current layout, as
        epoch seconds."""
        if "v" in item:
            return {}
        return {
            int(name[1:]): unstamp(value, now)
            for name, value in item.items()
            if name[:1] == kind and name[1:].isdigit()
        }

    @classmethod
    def of(
        cls,
        item: dict[str, Any],
        now: float,
        window: float,
        seen: float,
        lease: float,
        hold: float,
    ) -> _View:
        today, yesterday = _days(now)
        day = str(item.get("day") or "")
        old_layout = "v" in item  # the version-numbered item of before: carry its calls over
        renew = not item or day < yesterday or old_layout
        slots: dict[int, float] = {}
        seats: dict[int, float] = {}
        if old_layout and day >= yesterday:
            leases = [unstamp(v, now) for v in (item.get("inflight") or {}).values()]
            finished = [unstamp(v, now) for v in item.get("calls", [])]
            frees = [t + window + SKEW_SECONDS for t in (*finished, *leases)]
            slots = dict(enumerate(sorted(t for t in frees if t > now)))
            seats = dict(enumerate(t for t in leases if t > now))
        elif not renew:
            for name, value in item.items():
                if name[:1] in ("r", "c") and name[1:].isdigit():
                    (slots if name[0] == "r" else seats)[int(name[1:])] = unstamp(value, now)
        # A slot busy for longer than a window after the view was taken holds a call that was in
        # flight then: it frees a window after that call ends, about `hold` after it started.
        counted = window + SKEW_SECONDS
        mine = item.get(RELEASED_HERE) or set()
        done = frozenset(k for k, t in slots.items() if t <= seen + counted or k in mine)
        expected = {
            k: t if k in done else min(t, max(t - lease - counted + hold, seen) + counted)
            for k, t in slots.items()
        }
        return cls(
            slots=slots,
            seats=seats,
            today=today,
            day=day or None,
            day_count=int(item.get("day_count", 0)) if day == today else 0,
            parked_until=float(item.get("parked_until") or 0),
            park_reason=str(item.get("park_reason") or ""),
            renew=renew,
            raw=item,
            seen=seen,
            window=window,
            expected=expected,
            done=done,
            own=frozenset(mine),
        )

    def proves(self, denied: Denied, now: float) -> bool:
        """Whether this view, not read just now, is enough to say no: a park and the day's
        count only grow; a rate slot busy in it stays busy for at least a window after it was
        seen (a call in flight then is released later); a busy seat may be free already."""
        if denied.reason == "per_minute":
            return now - self.seen < self.window
        return denied.reason != "concurrency"

    def _releases(self, rpm: int | None = None) -> list[float]:
        """When the calls in flight (or held slots' calls) as seen should be released."""
        counted = self.window + SKEW_SECONDS
        return sorted(
            self.expected[k] - counted
            for k in self.slots
            if (rpm is None or k < rpm) and k not in self.done
        )

    def when_released(self, org: Organization, now: float, spread: int) -> Denied | None:
        """Back when one of the next calls to end is released (a held slot's call, or one in
        flight), at random among the first `spread`: its slot can be held for the next turn."""
        releases = [t for t in self._releases(org.requests_per_minute) if t > now]
        if not releases:
            return None
        wait = max(1.0, math.ceil(random.choice(releases[: max(spread, 1)]) - now))
        return Denied(wait, "per_minute", now + wait)

    def stops(self, org: Organization, now: float) -> Denied | None:
        """Why nobody may call now whatever the slots: Zoho said stop, or the day is spent."""
        if self.parked_until > now:
            reason = "daily" if self.park_reason == "daily" else "blocked"
            return Denied(self.parked_until - now, reason, self.parked_until)
        if self.day_count >= org.daily_limit:
            until = next_utc_midnight(now)
            return Denied(until - now, "daily", until)
        return None

    def reservable(self, org: Organization, now: float, spread: int) -> tuple[int, float] | None:
        """A rate slot to hold for a denied caller, and when it frees: one whose call is done
        (its time is exact, not a guess about a call in flight) and that nobody holds, among
        the `spread` that free first: one this container released, if there is one (the others
        do not know yet that it is done, so they do not race for it), else one at random. None
        if there is none."""
        rpm = org.requests_per_minute
        if self.renew or any(k >= rpm and t > now for k, t in self.slots.items()):
            return None  # the limit was lowered while calls still counted: wait as told
        done = sorted(
            (t, k)
            for k, t in self.slots.items()
            if k < rpm and k in self.done and t > now and rate_slot(k) in self.raw
        )
        if not done:
            return None
        first = done[: max(spread, 1)]
        mine = [(t, k) for t, k in first if k in self.own]
        t, k = mine[0] if mine else random.choice(first)
        return k, t

    def hold(self, org: Organization, slot: int, held: int, now: float) -> dict[str, Any]:
        """`UpdateItem` arguments holding `slot` (still as this view saw it) with `held`."""
        values: dict[str, Any] = {
            ":was": self.raw[rate_slot(slot)],
            ":held": held,
            ":now": now,
            ":today": self.today,
            ":daily": org.daily_limit,
        }
        return {
            "UpdateExpression": "SET #r = :held",
            "ConditionExpression": "#r = :was AND "
            "(attribute_not_exists(parked_until) OR parked_until <= :now) AND "
            "(#day <> :today OR day_count < :daily)",
            "ExpressionAttributeNames": {"#r": rate_slot(slot), "#day": "day"},
            "ExpressionAttributeValues": dynamo.dump_values(values),
        }

    def plan(
        self,
        org: Organization,
        now: float,
        lease: float,
        hold: float,
        mine: tuple[int | None, int | None] | None = None,
        spread: int = 0,
        reach: float = AHEAD_SECONDS,
    ) -> tuple[int, int, float] | tuple[Denied, int] | Denied:
        """The slot, seat and start time to take, or why not and when to come back (with the
        slot aimed at, one of the next `spread` to free). `mine`: the slot and seat to take
        first if they are free. `reach`: how far ahead a slot may free to be taken (negative: a
        race was lost, and none is taken if fewer than `few_free` are free)."""
        stop = self.stops(org, now)
        if stop is not None:
            return stop
        rpm, cap = org.requests_per_minute, org.max_concurrency
        busy = sorted(t for t in self.slots.values() if t > now)
        lowered = any(k >= rpm for k, t in self.slots.items() if t > now)
        if lowered and len(busy) >= rpm:  # the limit was lowered while calls still counted
            soonest = sorted(t for k, t in self.expected.items() if t > now)
            return _come_back(soonest[: len(busy) - rpm + 1], now)[0]
        # Slots free now; those the item already has before new ones, so that it stays as
        # small as a window's calls need.
        span = min(rpm, len(self.slots) + max(4 * cap, spread))  # wider once races are lost
        free = [k for k in range(span) if self.slots.get(k, 0.0) <= now]
        upcoming = sorted((t, k) for k, t in self.slots.items() if k < rpm)
        if reach < 0 and any(t > now for t, _ in upcoming) and len(free) < few_free(org):
            # A lost race for one of the last few free slots: one that frees later is held
            # instead. With many free, another is taken (a turn would wait for nothing).
            free = []
        if not free:
            ahead = [k for t, k in upcoming if t - now <= reach]
            if not ahead:
                # Back when one of the next slots frees, at least as many as can run at once:
                # those who come keep every seat busy and take the slots that free after
                # theirs, one after the other, as the calls before them did.
                first = sorted((self.expected[k], k) for _, k in upcoming)[: max(cap, spread)]
                return _come_back([t for t, _ in first], now, first)
            free = ahead  # a permit for a slot that frees within a second: the caller waits
        seats = [j for j in range(cap) if self.seats.get(j, 0.0) <= now]
        if not seats:
            # When a seat frees is only known once its call is released: come back about when
            # the oldest call should be done, spread so that the denied do not all collide.
            leases = [t for j, t in self.seats.items() if j < cap]
            guess = max(min(leases) - lease + hold - now, 0.05) * random.uniform(1.0, 1.5)
            wait = min(guess, min(leases) - now)  # a seat is free by its lease's end anyway
            return Denied(wait, "concurrency", now + wait)
        aim, sat = mine or (None, None)
        # Not the first free one: others with the same view would take it too.
        slot = aim if aim in free else random.choice(free)
        chair = sat if sat in seats else random.choice(seats)
        return slot, chair, max(now, self.slots.get(slot, 0.0))

    def take(
        self,
        org: Organization,
        slot: int,
        chair: int,
        now: float,
        start: float,
        lease: float,
        window: float,
        held: int | None = None,
    ) -> dict[str, Any]:
        """`UpdateItem` arguments taking `slot` (free at `start`, or held for the caller with
        `held`) and `chair` (free now), if the day's count allows one more and the organization
        is not parked."""
        lease_end = start + lease
        names = {"#r": rate_slot(slot), "#c": seat(chair), "#day": "day"}
        values: dict[str, Any] = {
            ":busy": stamp(lease_end + window + SKEW_SECONDS),
            ":lease": stamp(lease_end),
            ":today": self.today,
            ":one": 1,
            ":now": now,
        }
        if held is not None:
            values[":held"] = held
        conditions = [
            "(attribute_not_exists(parked_until) OR parked_until <= :now)",
            _free("#r", ":r", start, values) if held is None else "#r = :held",
            _free("#c", ":c", now, values),
        ]
        if self.day == self.today:
            conditions.append("#day = :today AND day_count < :daily")
            values[":daily"] = org.daily_limit
            expression = "SET #r = :busy, #c = :lease ADD day_count :one"
        else:  # the first call of a new UTC day
            conditions.append("#day <> :today")
            expression = "SET #r = :busy, #c = :lease, #day = :today, day_count = :one"
        return {
            "UpdateExpression": expression,
            "ConditionExpression": " AND ".join(conditions),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": dynamo.dump_values(values),
        }

    def renewal(
        self,
        organization_id: str,
        slot: int,
        chair: int,
        start: float,
        lease: float,
        window: float,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The item written anew with `slot` and `chair` taken (what still counts carried over),
        and the `PutItem` condition that nobody else did it first."""
        lease_end = start + lease
        item: dict[str, Any] = {
            "pk": f"limiter#{organization_id}",
            **{rate_slot(k): stamp(t) for k, t in self.slots.items()},
            **{seat(j): stamp(t) for j, t in self.seats.items()},
            rate_slot(slot): stamp(lease_end + window + SKEW_SECONDS),
            seat(chair): stamp(lease_end),
            "day": self.today,
            "day_count": self.day_count + 1,
            "parked_until": self.parked_until or None,
            "park_reason": self.park_reason or None,
        }
        if not self.raw:
            return item, {"ConditionExpression": "attribute_not_exists(pk)"}
        # Nobody renewed it, or parked the organization, since this view.
        condition = ["#day = :seen" if self.day else "attribute_not_exists(#day)"]
        values: dict[str, Any] = {":seen": self.day} if self.day else {}
        if "parked_until" in self.raw:
            condition.append("parked_until = :parked")
            values[":parked"] = self.raw["parked_until"]
        else:
            condition.append("attribute_not_exists(parked_until)")
        if "v" in self.raw:
            condition.append("v = :v")
            values[":v"] = self.raw["v"]
        return item, {
            "ConditionExpression": " AND ".join(condition),
            "ExpressionAttributeNames": {"#day": "day"},
            **({"ExpressionAttributeValues": dynamo.dump_values(values)} if values else {}),
        }


def _come_back(
    frees: list[float], now: float, slots: list[tuple[float, int]] | None = None
) -> tuple[Denied, int]:
    """Back in whole seconds (queue delays are), at most `AHEAD_SECONDS` before one of the
    slots that free next, chosen at random: each denied caller aims at a slot of its own."""
    i = random.randrange(len(frees))
    wait = max(1.0, math.floor(frees[i] - now))
    return Denied(wait, "per_minute", now + wait), slots[i][1] if slots else -1


def _free(name: str, placeholder: str, at: float, values: dict[str, Any]) -> str:
    """The condition "the stamp in `name` is not after `at`", read as `unstamp` reads it: a
    stamp is busy when it falls in the hour after `at`, modulo the stamps' modulus."""
    low = (math.floor(at * 100) + 1) % STAMP_MODULUS
    high = (math.floor(at * 100) + STAMP_AHEAD) % STAMP_MODULUS
    values[f"{placeholder}lo"], values[f"{placeholder}hi"] = low, high
    inside = "OR" if low <= high else "AND"
    return (
        f"(attribute_not_exists({name}) OR ({name} < {placeholder}lo {inside} "
        f"{name} > {placeholder}hi))"
    )
