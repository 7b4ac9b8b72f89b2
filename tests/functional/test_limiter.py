"""The rate limiter's shared item over time: idle organizations, containers that died."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from crm_to_books.limiter import (
    SKEW_SECONDS,
    Denied,
    Permit,
    RateLimiter,
    Reservation,
    next_utc_midnight,
    stamp,
)
from crm_to_books.settings import Organization
from tests.functional.conftest import NAMES, ORG

T0 = 1_795_629_841.37
DAY = 86_400.0


def limiter_at(moment: float, **options: Any) -> RateLimiter:
    """A fresh container whose clock reads `moment`."""
    return RateLimiter(NAMES.state_table, clock=lambda: moment, **options)


@pytest.mark.parametrize("idle_days", [1.5, 10.6, 11.57])
def test_an_organization_idle_for_days_gets_its_permits_at_once(
    aws_world: dict[str, Any], idle_days: float
) -> None:
    # Given a full window of calls (stored modulo about 11.6 days)
    limits = Organization(requests_per_minute=100, max_concurrency=10)
    busy = limiter_at(T0)
    for _ in range(100):
        permit = busy.acquire(ORG, limits)
        assert isinstance(permit, Permit)
        busy.release(permit)
    assert isinstance(busy.acquire(ORG, limits), Denied)

    # When the organization is next used days later (after about 10.6 days its old stamps,
    # read naively, would be the near future; after 11.57 days, right now)
    later = limiter_at(T0 + idle_days * DAY)

    # Then nothing old counts
    assert later.snapshot(ORG)["calls_in_window"] == 0
    assert isinstance(later.acquire(ORG, limits), Permit)


def test_a_call_whose_container_died_counts_for_a_window_after_its_lease_ended(
    aws_world: dict[str, Any],
) -> None:
    limits = Organization(requests_per_minute=1, max_concurrency=10)
    lease, window = 40.0, 60.0
    # Given a container that took a permit and died before releasing it
    assert isinstance(limiter_at(T0, lease_seconds=lease).acquire(ORG, limits), Permit)

    # Then its call still counts once its lease ran out (Zoho counts it from its arrival)...
    ran_out = limiter_at(T0 + lease + 1).acquire(ORG, limits)
    assert isinstance(ran_out, Denied) and ran_out.reason == "per_minute"
    assert ran_out.until >= T0 + lease + window

    # ...until one window after the lease ended
    assert isinstance(limiter_at(T0 + lease + window + 1).acquire(ORG, limits), Permit)


def _full_window(limits: Organization, at: float, calls: float = 0.5) -> RateLimiter:
    """A container that made a window's calls, each `calls` seconds long, from `at`."""
    moment = [at]
    limiter = RateLimiter(NAMES.state_table, clock=lambda: moment[0], window_seconds=60.0)
    for _ in range(limits.requests_per_minute):
        permit = limiter.acquire(ORG, limits)
        assert isinstance(permit, Permit)
        moment[0] += calls
        limiter.release(permit)
    return limiter


def test_a_queued_caller_denied_a_slot_is_given_one_held_from_when_it_frees(
    aws_world: dict[str, Any],
) -> None:
    limits = Organization(requests_per_minute=3, max_concurrency=2)
    _full_window(limits, T0)  # three calls, finished at T0 + 0.5, 1.0 and 1.5
    first_free = T0 + 0.5 + 60.0

    # When two queued callers ask while every slot counts
    now = T0 + 10
    one = limiter_at(now).acquire(ORG, limits, reserve=True)
    two = limiter_at(now).acquire(ORG, limits, reserve=True)

    # Then each holds a different slot from the moment its last call stops counting
    assert isinstance(one, Reservation) and isinstance(two, Reservation)
    assert one.slot != two.slot
    assert {round(one.start_at - first_free, 1), round(two.start_at - first_free, 1)} <= {
        0.1,
        0.6,
        1.1,
    }
    # and an HTTP caller (who cannot carry one) is told when to come back, as before
    plain = limiter_at(now).acquire(ORG, limits)
    assert isinstance(plain, Denied) and plain.reason == "per_minute"

    # When the slot frees, someone without the reservation cannot take the held one...
    at_turn = max(one.start_at, two.start_at) + 0.01
    other = limiter_at(at_turn).acquire(ORG, limits)
    assert not isinstance(other, Permit) or other.slot not in (one.slot, two.slot)

    # ...and the holder, back at its turn in any container, takes it with a seat
    taken = limiter_at(at_turn).acquire(ORG, limits, reserve=True, reservation=one)
    assert isinstance(taken, Permit) and taken.slot == one.slot
    assert taken.start_at >= one.start_at


