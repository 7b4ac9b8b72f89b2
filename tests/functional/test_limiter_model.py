"""The rate limiter alone, as a state machine: containers with skewed clocks take and release
permits on one organization's item (moto), die holding them, meet DynamoDB throttles and lose
conditional writes to each other, while time moves by milliseconds or days. After every step,
what Zoho would have seen stays within its limits, every denied caller is told when to come
back (and coming back then, with nothing else happening, is not denied again: no polling), a
per-minute wait (a denial, or a turn held for later) is only given when the organization may be
at its limit, and no permit stays counted once its call is done and a window has passed."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from moto import mock_aws

from crm_to_books.limiter import (
    AHEAD_SECONDS,
    Denied,
    Permit,
    RateLimiter,
    Reservation,
    _View,
    few_free,
    next_utc_midnight,
)
from crm_to_books.settings import Organization
from tests.functional.conftest import NAMES, create_tables

ORG = "700100200"
LIMITS = Organization(requests_per_minute=4, daily_limit=12, max_concurrency=2)
WINDOW = 10.0
LEASE = 4.0
TIMEOUT = 3.0  # the function's timeout, shorter than the lease (30 s and 40 s deployed)
SKEWS = {"a": 0.0, "b": 0.05, "c": -0.05}  # each clock within 50 ms of the true time
START = 1_795_000_000.0 - 30  # a UTC day ends half a minute into the run


@dataclass
class Call:
    container: str
    permit: Permit
    start: float  # true time: the container waits for the permit's start
    deadline: float  # true time: the function's timeout ends the call by then
    arrived: float | None = None  # when Zoho saw it
    ended: float | None = None  # released, or its container died (Zoho done by the deadline)
    released: bool = False  # the release was written: its slot counts a window after `ended`


@dataclass
class Told:
    """A denial, and whether the limiter could know exactly when a slot frees: nothing was in
    flight and every call so far was released (a dead call's slot is a guess until it counts
    no more)."""

    denied: Denied
    at: float  # true time
    events: int  # what had happened by then
    exact: bool


class LimiterModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._mock = mock_aws()
        self._mock.start()
        self.client = boto3.client("dynamodb", region_name="us-east-1")
        create_tables(self.client)
        self.client.meta.events.register("before-call.dynamodb", self._fault)
        self.now = START
        self.limiters: dict[str, RateLimiter] = {}
        self.calls: list[Call] = []
        self.parked_until = 0.0
        self.throttle_next = False
        self.ids = itertools.count()
        self.events = 0  # permits, releases, deaths and parks so far
        self.unclean_until = 0.0  # a call not released may count until then
        self.told: dict[str, Told] = {}
        self.held: list[Reservation] = []  # rate slots held for queued callers, not yet used
        self.turns: list[Reservation] = []  # held slots no call has taken since
        self.kept: list[tuple[str, Reservation]] = []  # turns a container keeps (`claim`)
        self.last_turn = float("-inf")  # when the last turn was held

    def teardown(self) -> None:
        self._mock.stop()

    def _fault(self, model: Any, **_: Any) -> Any:
        if not self.throttle_next:
            return None
        self.throttle_next = False
        error = {"Code": "ProvisionedThroughputExceededException", "Message": "model"}
        return _Http(), {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 400}}

    def limiter(self, name: str) -> RateLimiter:
        if name not in self.limiters:
            skew = SKEWS[name]
            self.limiters[name] = RateLimiter(
                NAMES.state_table,
                window_seconds=WINDOW,
                lease_seconds=LEASE,
                client=self.client,
                clock=lambda: self.now + skew,
                sleep=lambda seconds: None,
            )
        return self.limiters[name]

    def busy(self, name: str) -> bool:
        return any(c.container == name and c.ended is None for c in self.calls)

    # -- what happens -----------------------------------------------------------------------
    @rule(name=st.sampled_from(sorted(SKEWS)))
    def acquire(self, name: str) -> None:
        if self.busy(name):  # a container makes one call at a time
            return
        try:
            got = self.limiter(name).acquire(ORG, LIMITS)
        except ClientError:  # a throttled acquire: no permit, nothing to release
            return
        if isinstance(got, Permit):
            self._permitted(name, got)
            return
        self._check_told(name, got)
        flying = any(c.ended is None for c in self.calls)
        exact = not flying and self.now >= self.unclean_until
        self.told[name] = Told(got, self.now, self.events, exact)

    def _permitted(self, name: str, got: Permit) -> Call:
        self.events += 1
        self.told.pop(name, None)
        start = max(self.now, got.start_at - SKEWS[name])
        assert start >= self.parked_until, "a permit while Zoho said stop"
        call = Call(name, got, start, start + TIMEOUT)
        self.calls.append(call)
        self.turns = [t for t in self.turns if t.slot != got.slot]  # its call counts instead
        return call

    def _may_count(self) -> int:
        """Rate slots that may count now, by what happened (not by the limiter's item): calls in
        flight, released ones for a window after (skews and rounding), others (dead, release
        not written) until a window after their lease, and held turns until theirs."""
        margin = 0.25
        counting = sum(
            1
            for c in self.calls
            if c.ended is None
            or (c.released and self.now < c.ended + WINDOW + margin)
            or (not c.released and self.now < c.start + LEASE + WINDOW + 1.0)
        )
        return counting + sum(1 for t in self.turns if self.now < t.start_at + LEASE + WINDOW + 1)

    def _at_the_limit(self, got: Denied | Reservation) -> None:
        """A per-minute wait (a denial, or a turn held for later) only when the organization
        may really be at its limit: with free slots to spare, a caller gets one."""
        rpm = LIMITS.requests_per_minute
        counting = self._may_count()
        assert counting > rpm - few_free(LIMITS), f"{got} with {counting} of {rpm} counting"

    def _check_told(self, name: str, denied: Denied) -> None:
        """A denial says when, in the future, and no later than what it waits for."""
        now = self.now + SKEWS[name]
        assert denied.retry_after > 0, denied
        assert abs(denied.until - (now + denied.retry_after)) < 0.01, denied
        # A slot held for a turn (at most a lease and a window ahead when it was held) is busy
        # until its turn's lease ends, plus a window.
        turns = self.now - self.last_turn < LEASE + 2 * WINDOW + 1.0
        longest = {
            "per_minute": LEASE + WINDOW + 1.0 + (WINDOW if turns else 0.0),
            "concurrency": LEASE,
            "contention": 1.0,
            "daily": next_utc_midnight(now) - now,
            "blocked": max(self.parked_until - self.now, 0.0) + 0.25,  # skews and the margin
        }
        assert denied.retry_after <= longest[denied.reason] + 0.01, denied
        if denied.reason == "per_minute":
            self._at_the_limit(denied)

    @rule(name=st.sampled_from(sorted(SKEWS)))
    def ask_for_a_turn(self, name: str) -> None:
        """A queued caller (it can carry a reservation) asks: a permit, a slot held for it from
        a time (its turn, never sooner than the slot frees), or a denial saying when."""
        if self.busy(name):
            return
        try:
            got = self.limiter(name).acquire(ORG, LIMITS, reserve=True)
        except ClientError:
            return
        if isinstance(got, Reservation):
            self._at_the_limit(got)
            self._held(got)
            assert got.start_at > self.now + SKEWS[name] - 0.01, got  # a slot that frees later
            assert got.start_at <= self.now + SKEWS[name] + LEASE + WINDOW + 1.0, got
            return
        if isinstance(got, Permit):
            self._permitted(name, got)
            return
        self._check_told(name, got)

    @precondition(lambda self: bool(self.held))
    @rule(
        data=st.data(), name=st.sampled_from(sorted(SKEWS)), late=st.sampled_from((0.0, 0.5, 30.0))
    )
    def come_back_for_the_turn(self, data: st.DataObject, name: str, late: float) -> None:
        """The message comes back (to any container) at its turn, or late: the held slot is
        taken, or the caller asks as anyone does (it lapsed); either way, within the limits."""
        if self.busy(name):
            return
        held = data.draw(st.sampled_from(self.held))
        self.held.remove(held)
        self.now = max(self.now, held.start_at - 1.0 + late)
        try:
            got = self.limiter(name).acquire(ORG, LIMITS, reserve=True, reservation=held)
        except ClientError:
            return  # the message comes back again later: the reservation may lapse by then
        if isinstance(got, Reservation):
            self._at_the_limit(got)
            self._held(got)
            return
        if isinstance(got, Permit):
            if got.slot == held.slot and late < LEASE:
                assert got.start_at >= held.start_at - 0.01, (got, held)
            call = self._permitted(name, got)
            assert call.start <= self.now + AHEAD_SECONDS + 0.2, (got, held)
            return
        self._check_told(name, got)

    def _held(self, reservation: Reservation) -> None:
        """A held slot counts until its turn's lease ends, plus a window, if nobody uses it (its
        message lost, or back too late): the limiter's times are guesses until then."""
        self.events += 1
        self.held.append(reservation)
        self.turns.append(reservation)
        self.last_turn = self.now
        end = reservation.start_at + LEASE + WINDOW + 1.0
        self.unclean_until = max(self.unclean_until, end)

    @rule(name=st.sampled_from(sorted(SKEWS)), throttled=st.booleans())
    def quick_call(self, name: str, throttled: bool) -> None:
        """A permit, the call reaching Zoho and its release, one after the other."""
        self.acquire(name)
        call = self.calls[-1] if self.calls else None
        if call is None or call.container != name or call.ended is not None:
            return
        if self.now > call.deadline:
            return  # the function's timeout ended it long ago: see `die`
        self.now = max(self.now, call.start)
        call.arrived = self.now
        self._release(call, throttled)

    @rule(names=st.lists(st.sampled_from(sorted(SKEWS)), min_size=2, max_size=6))
    def busy_spell(self, names: list[str]) -> None:
        """Quick calls one after the other: the window fills up and the limiter must deny."""
        for name in names:
            self.quick_call(name, throttled=False)

    @precondition(lambda self: any(c.arrived is None and c.ended is None for c in self.calls))
    @rule(data=st.data())
    def arrive(self, data: st.DataObject) -> None:
        """A call reaches Zoho: any moment from its start until it ends."""
        waiting = [c for c in self.calls if c.arrived is None and c.ended is None]
        call = data.draw(st.sampled_from(waiting))
        if call.start <= self.now <= call.deadline:
            call.arrived = self.now

    @precondition(lambda self: any(c.arrived is not None and c.ended is None for c in self.calls))
    @rule(data=st.data(), throttled=st.booleans())
    def release(self, data: st.DataObject, throttled: bool) -> None:
        done = [c for c in self.calls if c.arrived is not None and c.ended is None]
        call = data.draw(st.sampled_from(done))
        if self.now > call.deadline:
            return  # the function's timeout ended it: see `die`
        self._release(call, throttled)

    def _release(self, call: Call, throttled: bool) -> None:
        self.throttle_next = throttled
        self.events += 1
        call.ended = self.now
        limiter = self.limiter(call.container)
        before = list(limiter._pocket.get(ORG, []))
        kept = len(before)
        try:
            limiter.release(call.permit)
        except ClientError:
            # Not written: its slot and seat count until the lease ends, as a dead one's.
            self.unclean_until = max(self.unclean_until, call.start + LEASE + WINDOW + 1.0)
            assert len(limiter._pocket.get(ORG, [])) == kept  # no turn kept by a failed write
            return
        call.released = True
        # The turn this release kept, if any: an older one of the same slot may still be there
        # (not given out, or out of date), and was checked when it was kept.
        new = [t for t in limiter._pocket.get(ORG, []) if t not in before]
        if not new:
            return
        # Kept for the next queued import this container sees (a queued one waited here)
        (turn,) = new
        self._at_the_limit(turn)
        now = self.now + SKEWS[call.container]
        assert abs(turn.start_at - (now + WINDOW)) <= 0.2, turn  # when the slot frees
        self.kept.append((call.container, turn))
        self._held(turn)
        self.held.remove(turn)  # it travels with a message only once claimed

    @rule(name=st.sampled_from(sorted(SKEWS)))
    def queued_import(self, name: str) -> None:
        """A queued import comes to a container, as the engine sees one: a turn the container
        kept for the next one first (no call), else the limiter asked, a turn allowed."""
        if self.busy(name):
            return
        if any(n == name for n, _ in self.kept):
            self._claim(name)
            return
        self.ask_for_a_turn(name)

    @rule(
        names=st.lists(st.sampled_from(sorted(SKEWS)), min_size=4, max_size=14),
        step=st.sampled_from((0.3, 1.0, 2.5)),
    )
    def backlog(self, names: list[str], step: float) -> None:
        """More queued imports than the limit allows, one every `step` seconds, each call
        released as soon as it is made: the calls spread over the window, the waiting ones
        are told when (or given turns), and releases at the limit keep their slots for the
        next queued import of their container."""
        for name in names:
            self.tick(step)
            self.queued_import(name)
            flying = [c for c in self.calls if c.container == name and c.ended is None]
            for call in flying:
                if max(self.now, call.start) > call.deadline:
                    continue  # the function's timeout ended it long ago: see `die`
                self.now = max(self.now, call.start)
                call.arrived = self.now
                self._release(call, throttled=False)

    @precondition(lambda self: bool(self.kept))
    @rule(data=st.data())
    def claim_a_kept_turn(self, data: st.DataObject) -> None:
        """A queued import comes to the container that kept a turn: it is given the turn (no
        call) while its slot still holds it, else nothing."""
        name, _ = data.draw(st.sampled_from(self.kept))
        self._claim(name)

    def _claim(self, name: str) -> None:
        limiter = self.limiter(name)
        got = limiter.claim(ORG, LIMITS)
        mine = sorted((t for n, t in self.kept if n == name), key=lambda t: t.start_at)
        now = self.now + SKEWS[name]
        good = [t for t in mine if now < t.start_at + LEASE - 5.0]
        if got is None:
            known = limiter._known.get(ORG)
            if good and known is not None and now - known[1] < WINDOW:
                # Kept, not given, with a view that proves the limit: a slot is free in it, or
                # it shows the organization parked or out of calls for the day. (With no view,
                # or one older than a window, a slot may be free: not given either.)
                item, seen = known
                stamps = _View.stamps(item, now)
                view = _View.of(item, now, WINDOW, seen, LEASE, 0.0)
                assert view.stops(LIMITS, now) is not None or any(
                    stamps.get(k, 0.0) <= now for k in range(LIMITS.requests_per_minute)
                ), good
            self.kept = [(n, t) for n, t in self.kept if n != name or t in good]
            return
        assert good and got == good[0], (got, good)
        passed = {t for t in mine if t.start_at <= got.start_at}  # given, or out of date
        self.kept = [(n, t) for n, t in self.kept if n != name or t not in passed]
        self.held.append(got)  # its message comes back for it (`come_back_for_the_turn`)

    @rule(name=st.sampled_from(sorted(SKEWS)))
    def die(self, name: str) -> None:
        """The container dies, whatever it held: its calls end (at Zoho) by their lease's end."""
        self.events += 1
        self.told.pop(name, None)
        self.kept = [(n, t) for n, t in self.kept if n != name]  # lost with the container
        for call in self.calls:
            if call.container == name and call.ended is None:
                self.unclean_until = max(self.unclean_until, call.start + LEASE + WINDOW + 1.0)
                if self.now < call.start:  # died waiting for the permit's start: no call
                    call.ended = call.start
                    continue
                call.ended = call.deadline  # the worst: Zoho busy with it until the timeout
                if call.arrived is None:
                    call.arrived = call.deadline  # the latest it could reach Zoho
        self.limiters.pop(name, None)

    @rule(seconds=st.sampled_from((0.01, 0.04, 0.3, 1.0, 2.5, 5.0, 11.0, 3_600.0, 90_000.0)))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def throttle_the_next_call(self) -> None:
        self.throttle_next = True

    @rule(name=st.sampled_from(sorted(SKEWS)), seconds=st.sampled_from((1.0, 15.0)))
    def zoho_says_stop(self, name: str, seconds: float) -> None:
        until = self.now + SKEWS[name] + seconds
        try:
            self.limiter(name).block(ORG, until, "blocked")
        except ClientError:
            return  # throttled: the engine's 429 handling fails, nothing was parked
        self.parked_until = max(self.parked_until, until - SKEWS[name])
        self.events += 1

    @precondition(
        lambda self: any(
            t.exact and t.events == self.events and t.denied.reason == "per_minute"
            for t in self.told.values()
        )
    )
    @rule(data=st.data())
    def come_back_when_told(self, data: st.DataObject) -> None:
        """Nothing happened since a denial that knew every slot's time: coming back when told
        finds a slot free then, or within the second a permit may start ahead."""
        names = sorted(
            name
            for name, t in self.told.items()
            if t.exact and t.events == self.events and t.denied.reason == "per_minute"
        )
        name = data.draw(st.sampled_from(names))
        self.now = max(self.now, self.told[name].denied.until - SKEWS[name])
        self.throttle_next = False  # this is about what the limiter says, not DynamoDB's faults
        got = self.limiter(name).acquire(ORG, LIMITS)
        if self.now < self.parked_until + 0.25:  # parked before the denial, unseen by its view
            assert isinstance(got, Denied) and got.reason == "blocked", got
            return
        assert isinstance(got, Permit), f"told to come back at {self.now}, denied again: {got}"
        assert got.start_at <= self.now + SKEWS[name] + AHEAD_SECONDS + 0.01
        self._permitted(name, got)

    @precondition(lambda self: all(c.ended is not None for c in self.calls))
    @rule(name=st.sampled_from(sorted(SKEWS)))
    def nothing_stays_counted(self, name: str) -> None:
        """Once every call is done (or its container dead) and a window has passed after its
        lease, nothing leaked: a permit is granted, unless the day's calls are spent."""
        quiet = max((c.start + LEASE + WINDOW + 1.0 for c in self.calls), default=self.now)
        quiet = max(quiet, self.unclean_until)  # held slots nobody came back for
        self.now = max(self.now, quiet, self.parked_until + 0.25)  # skews and the margin
        today = datetime.fromtimestamp(self.now, UTC).date()
        spent = (
            sum(datetime.fromtimestamp(c.start, UTC).date() == today for c in self.calls)
            >= LIMITS.daily_limit - 1
        )
        if spent or self.now + 1.0 > next_utc_midnight(self.now):  # clocks differ at midnight
            self.now = next_utc_midnight(self.now) + 1.0
        self.throttle_next = False
        got = self.limiter(name).acquire(ORG, LIMITS)
        assert isinstance(got, Permit), f"a quiet organization still denied: {got}"
        call = self._permitted(name, got)
        self.now = call.arrived = call.start
        self._release(call, throttled=False)

    # -- what must hold -----------------------------------------------------------------------
    @invariant()
    def never_more_than_the_limit_in_any_window_zoho_measures(self) -> None:
        arrivals = sorted(c.arrived for c in self.calls if c.arrived is not None)
        rpm = LIMITS.requests_per_minute
        for first, last in zip(arrivals, arrivals[rpm:], strict=False):
            assert last - first > WINDOW, f"{rpm + 1} calls within {last - first:.3f} s"

    @invariant()
    def never_more_in_flight_than_the_cap(self) -> None:
        for moment in {c.start for c in self.calls}:
            flying = [
                c
                for c in self.calls
                if c.start <= moment and (c.ended or c.deadline) > moment and c.ended != c.start
            ]
            assert len(flying) <= LIMITS.max_concurrency, f"{len(flying)} at once at {moment}"

    @invariant()
    def never_more_than_the_daily_limit(self) -> None:
        days: dict[str, int] = {}
        for call in self.calls:
            day = datetime.fromtimestamp(call.start, UTC).date().isoformat()
            days[day] = days.get(day, 0) + 1
        assert all(n <= LIMITS.daily_limit for n in days.values()), days


class _Http:
    status_code = 400


TestLimiterModel = LimiterModel.TestCase
TestLimiterModel.settings = settings(
    max_examples=80,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
TestLimiterModel = pytest.mark.timeout(600)(TestLimiterModel)
