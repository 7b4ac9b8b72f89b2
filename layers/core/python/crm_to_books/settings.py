"""Configuration, validated once at cold start from the environment."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from crm_to_books.entities import KINDS
from crm_to_books.errors import ConfigurationError

DecimalId = Annotated[str, Field(pattern=r"^[0-9]{1,19}$")]


class Organization(BaseModel):
    """A Books organization this service may import into, and Zoho's limits for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connection: str = Field(default="default", min_length=1)
    requests_per_minute: int = Field(default=100, ge=1, le=10_000)
    daily_limit: int = Field(default=1000, ge=1, le=10_000_000)
    max_concurrency: int = Field(default=10, ge=1, le=100)


CRM_FIELD = r"^[A-Za-z][A-Za-z0-9_]{0,99}$"  # a Zoho CRM field API name
MAX_FILTER_FIELDS = 10  # the Records API takes 50 fields; Modified_Time is one of them


class Sync(BaseModel):
    """A CRM sweep of one (organization, kind): which records it queues and how many a run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    organization_id: DecimalId
    kind: str
    # Field API name -> the values a record must have (any one of them) to be imported.
    filter: dict[Annotated[str, Field(pattern=CRM_FIELD)], tuple[str, ...]] = Field(
        default_factory=dict, max_length=MAX_FILTER_FIELDS
    )
    # The first run's lower bound (ISO 8601 with an offset); None: every record.
    start: datetime | None = None
    max_records_per_run: int = Field(default=5000, ge=1, le=100_000)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in KINDS:
            raise ValueError(f"must be one of {', '.join(KINDS)}")
        return value

    @field_validator("filter")
    @classmethod
    def _values(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for name, allowed in value.items():
            if name in ("id", "Modified_Time"):
                raise ValueError(f"{name}: cannot be filtered on")
            if not allowed or len(allowed) > 100 or not all(allowed):
                raise ValueError(f"{name}: give 1 to 100 non-empty values")
        return value

    @field_validator("start")
    @classmethod
    def _with_offset(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2025-01-01T00:00:00Z")
        return value


class Settings(BaseModel):
    """Everything a function needs that is not a secret. Read from the environment."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    ledger_table: str = Field(min_length=3)
    state_table: str = Field(min_length=3)
    event_bus_name: str = Field(default="", description="empty: outcome events are not sent")
    organizations: dict[DecimalId, Organization] = Field(min_length=1)
    connections: dict[str, str] = Field(min_length=1, description="connection name -> secret id")
    queue_urls: dict[str, str] = Field(default_factory=dict, description="kind -> queue URL")
    import_kind: str | None = None
    rate_window_seconds: float = Field(default=60.0, gt=0, le=3600)
    zoho_connect_timeout: float = Field(default=3.05, gt=0, le=30)
    # API Gateway gives a synchronous call 29 s: a read timeout, a look-up and a token refresh
    # must fit in it, and an SQS batch stops starting records that could outlive the function.
    zoho_read_timeout: float = Field(default=12.0, gt=0, le=120)
    token_refresh_margin_seconds: float = Field(default=300.0, ge=0, le=3000)
    token_wait_seconds: float = Field(default=8.0, ge=0, le=60)
    # How long an attempt holds a record: longer than any attempt a function can make.
    attempt_lease_seconds: float = Field(default=40.0, ge=1, le=900)
    # After an unknown outcome, no look-up (and so no new import) sooner than this after the
    # ambiguous call was sent: Zoho may still be committing it. The default covers any
    # plausible slow commit: over 2 minutes, and longer than a function's timeout plus a read.
    lookup_settle_seconds: float = Field(default=180.0, gt=0, le=3600)
    # A synchronous caller that finds the record being imported waits this long for that
    # attempt's result (API Gateway gives a call 29 s).
    sync_wait_seconds: float = Field(default=20.0, ge=0, le=25)
    # CRM sweeps configured for this stack (any other organization and kind sweeps with the
    # defaults, when asked), and where each notification channel's token is kept.
    syncs: tuple[Sync, ...] = ()
    channel_secret_prefix: str = ""

    @field_validator("import_kind")
    @classmethod
    def _known_kind(cls, value: str | None) -> str | None:
        if value is not None and value not in KINDS:
            raise ValueError(f"must be one of {', '.join(KINDS)}")
        return value

    @field_validator("queue_urls")
    @classmethod
    def _known_queue_kinds(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown kinds {unknown}: expected {', '.join(KINDS)}")
        return value

    def sync(self, organization_id: str, kind: str) -> Sync:
        """The sync configured for (organization, kind), else one with the defaults."""
        for sync in self.syncs:
            if (sync.organization_id, sync.kind) == (organization_id, kind):
                return sync
        return Sync(organization_id=organization_id, kind=kind)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        missing = sorted(
            {o.connection for o in self.organizations.values()} - set(self.connections)
        )
        if missing:
            raise ValueError(f"organizations use connections with no secret: {missing}")
        if self.lookup_settle_seconds <= self.zoho_connect_timeout + self.zoho_read_timeout:
            raise ValueError(
                "lookup_settle_seconds must be longer than ZOHO_CONNECT_TIMEOUT + "
                "ZOHO_READ_TIMEOUT: a look-up must not race the call it checks"
            )
        return self

    def organization(self, organization_id: str) -> Organization:
        """The organization's settings; UnknownOrganization if it is not configured."""
        from crm_to_books.errors import UnknownOrganization

        try:
            return self.organizations[organization_id]
        except KeyError:
            raise UnknownOrganization(organization_id) from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        for name in cls.model_fields:
            value = env.get(name.upper())
            if value is None:
                continue
            if name in {"organizations", "connections", "queue_urls", "syncs"}:
                try:
                    raw[name] = json.loads(value)
                except json.JSONDecodeError as exc:
                    raise ConfigurationError(
                        f"{name.upper()}: not valid JSON ({exc.msg})"
                    ) from None
            else:
                raw[name] = value
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings (for stacks and tests)."""
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            out[name.upper()] = json.dumps(value) if isinstance(value, dict | list) else str(value)
        return out


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        field = where.split(".", 1)[0].upper() + (
            "." + where.split(".", 1)[1] if "." in where else ""
        )
        parts.append(f"{field}: {err['msg']}")
    return "invalid configuration: " + "; ".join(parts)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once (cold start)."""
    return Settings.from_env()
