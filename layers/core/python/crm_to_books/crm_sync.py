"""The sweep function's engine, assembled (production defaults, tests pass their own), and the
events it takes (`action`):

- `sweep` (`organization_id`, `kind`, `since`?): one sweep; a sync's schedule,
  `crm-to-books sync`. A schedule's input without `action` is a sweep too.
- `renew_channels`: renew channels, re-enable lapsed ones and sweep their gaps; the renewal
  schedule.
- `watch_enable` (`organization_id`, `kinds`, `notify_url`), `watch_status`
  (`organization_id`?), `watch_disable` (`organization_id`): `crm-to-books watch ...`.

Answers are JSON objects; a refusal (bad event, unknown organization, a CRM problem during a
watch command) is `{"error": {"code", "message"}}`, not a function error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from crm_to_books.channels import Channels
from crm_to_books.crm_gate import CrmGate, CrmProblem
from crm_to_books.errors import InvalidRequest, ServiceError
from crm_to_books.intake import Intake
from crm_to_books.ledger import Ledger
from crm_to_books.models import ID_PATTERN
from crm_to_books.observability import logger, metrics
from crm_to_books.settings import Settings, get_settings
from crm_to_books.sweep import Sweeper
from crm_to_books.tokens import TokenProvider
from crm_to_books.topology import (
    METRIC_CHANNEL_RENEW_FAILED,
    METRIC_CHANNELS_LAPSED,
    METRIC_SWEEP_FAILED,
    METRIC_SWEEP_QUEUED,
)
from crm_to_books.zoho import ZohoClient

OrgId = Annotated[str, Field(pattern=ID_PATTERN)]
Kind = Literal["account", "contact", "vendor", "item"]


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class SweepEvent(_Event):
    action: Literal["sweep"] = "sweep"
    organization_id: OrgId
    kind: Kind
    since: datetime | None = None


class RenewEvent(_Event):
    action: Literal["renew_channels"]


class WatchEnable(_Event):
    action: Literal["watch_enable"]
    organization_id: OrgId
    kinds: tuple[Kind, ...] = ("account", "contact", "vendor", "item")
    notify_url: str = Field(max_length=255)


class WatchStatus(_Event):
    action: Literal["watch_status"]
    organization_id: OrgId | None = None


class WatchDisable(_Event):
    action: Literal["watch_disable"]
    organization_id: OrgId


Event = Annotated[
    SweepEvent | RenewEvent | WatchEnable | WatchStatus | WatchDisable,
    Field(discriminator="action"),
]
_EVENTS: TypeAdapter[Any] = TypeAdapter(Event)


def parse_event(event: Any) -> Any:
    """The event as one of the models above; InvalidRequest names the field and why. A
    schedule's input without `action` is a sweep."""
    if not isinstance(event, dict):
        raise InvalidRequest("event", "must be a JSON object")
    if "action" not in event:
        event = {**event, "action": "sweep"}
    try:
        return _EVENTS.validate_python(event)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"][1:] or err["loc"]) or "event"
        raise InvalidRequest(where, str(err["msg"]).lower()) from None


class CrmSync:
    """Sweeps and channels over one ledger, token provider and CRM gate per container."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        tokens: TokenProvider | None = None,
        zoho: ZohoClient | None = None,
        ledger: Ledger | None = None,
        sqs: Any = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = s = settings or get_settings()
        self.zoho = zoho or ZohoClient(
            connect_timeout=s.zoho_connect_timeout, read_timeout=s.zoho_read_timeout, clock=clock
        )
        self.tokens = tokens or TokenProvider(s, self.zoho, clock=clock, sleep=sleep)
        self.ledger = ledger or Ledger(s.ledger_table, clock=clock, sleep=sleep)
        self.intake = Intake(s, self.ledger, sqs)
        self.gate = CrmGate(s, self.tokens, self.zoho, clock=clock, sleep=sleep)
        self.sweeper = Sweeper(
            s, gate=self.gate, zoho=self.zoho, ledger=self.ledger, intake=self.intake, clock=clock
        )
        self.channels = Channels(
            s, gate=self.gate, zoho=self.zoho, sweeper=self.sweeper, clock=clock
        )
        self._clock = clock

    def handle(
        self, event: Any, time_left: float, correlation_id: str | None = None
    ) -> dict[str, Any]:
        """Run what `event` asks within `time_left` seconds."""
        deadline = self._clock() + time_left
        try:
            parsed = parse_event(event)
            if isinstance(parsed, SweepEvent):
                return self._sweep(parsed, time_left, correlation_id)
            if isinstance(parsed, RenewEvent):
                return self._renew(deadline)
            if isinstance(parsed, WatchEnable):
                channel = self.channels.enable(
                    parsed.organization_id, parsed.kinds, parsed.notify_url, deadline
                )
                return {"channel": channel}
            if isinstance(parsed, WatchDisable):
                return {"channel": self.channels.disable(parsed.organization_id, deadline)}
            return {"channels": self.channels.status(parsed.organization_id)}
        except ServiceError as exc:
            logger.info("CRM job refused", extra={"code": exc.code, "reason": exc.message})
            return {"error": exc.body()}
        except CrmProblem as exc:
            logger.warning("CRM job failed", extra={"reason": exc.reason})
            return {"error": {"code": exc.reason, "message": exc.message}}

    def _sweep(
        self, event: SweepEvent, time_left: float, correlation_id: str | None
    ) -> dict[str, Any]:
        sync = self.settings.sync(event.organization_id, event.kind)
        result = self.sweeper.run(
            sync, time_limit=time_left, since=event.since, correlation_id=correlation_id
        )
        metrics.add_metric(name=METRIC_SWEEP_QUEUED, unit=MetricUnit.Count, value=result.queued)
        metrics.add_metric(
            name=METRIC_SWEEP_FAILED, unit=MetricUnit.Count, value=int(result.failed)
        )
        return {"sweep": result.as_dict()}

    def _renew(self, deadline: float) -> dict[str, Any]:
        results = self.channels.renew(deadline)
        lapsed = sum(1 for r in results if r.get("outcome") == "re-enabled")
        failed = sum(1 for r in results if r.get("outcome") == "failed")
        metrics.add_metric(name=METRIC_CHANNELS_LAPSED, unit=MetricUnit.Count, value=lapsed)
        metrics.add_metric(name=METRIC_CHANNEL_RENEW_FAILED, unit=MetricUnit.Count, value=failed)
        for result in results:
            log = (
                logger.warning
                if result.get("outcome") in ("failed", "re-enabled")
                else (logger.info)
            )
            said = {k: v for k, v in result.items() if k != "gap_sweeps"}
            if "message" in said:  # a LogRecord's own attribute
                said["detail"] = said.pop("message")
            log("CRM channel checked", extra=said)
        return {"channels": results}
