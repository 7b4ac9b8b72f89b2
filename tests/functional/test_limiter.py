"""The rate limiter's shared item over time: idle organizations, containers that died."""

from __future__ import annotations

from typing import Any

import pytest

from crm_to_books.limiter import Denied, Permit, RateLimiter
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