def test_a_reservation_its_caller_never_used_lapses_and_the_slot_serves_others(
    aws_world: dict[str, Any],
) -> None:
    limits = Organization(requests_per_minute=1, max_concurrency=2)
    lease, window = 40.0, 60.0
    _full_window(limits, T0)
    held = limiter_at(T0 + 5, lease_seconds=lease).acquire(ORG, limits, reserve=True)
    assert isinstance(held, Reservation)

    # The message carrying it is lost: the slot counts as a call made at its turn
    late = held.start_at + lease + window + 1
    assert isinstance(limiter_at(late).acquire(ORG, limits), Permit)

    # and a caller coming back with the lapsed reservation asks as anyone does
    stale = limiter_at(late + 0.5).acquire(ORG, limits, reserve=True, reservation=held)
    assert isinstance(stale, Denied)  # the one slot is busy again, with a call in flight


def test_a_reservation_is_carried_as_text_and_a_made_up_one_is_refused() -> None:
    held = Reservation(ORG, 7, 12_345_678, T0 + 61.25)
    assert Reservation.decode(ORG, held.encode()) == held
    huge = "r1:7:1:" + "9" * 400  # start / 100 would raise OverflowError
    for forged in ("", "r1:7:x:1", "r2:7:1:1", "r1:-1:5:5", "r1:7:1", "r1:7:1:0", huge, None):
        assert Reservation.decode(ORG, forged) is None


def test_a_queued_caller_that_loses_a_race_with_slots_to_spare_takes_another_at_once(
    aws_world: dict[str, Any],
) -> None:
    # Given an organization with 20 of its 100 calls a minute in flight
    limits = Organization(requests_per_minute=100, max_concurrency=30)
    others = limiter_at(T0)
    for _ in range(20):
        assert isinstance(others.acquire(ORG, limits), Permit)
    # ... and another container that takes the slot and seat a queued caller goes for, just
    # before it (its conditional write fails)
    client = boto3.client("dynamodb")
    raced: list[dict[str, str]] = []

    def someone_first(params: dict[str, Any], **_: Any) -> None:
        names = params.get("ExpressionAttributeNames", {})
        if raced or "#r" not in names:
            return
        raced.append(names)
        boto3.client("dynamodb").update_item(
            TableName=NAMES.state_table,
            Key=RateLimiter.key(ORG),
            UpdateExpression="SET #r = :busy, #c = :busy",
            ExpressionAttributeNames={"#r": names["#r"], "#c": names["#c"]},
            ExpressionAttributeValues={":busy": {"N": str(stamp(T0 + 100))}},
        )

    client.meta.events.register("provide-client-params.dynamodb.UpdateItem", someone_first)

    # When the queued caller asks
    got = RateLimiter(NAMES.state_table, client=client, clock=lambda: T0 + 1).acquire(
        ORG, limits, reserve=True
    )

    # Then it lost that race, and took one of the 79 free slots at once: no turn a minute away
    assert raced, "the race did not happen"
    assert isinstance(got, Permit), got
    assert f"r{got.slot}" != raced[0]["#r"] and got.start_at <= T0 + 1


def _counting(calls: list[str]) -> Any:
    client = boto3.client("dynamodb")
    client.meta.events.register("before-call.dynamodb", lambda model, **_: calls.append(model.name))
    return client


