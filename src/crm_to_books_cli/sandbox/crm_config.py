"""The sandbox CRM's settings and fault knobs, validated like the rest of `SandboxConfig`.

Defaults are Zoho CRM's Free edition and the strictest of Zoho's documented behaviours, so a
client that works against them works against any real organization (docs/sandbox.md, "Zoho CRM").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def with_changes(self, **changes: Any) -> Self:
        return self.model_validate({**self.model_dump(), **changes})


class CrmFaults(_Model):
    """CRM failures to inject. `*_next` counts are exact; `*_rate` draws from `seed`."""

    seed: int = 0
    scope: Literal["crm", "records", "watch"] = "crm"  # which CRM API calls the faults hit
    latency_seconds: float = Field(0.0, ge=0)  # held in flight: counts against concurrency
    fail_429_next: int = Field(0, ge=0)  # 429 TOO_MANY_REQUESTS instead of handling
    fail_429_rate: float = Field(0.0, ge=0, le=1)
    fail_500_next: int = Field(0, ge=0)  # 500 INTERNAL_ERROR instead of handling
    fail_500_rate: float = Field(0.0, ge=0, le=1)
    drop_notifications_next: int = Field(0, ge=0)  # notifications Zoho never sends
    drop_notifications_rate: float = Field(0.0, ge=0, le=1)


class CrmSettings(_Model):
    credits_per_day: int = Field(5000, ge=1)  # Free edition: 5,000 credits per 24 hours
    credit_window_seconds: float = Field(86400.0, gt=0)  # Zoho's window is a rolling 24 hours
    max_concurrency: int = Field(5, ge=1)  # Free edition: 5 calls in flight per organization
    # Zoho documents page_token_expiry but not the lifetime; a day is this sandbox's choice.
    page_token_lifetime_seconds: float = Field(86400.0, gt=0)
    # v2-v3 docs: a channel lives at most one day (v4+: a week); the stricter limit by default.
    channel_max_seconds: float = Field(86400.0, gt=0)
    channel_default_seconds: float = Field(3600.0, gt=0)  # no expiry, or too late: one hour
    # With If-Modified-Since and nothing changed Zoho answers 304; without it, 204.
    not_modified_status: Literal[304, 204] = 304
    utc_offset: str = Field("+05:30", pattern=r"^[+-](0\d|1[0-4]):[0-5]\d$")  # record times
    start_time: datetime | None = None  # the CRM's wall clock at start (default: now)
    seed_records: bool = True  # the seeded records of each module
    notify_timeout_seconds: float = Field(5.0, gt=0)  # a delivery slower than this failed
    faults: CrmFaults = CrmFaults()


# What `crm.configure` may change on a running sandbox.
CRM_RUNTIME_SETTINGS = frozenset(
    {
        "credits_per_day",
        "credit_window_seconds",
        "max_concurrency",
        "page_token_lifetime_seconds",
        "channel_max_seconds",
        "channel_default_seconds",
        "not_modified_status",
        "notify_timeout_seconds",
    }
)
