"""The stack's configuration, validated at synth time; every error names its field.

It comes from `cdk.json` (context key `crm-to-books`) or a JSON file (`-c config=path.json`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crm_to_books.entities import KINDS
from crm_to_books.settings import Organization, Settings, Sync
from crm_to_books.topology import (
    DEFAULT_PREFIX,
    HOOK_THROTTLING_BURST_LIMIT,
    HOOK_THROTTLING_RATE_LIMIT,
    IMPORT_FUNCTIONS,
    QUEUE_CONCURRENCY_MAXIMUM,
    QUEUE_CONCURRENCY_MINIMUM,
    QUEUE_MAXIMUM_CONCURRENCY,
    STATUS_API,
)

CONTEXT_KEY = "crm-to-books"

# The values CloudWatch Logs accepts.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096,
                      1827, 2192, 2557, 2922, 3288, 3653)  # fmt: skip

# Lambda's limit on a function's environment (names and values together).
LAMBDA_ENVIRONMENT_LIMIT = 4096

_ORGANIZATION_ID = re.compile(r"^[0-9]{1,19}$")
_SCHEDULE_EXPRESSION = re.compile(
    r"^(rate\([1-9][0-9]* (minute|minutes|hour|hours|day|days)\)"
    r"|cron\(\S+( \S+){5}\)"
    r"|at\(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\))$"
)
# Ledger data is never served without auth: only the status API's other GET routes may be.
_PUBLIC_CAPABLE = tuple(
    path
    for method, path in STATUS_API.http_routes
    if method == "GET" and "{" not in path and not path.startswith("/v1/imports")
)


class ConfigError(ValueError):
    """The stack configuration is invalid; the message names each bad field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiConfig(_Model):
    auth: Literal["iam", "api_key"] = Field(
        default="iam", description="iam: SigV4 callers; api_key: an API key and usage plan"
    )
    throttling_rate_limit: float = Field(default=50, gt=0, le=10_000)
    throttling_burst_limit: int = Field(default=100, ge=1, le=5_000)
    public_paths: tuple[str, ...] = Field(default=(), description="GET routes served without auth")
    cloudwatch_role: Literal["create", "existing"] = Field(
        default="create",
        description="create: the stack sets the account's API Gateway CloudWatch Logs role "
        "(AWS::ApiGateway::Account, one per account and region); existing: leave the role the "
        "account already has alone (crm-to-books preflight checks that it is set)",
    )

    @field_validator("public_paths")
    @classmethod
    def _only_documents(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [path for path in value if path not in _PUBLIC_CAPABLE]
        if bad:
            raise ValueError(f"{bad} cannot be public: choose from {list(_PUBLIC_CAPABLE)}")
        return value


class ScheduleConfig(_Model):
    """A user-declared schedule: sends one fixed import request to the kind's queue."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")
    expression: str = Field(description="rate(...), cron(...) or at(...), as EventBridge Scheduler")
    kind: str
    organization_id: str
    crm_id: str = Field(pattern=_ORGANIZATION_ID.pattern)
    enabled: bool = True

    @field_validator("expression")
    @classmethod
    def _scheduler_syntax(cls, value: str) -> str:
        if not _SCHEDULE_EXPRESSION.match(value):
            raise ValueError(
                f"{value!r} is not a schedule expression: use rate(5 minutes), "
                "cron(0 6 * * ? *) or at(2030-01-01T00:00:00)"
            )
        return value

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in KINDS:
            raise ValueError(f"{value!r} is not a kind: expected one of {', '.join(KINDS)}")
        return value


class SyncConfig(Sync):
    """A scheduled CRM sweep of one (organization, kind): `Sync` plus when it runs."""

    schedule: str = Field(description="rate(...) or cron(...), as EventBridge Scheduler")

    @field_validator("schedule")
    @classmethod
    def _scheduler_syntax(cls, value: str) -> str:
        if not _SCHEDULE_EXPRESSION.match(value) or value.startswith("at("):
            raise ValueError(
                f"{value!r} is not a repeating schedule: use rate(15 minutes) or cron(0 * * * ? *)"
            )
        return value

    def settings(self) -> Sync:
        return Sync.model_validate(self.model_dump(exclude={"schedule"}))


class HooksConfig(_Model):
    """`POST /v1/hooks/zoho-crm` (Zoho CRM notifications): its own stage throttling."""

    throttling_rate_limit: float = Field(default=HOOK_THROTTLING_RATE_LIMIT, gt=0, le=10_000)
    throttling_burst_limit: int = Field(default=HOOK_THROTTLING_BURST_LIMIT, ge=1, le=5_000)


class ServiceConfig(_Model):
    stage: str = Field(pattern=r"^[a-z][a-z0-9]{0,11}$", description="e.g. dev, prod")
    prefix: str = Field(
        pattern=r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$",
        description="prefix of every resource name; default crm-to-books-<stage>",
    )
    organizations: dict[str, Organization] = Field(min_length=1)
    connections: tuple[str, ...] = Field(min_length=1, description="Zoho connection names")
    schedules: tuple[ScheduleConfig, ...] = ()
    syncs: tuple[SyncConfig, ...] = ()
    api: ApiConfig = ApiConfig()
    hooks: HooksConfig = HooksConfig()
    alarm_email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    log_retention_days: int = 30
    ledger_stream: bool = Field(default=False, description="a DynamoDB stream on the ledger")
    tracing: Literal["active", "pass_through"] = Field(
        default="active",
        description="the functions' X-Ray mode: active samples by X-Ray's default rule (the "
        "first request each second, then 5%); pass_through traces only what the caller sampled "
        "(the API stage's own sampling, a traced SQS sender), so queue imports cost no traces",
    )
    queue_concurrency: int = Field(
        default=QUEUE_MAXIMUM_CONCURRENCY,
        ge=QUEUE_CONCURRENCY_MINIMUM,
        le=QUEUE_CONCURRENCY_MAXIMUM,
        description="each kind queue's MaximumConcurrency (AWS: 2 to 1000); the four add up "
        "and must fit the account's Lambda concurrency (crm-to-books preflight checks)",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_prefix(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("prefix") and isinstance(data.get("stage"), str):
            return {**data, "prefix": f"{DEFAULT_PREFIX}-{data['stage']}"}
        return data

    @field_validator("organizations")
    @classmethod
    def _decimal_ids(cls, value: dict[str, Organization]) -> dict[str, Organization]:
        bad = [key for key in value if not _ORGANIZATION_ID.match(key)]
        if bad:
            raise ValueError(f"organization ids must be 1 to 19 digits, got {bad}")
        return value

    @field_validator("connections")
    @classmethod
    def _connection_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [name for name in value if not re.match(r"^[a-z0-9][a-z0-9_-]{0,31}$", name)]
        if bad:
            raise ValueError(f"connection names must match [a-z0-9][a-z0-9_-]{{0,31}}, got {bad}")
        if len(set(value)) != len(value):
            raise ValueError("connection names must be unique")
        return value

    @field_validator("log_retention_days")
    @classmethod
    def _cloudwatch_retention(cls, value: int) -> int:
        if value not in LOG_RETENTION_DAYS:
            raise ValueError(f"{value} is not a CloudWatch retention: one of {LOG_RETENTION_DAYS}")
        return value

    @model_validator(mode="after")
    def _references(self) -> ServiceConfig:
        problems = [
            f"organizations.{org_id}.connection: {org.connection!r} is not declared in "
            f"connections {list(self.connections)}"
            for org_id, org in self.organizations.items()
            if org.connection not in self.connections
        ]
        seen: set[str] = set()
        for i, schedule in enumerate(self.schedules):
            if schedule.organization_id not in self.organizations:
                problems.append(
                    f"schedules.{i}.organization_id: {schedule.organization_id!r} is not one "
                    "of the configured organizations"
                )
            if schedule.name in seen:
                problems.append(f"schedules.{i}.name: {schedule.name!r} is used twice")
            seen.add(schedule.name)
        swept: set[tuple[str, str]] = set()
        for i, sync in enumerate(self.syncs):
            if sync.organization_id not in self.organizations:
                problems.append(
                    f"syncs.{i}.organization_id: {sync.organization_id!r} is not one of the "
                    "configured organizations"
                )
            if (sync.organization_id, sync.kind) in swept:
                problems.append(
                    f"syncs.{i}: {sync.kind} of {sync.organization_id} is swept twice (one "
                    "sync per organization and kind: they would share a checkpoint)"
                )
            swept.add((sync.organization_id, sync.kind))
        size = 0 if problems else self.environment_size()
        if size > LAMBDA_ENVIRONMENT_LIMIT:
            problems.append(
                f"organizations: the functions' environment would be ~{size} bytes, over "
                f"Lambda's {LAMBDA_ENVIRONMENT_LIMIT}; use fewer organizations per stack"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def environment_size(self) -> int:
        """A generous estimate of the largest function environment, resolved."""
        settings = Settings(
            ledger_table="x" * 64,
            state_table="x" * 64,
            event_bus_name="x" * 64,
            organizations=self.organizations,
            connections={name: "x" * 64 for name in self.connections},
            queue_urls={kind: "x" * 128 for kind in KINDS},
            syncs=tuple(sync.settings() for sync in self.syncs),
            channel_secret_prefix="x" * 64,
        )
        env = {**settings.to_env(), **IMPORT_FUNCTIONS[0].environment, "POWERTOOLS_X": "x" * 256}
        return sum(len(k) + len(v) for k, v in env.items())


def parse_config(raw: Any, source: str) -> ServiceConfig:
    """Validate `raw`; ConfigError lists every problem as `field.path: reason`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid configuration ({source}): expected a JSON object")
    try:
        return ServiceConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {where}: {message}" if where else f"  {message}")
        raise ConfigError(f"invalid configuration ({source}):\n" + "\n".join(lines)) from None


def load_config_file(path: str | Path) -> ServiceConfig:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
    return parse_config(raw, str(path))