def test_a_call_released_at_the_limit_keeps_its_slot_for_the_next_queued_import(
    aws_world: dict[str, Any],
) -> None:
    limits = Organization(requests_per_minute=4, max_concurrency=4)
    moment = [T0]
    calls: list[str] = []
    container = RateLimiter(
        NAMES.state_table, client=_counting(calls), clock=lambda: moment[0], window_seconds=60.0
    )
    first, second, third = (container.acquire(ORG, limits) for _ in range(3))
    assert isinstance(first, Permit) and isinstance(second, Permit) and isinstance(third, Permit)

    # No queued import has had to wait here: a call frees its slot as any call does
    moment[0] += 0.5
    container.release(first)
    assert container.claim(ORG, limits) is None
    assert isinstance(container.acquire(ORG, limits), Permit)  # the window's last slot
    # A queued import now waits here (no slot to spare): it is told when to come back
    told = container.acquire(ORG, limits, reserve=True)
    assert isinstance(told, Denied) and told.reason == "per_minute"

    # With a queued import waiting, and no slot to spare, the release keeps the slot for the
    # next one this container sees: the same one write, its turn from when the slot frees
    moment[0] += 0.5
    calls.clear()
    container.release(second)
    assert calls == ["UpdateItem"]
    turn = container.claim(ORG, limits)
    assert isinstance(turn, Reservation) and turn.slot == second.slot
    assert abs(turn.start_at - (moment[0] + 60.0 + SKEW_SECONDS)) < 0.011
    assert container.claim(ORG, limits) is None  # one turn, for one import

    # Nobody else takes the slot when it frees; the import given the turn takes it then
    at_turn = turn.start_at + 0.01
    other = limiter_at(at_turn).acquire(ORG, limits)
    assert not isinstance(other, Permit) or other.slot != turn.slot
    taken = limiter_at(at_turn).acquire(ORG, limits, reserve=True, reservation=turn)
    assert isinstance(taken, Permit) and taken.slot == turn.slot


def test_a_kept_turn_is_not_given_out_once_the_organization_is_seen_parked(
    aws_world: dict[str, Any],
) -> None:
    limits = Organization(requests_per_minute=2, max_concurrency=2)
    moment = [T0]
    container = RateLimiter(NAMES.state_table, clock=lambda: moment[0], window_seconds=60.0)
    first, _ = (container.acquire(ORG, limits) for _ in range(2))
    assert isinstance(first, Permit)
    assert isinstance(container.acquire(ORG, limits, reserve=True), Denied)  # one waits
    container.release(first)  # its slot kept as a turn for the next queued import here
    # Another container hears Zoho's daily cap, and this one's view comes to show the park
    limiter_at(moment[0]).block(ORG, next_utc_midnight(moment[0]), "daily")
    container._known[ORG] = (container._read(ORG), moment[0])  # as a write's answer brings it

    # The next queued import is not sent away for a turn it could not use: it is told the park
    assert container.claim(ORG, limits) is None
    told = container.acquire(ORG, limits, reserve=True)
    assert isinstance(told, Denied) and told.parks


def test_a_kept_turn_nobody_claimed_in_time_is_not_given_out(aws_world: dict[str, Any]) -> None:
    limits = Organization(requests_per_minute=2, max_concurrency=2)
    moment = [T0]
    lease = 40.0
    container = RateLimiter(
        NAMES.state_table, clock=lambda: moment[0], window_seconds=60.0, lease_seconds=lease
    )
    first, _ = (container.acquire(ORG, limits) for _ in range(2))
    assert isinstance(first, Permit)
    assert isinstance(container.acquire(ORG, limits, reserve=True), Denied)  # one waits
    container.release(first)
    # Its slot holds the turn until the turn's lease ends: too late to hand out near that end
    moment[0] += 60.0 + lease - 1.0
    assert container.claim(ORG, limits) is None
